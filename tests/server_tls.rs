//! TLS against the real binary: `serve --tls-cert/--tls-key` serves clients that trust its
//! CA and no other (plaintext or another CA fails, without endless retries); the CLI speaks
//! it with `--addr https://… --ca-cert`; `--tls-client-ca` refuses a client without a
//! certificate from that CA at the handshake; TLS and tokens work together; a bad
//! certificate file stops startup with its name. Certificates are made here with rcgen;
//! everything runs on loopback with bounded waits.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is the test failing

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{bin, Server};
use framecast::client::{Client, Error, RetryPolicy};
use futures::StreamExt;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tonic::Code;

/// A CA that signs leaf certificates.
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf certificate for `names`: (certificate PEM, key PEM).
    fn leaf(&self, names: &[&str], usage: ExtendedKeyUsagePurpose) -> (String, String) {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// The certificates of a test, written under a temp dir: a CA, a server certificate for
/// `localhost` and 127.0.0.1 signed by it, and a client CA with a client certificate.
struct Pki {
    dir: tempfile::TempDir,
    ca: Ca,
    clients: Ca,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("framecast test CA");
        let (cert, key) = ca.leaf(
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        std::fs::write(dir.path().join("server.pem"), cert).unwrap();
        std::fs::write(dir.path().join("server-key.pem"), key).unwrap();
        std::fs::write(dir.path().join("ca.pem"), &ca.pem).unwrap();
        let clients = Ca::new("framecast test client CA");
        std::fs::write(dir.path().join("client-ca.pem"), &clients.pem).unwrap();
        Pki { dir, ca, clients }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn arg(&self, name: &str) -> String {
        self.path(name).to_str().unwrap().to_string()
    }

    /// `serve` flags for TLS, with `extra` after them.
    fn serve_args(&self, extra: &[&str]) -> Vec<String> {
        let mut args = vec![
            "--tls-cert".to_string(),
            self.arg("server.pem"),
            "--tls-key".to_string(),
            self.arg("server-key.pem"),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }

    fn start(&self, extra: &[&str]) -> Server {
        let args = self.serve_args(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Server::start(&self.path("data"), &args)
    }
}

/// `https://localhost:PORT` of a server started by the harness (`http://127.0.0.1:PORT`).
fn https(server: &Server) -> String {
    let port = server.addr.rsplit(':').next().unwrap();
    format!("https://localhost:{port}")
}

/// `https://localhost:PORT` of the server's HTTP door.
fn https_door(server: &Server) -> String {
    let port = server
        .http
        .as_ref()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .to_string();
    format!("https://localhost:{port}")
}

#[test]
fn the_http_door_speaks_the_same_tls() {
    let pki = Pki::new();
    let server = pki.start(&[]);
    let door = https_door(&server);
    let ok = common::http::request_tls(&door, &pki.ca.pem, "GET", "/healthz", &[], b"").unwrap();
    assert_eq!((ok.status, ok.text().as_str()), (200, "ok\n"));
    let published = common::http::request_tls(
        &door,
        &pki.ca.pem,
        "POST",
        "/v1/topics/secure/frames?seq_no=1",
        &[],
        b"over https",
    )
    .unwrap();
    assert_eq!(published.status, 200, "{}", published.text());
    assert_eq!(published.json()["offset"], "0");
    // Another CA: the client refuses the server's certificate.
    let stranger = Ca::new("stranger");
    let e =
        common::http::request_tls(&door, &stranger.pem, "GET", "/healthz", &[], b"").unwrap_err();
    assert!(e.contains("certificate"), "{e}");
    // Plain HTTP to a TLS port gets no HTTP answer.
    let plain =
        std::net::TcpStream::connect(server.http.as_ref().unwrap().trim_start_matches("http://"))
            .unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut plain = plain;
    use std::io::{Read, Write};
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    let _ = plain.read_to_end(&mut got);
    assert!(
        !got.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    drop(server);

    // --tls-client-ca covers the HTTP door too: no client certificate, no answer.
    let client_ca = pki.arg("client-ca.pem");
    let strict = pki.start(&["--tls-client-ca", &client_ca]);
    let r = common::http::request_tls(
        &https_door(&strict),
        &pki.ca.pem,
        "GET",
        "/healthz",
        &[],
        b"",
    );
    assert!(r.is_err(), "served without a client certificate: {r:?}");
}

/// Retries short enough that a failure shows within the test's bounds.
fn quick() -> RetryPolicy {
    RetryPolicy {
        initial: Duration::from_millis(20),
        max_delay: Duration::from_millis(200),
        max_elapsed: Duration::from_secs(3),
    }
}

/// Publishes `n` frames and reads them back over a subscription, within 20 s.
async fn round_trip(client: &Client, topic: &str, n: u64) {
    let work = async {
        for i in 0..n {
            let ack = client
                .publish(topic, i, format!("frame {i}"))
                .await
                .unwrap();
            assert_eq!(ack.offset, i);
        }
        let mut frames = client.subscribe(topic, 0);
        for i in 0..n {
            let f = frames.next().await.unwrap().unwrap();
            assert_eq!(
                (f.seq_no, f.payload.as_ref()),
                (i, format!("frame {i}").as_bytes())
            );
        }
    };
    tokio::time::timeout(Duration::from_secs(20), work)
        .await
        .expect("round trip within 20 s");
}

/// A publish that must fail, within 15 s; its error.
async fn refused(client: &Client) -> Error {
    tokio::time::timeout(Duration::from_secs(15), client.publish("t", 0, "x"))
        .await
        .expect("a refusal within 15 s, not a hang")
        .expect_err("the publish must fail")
}

/// Runs the binary with `args` (15 s at most): success, stdout, stderr.
fn run(args: &[&str]) -> (bool, String, String) {
    let r = common::cli::run(args, Duration::from_secs(15));
    (r.code == Some(0), r.stdout, r.stderr)
}

#[tokio::test]
async fn a_tls_server_serves_clients_that_trust_its_ca_and_no_other() {
    let pki = Pki::new();
    let server = pki.start(&[]);
    assert!(
        server.log_text().contains("tls=true client_auth=false"),
        "{}",
        server.log_text()
    );

    let client = Client::connect(&https(&server))
        .unwrap()
        .with_ca_cert(pki.ca.pem.clone())
        .unwrap()
        .with_retry(quick());
    round_trip(&client, "secure", 3).await;
    // A CA with a plain host:port address means TLS as well.
    let port = server.addr.rsplit(':').next().unwrap();
    let implied = Client::connect(&format!("localhost:{port}"))
        .unwrap()
        .with_ca_cert(pki.ca.pem.clone())
        .unwrap()
        .with_retry(quick());
    assert_eq!(implied.list_topics().await.unwrap().len(), 1);

    // Plaintext to a TLS port: no answer it can use.
    let plain = Client::connect(&server.addr).unwrap().with_retry(quick());
    let e = refused(&plain).await;
    assert!(e.is_transient(), "{e}");

    // A client trusting another CA refuses the server's certificate, at once: a retry
    // cannot cure that.
    let stranger = Client::connect(&https(&server))
        .unwrap()
        .with_ca_cert(Ca::new("another CA").pem)
        .unwrap()
        .with_retry(RetryPolicy {
            max_elapsed: Duration::from_secs(30),
            ..quick()
        });
    let started = Instant::now();
    let e = refused(&stranger).await;
    assert!(matches!(e, Error::Tls(_)), "{e}");
    assert!(e.to_string().contains("invalid peer certificate"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(10), "retried: {e}");

    // The server goes on serving after all of that.
    assert_eq!(client.list_topics().await.unwrap().len(), 1);
}

#[test]
fn the_cli_speaks_tls_with_an_https_address_and_a_ca() {
    let pki = Pki::new();
    let server = pki.start(&[]);
    let addr = https(&server);
    let ca = pki.arg("ca.pem");

    let (ok, _, err) = run(&[
        "publish",
        "--addr",
        &addr,
        "--ca-cert",
        &ca,
        "--topic",
        "cli",
        "one",
        "two",
    ]);
    assert!(ok, "{err}");
    let (ok, out, err) = run(&[
        "subscribe",
        "--addr",
        &addr,
        "--ca-cert",
        &ca,
        "--topic",
        "cli",
        "--count",
        "2",
        "--raw",
    ]);
    assert!(ok, "{err}");
    assert_eq!(out, "one\ntwo\n");
    let (ok, out, err) = run(&["topics", "list", "--addr", &addr, "--ca-cert", &ca]);
    assert!(ok && out.contains("cli"), "{out}{err}");

    // Without the CA an https:// address trusts nothing: a clear failure, not a retry loop.
    let (ok, _, err) = run(&["publish", "--addr", &addr, "--topic", "cli", "three"]);
    assert!(!ok);
    assert!(err.contains("TLS handshake failed"), "{err}");
}

#[tokio::test]
async fn with_a_client_ca_only_clients_with_its_certificates_are_served() {
    let pki = Pki::new();
    let client_ca = pki.arg("client-ca.pem");
    let server = pki.start(&["--tls-client-ca", &client_ca]);
    assert!(
        server.log_text().contains("tls=true client_auth=true"),
        "{}",
        server.log_text()
    );
    let base = || {
        Client::connect(&https(&server))
            .unwrap()
            .with_ca_cert(pki.ca.pem.clone())
            .unwrap()
            .with_retry(quick())
    };

    // No certificate: refused at the handshake.
    let e = refused(&base()).await;
    assert!(!matches!(e, Error::Server { .. }), "{e}");

    // A certificate from another CA: refused too.
    let (cert, key) = Ca::new("stranger").leaf(&["me"], ExtendedKeyUsagePurpose::ClientAuth);
    let stranger = base().with_client_identity(cert, key).unwrap();
    let e = refused(&stranger).await;
    assert!(!matches!(e, Error::Server { .. }), "{e}");

    // One signed by the client CA: served.
    let (cert, key) = pki
        .clients
        .leaf(&["publisher-1"], ExtendedKeyUsagePurpose::ClientAuth);
    let known = base()
        .with_client_identity(cert.clone(), key.clone())
        .unwrap();
    round_trip(&known, "mutual", 2).await;

    // The CLI with --client-cert and --client-key.
    std::fs::write(pki.path("client.pem"), cert).unwrap();
    std::fs::write(pki.path("client-key.pem"), key).unwrap();
    let (addr, ca) = (https(&server), pki.arg("ca.pem"));
    let (ok, _, err) = run(&[
        "publish",
        "--addr",
        &addr,
        "--ca-cert",
        &ca,
        "--client-cert",
        &pki.arg("client.pem"),
        "--client-key",
        &pki.arg("client-key.pem"),
        "--topic",
        "mutual",
        "from the cli",
    ]);
    assert!(ok, "{err}");
    let (ok, _, _) = run(&[
        "publish",
        "--addr",
        &addr,
        "--ca-cert",
        &ca,
        "--timeout",
        "2s",
        "--topic",
        "mutual",
        "anonymous",
    ]);
    assert!(!ok, "a CLI without a client certificate was served");
}

#[tokio::test]
async fn tls_and_tokens_work_together() {
    let pki = Pki::new();
    let secret = pki.path("secret");
    std::fs::write(&secret, "a-secret-long-enough-for-hs256\n").unwrap();
    let server = pki.start(&["--auth-jwt-secret-file", secret.to_str().unwrap()]);
    let (ok, token, err) = run(&[
        "token",
        "--secret-file",
        secret.to_str().unwrap(),
        "--subject",
        "tester",
        "--publish",
        "chat.>",
        "--subscribe",
        "chat.>",
    ]);
    assert!(ok, "{err}");
    let token = token.trim().to_string();

    let secure = || {
        Client::connect(&https(&server))
            .unwrap()
            .with_ca_cert(pki.ca.pem.clone())
            .unwrap()
            .with_retry(RetryPolicy {
                max_elapsed: Duration::from_secs(30),
                ..quick()
            })
    };
    round_trip(&secure().with_token(&token).unwrap(), "chat.room", 2).await;

    // No token, or a topic the token does not cover: refused at once, not retried.
    let started = Instant::now();
    match refused(&secure()).await {
        Error::Server { code, .. } => assert_eq!(code, Code::Unauthenticated),
        e => panic!("expected UNAUTHENTICATED, got {e}"),
    }
    let with_token = secure().with_token(&token).unwrap();
    let e = tokio::time::timeout(Duration::from_secs(15), with_token.publish("other", 0, "x"))
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Server {
                code: Code::PermissionDenied,
                ..
            }
        ),
        "{e}"
    );
    assert!(started.elapsed() < Duration::from_secs(10), "retried");

    // The CLI with --token, and with FRAMECAST_TOKEN.
    let (addr, ca) = (https(&server), pki.arg("ca.pem"));
    let (ok, _, err) = run(&[
        "publish",
        "--addr",
        &addr,
        "--ca-cert",
        &ca,
        "--token",
        &token,
        "--topic",
        "chat.cli",
        "hello",
    ]);
    assert!(ok, "{err}");
    let out = Command::new(bin())
        .args([
            "subscribe",
            "--addr",
            &addr,
            "--ca-cert",
            &ca,
            "--topic",
            "chat.cli",
            "--count",
            "1",
            "--raw",
        ])
        .env("FRAMECAST_TOKEN", &token)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"hello\n");
    let (ok, _, err) = run(&[
        "publish",
        "--addr",
        &addr,
        "--ca-cert",
        &ca,
        "--topic",
        "chat.cli",
        "anonymous",
    ]);
    assert!(!ok);
    assert!(err.contains("Unauthenticated"), "{err}");
}

#[test]
fn a_bad_certificate_file_stops_startup_with_its_name() {
    let pki = Pki::new();
    let data = pki.path("data");
    let missing = pki.arg("missing.pem");
    let (ok, _, err) = run(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data.to_str().unwrap(),
        "--tls-cert",
        &missing,
        "--tls-key",
        &pki.arg("server-key.pem"),
    ]);
    assert!(!ok);
    assert!(err.contains("missing.pem"), "{err}");

    // The CA's key is not the server certificate's.
    std::fs::write(
        pki.path("wrong-key.pem"),
        KeyPair::generate().unwrap().serialize_pem(),
    )
    .unwrap();
    let (ok, _, err) = run(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data.to_str().unwrap(),
        "--tls-cert",
        &pki.arg("server.pem"),
        "--tls-key",
        &pki.arg("wrong-key.pem"),
    ]);
    assert!(!ok);
    assert!(err.contains("does not belong"), "{err}");
    assert!(!Path::new(&data).join("topics").exists(), "recovery ran");
}
