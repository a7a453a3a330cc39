//! TLS for the listeners: the PEM files of `--tls-cert`, `--tls-key` and `--tls-client-ca`
//! turned into one rustls [`ServerConfig`], and [`accept`], the acceptor every listener
//! shares (gRPC, and the HTTP listener next to it).
//!
//! [`accept`] wraps a stream of accepted TCP connections and yields [`Conn`]s: plain ones
//! as they come when TLS is off, and, when it is on, each connection once its handshake has
//! finished. Handshakes run concurrently, each in its own task with a deadline, so a slow
//! or silent client never holds up the others; a handshake that fails (wrong CA, no client
//! certificate under `--tls-client-ca`, not TLS at all, too slow) is logged at `debug` and
//! dropped, never yielded as an error, so it cannot stop a server.
//!
//! The ring provider is named explicitly, so nothing depends on a process-wide default
//! provider being installed (with two providers linked in, rustls refuses to pick one).

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;
use tonic::transport::server::{Connected, TcpConnectInfo};
use tracing::debug;

/// ALPN of the gRPC listener: HTTP/2, then HTTP/1.1 for gRPC-Web clients.
pub const ALPN_GRPC: &[&[u8]] = &[b"h2", b"http/1.1"];

/// ALPN of the HTTP listener: HTTP/2, then HTTP/1.1.
pub const ALPN_HTTP: &[&[u8]] = &[b"h2", b"http/1.1"];

/// How long a client has to finish its TLS handshake before its connection is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes in flight at once per listener; past it no new connection is taken from the
/// listener until one finishes (the others wait in the kernel's accept queue), so clients
/// that open connections and say nothing cannot make the server hold unbounded sockets.
pub const MAX_PENDING_HANDSHAKES: usize = 1024;

/// The PEM files of `serve --tls-cert/--tls-key/--tls-client-ca`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The server's certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key of the leaf certificate (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// With it, every client must present a certificate signed by one of these CAs.
    pub client_ca: Option<PathBuf>,
}

/// Reads `files` and builds the server's TLS settings, offering `alpn` (e.g. [`ALPN_GRPC`]).
///
/// Every error names the file and what is wrong with it (missing, holding no certificate
/// or key, a key that does not belong to the certificate), so a server started with a bad
/// file stops at once with a message an operator can act on.
pub fn server_config(files: &TlsFiles, alpn: &[&[u8]]) -> Result<Arc<ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = read_certs(&files.cert, "--tls-cert")?;
    let key = read_key(&files.key)?;
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs(path, "--tls-client-ca")? {
                roots.add(cert).map_err(|e| {
                    format!(
                        "--tls-client-ca {}: not a usable CA certificate: {e}",
                        path.display()
                    )
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| format!("--tls-client-ca {}: {e}", path.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => format!(
            "--tls-key {} does not belong to the certificate in --tls-cert {}",
            files.key.display(),
            files.cert.display()
        ),
        e => format!(
            "--tls-cert {} / --tls-key {}: {e}",
            files.cert.display(),
            files.key.display()
        ),
    })?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// Every certificate of a PEM file; an error when there is none.
fn read_certs(path: &Path, flag: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(flag, path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(flag, path, e))?;
    if certs.is_empty() {
        return Err(format!(
            "{flag} {}: no certificate in it (expected a PEM \"BEGIN CERTIFICATE\" block)",
            path.display()
        ));
    }
    Ok(certs)
}

/// The first private key of a PEM file.
fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => format!(
            "--tls-key {}: no private key in it (expected a PEM \"BEGIN PRIVATE KEY\", \
             \"BEGIN RSA PRIVATE KEY\" or \"BEGIN EC PRIVATE KEY\" block)",
            path.display()
        ),
        e => pem_error("--tls-key", path, e),
    })
}

fn pem_error(flag: &str, path: &Path, e: rustls_pki_types::pem::Error) -> String {
    match e {
        rustls_pki_types::pem::Error::Io(e) => format!("{flag} {}: {e}", path.display()),
        e => format!("{flag} {}: not a valid PEM file: {e}", path.display()),
    }
}

/// One accepted client connection, in the clear or inside TLS.
pub enum Conn {
    /// No TLS configured.
    Plain(TcpStream),
    /// After a finished handshake (boxed: the TLS state is large).
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl Conn {
    /// The TCP connection underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Conn::Plain(tcp) => tcp,
            Conn::Tls(tls) => tls.get_ref().0,
        }
    }

    /// The ALPN protocol agreed in the handshake (`h2`, `http/1.1`), if any.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        match self {
            Conn::Plain(_) => None,
            Conn::Tls(tls) => tls.get_ref().1.alpn_protocol(),
        }
    }
}

impl fmt::Debug for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let peer = self.tcp().peer_addr().ok();
        match self {
            Conn::Plain(_) => f.debug_struct("Conn::Plain").field("peer", &peer).finish(),
            Conn::Tls(_) => f.debug_struct("Conn::Tls").field("peer", &peer).finish(),
        }
    }
}

/// Accepts from `tcp`, with TLS when `tls` is given (see the module doc).
///
/// The result is a plain `Stream` of connections, so any server can take it: tonic's
/// `serve_with_incoming*` directly (a [`Conn`] is `Connected`, with a [`TcpConnectInfo`]),
/// and an axum `Listener` that pulls from it. Errors of `tcp` itself (accept errors) are
/// passed through; failed handshakes are not errors (they are logged and dropped). Socket
/// options such as `TCP_NODELAY` are the business of `tcp` (e.g. tonic's `TcpIncoming`).
/// Dropping the stream stops every handshake still running.
pub fn accept<S>(tcp: S, tls: Option<Arc<ServerConfig>>) -> Accept<S>
where
    S: Stream<Item = io::Result<TcpStream>> + Unpin,
{
    Accept {
        tcp: Some(tcp),
        acceptor: tls.map(TlsAcceptor::from),
        handshakes: JoinSet::new(),
    }
}

/// The stream [`accept`] returns.
pub struct Accept<S> {
    /// `None` once the listener's stream has ended.
    tcp: Option<S>,
    acceptor: Option<TlsAcceptor>,
    /// Handshakes in flight; each yields its connection, or `None` when it failed.
    handshakes: JoinSet<Option<Conn>>,
}

impl<S> fmt::Debug for Accept<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Accept")
            .field("tls", &self.acceptor.is_some())
            .field("handshakes", &self.handshakes.len())
            .finish()
    }
}

impl<S> Stream for Accept<S>
where
    S: Stream<Item = io::Result<TcpStream>> + Unpin,
{
    type Item = io::Result<Conn>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            // Take every waiting connection while there is room, so that new handshakes
            // start while others are still running.
            let mut listener_waits = false;
            while this.handshakes.len() < MAX_PENDING_HANDSHAKES {
                let Some(tcp) = this.tcp.as_mut() else {
                    listener_waits = true;
                    break;
                };
                match Pin::new(tcp).poll_next(cx) {
                    Poll::Ready(Some(Ok(tcp))) => match &this.acceptor {
                        None => return Poll::Ready(Some(Ok(Conn::Plain(tcp)))),
                        Some(acceptor) => {
                            this.handshakes.spawn(handshake(acceptor.clone(), tcp));
                        }
                    },
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                    Poll::Ready(None) => this.tcp = None,
                    Poll::Pending => {
                        listener_waits = true;
                        break;
                    }
                }
            }
            let mut freed = false;
            loop {
                match this.handshakes.poll_join_next(cx) {
                    Poll::Ready(Some(Ok(Some(conn)))) => return Poll::Ready(Some(Ok(conn))),
                    Poll::Ready(Some(Ok(None))) => freed = true,
                    Poll::Ready(Some(Err(e))) => {
                        debug!(error = %e, "TLS handshake task ended abnormally");
                        freed = true;
                    }
                    Poll::Ready(None) if this.tcp.is_none() => return Poll::Ready(None),
                    Poll::Ready(None) | Poll::Pending => break,
                }
            }
            // The listener was left unpolled for want of room, and failed handshakes made
            // room: poll it again, or nothing would wake this task for the connections
            // waiting there (no handshake left to wake it either).
            if listener_waits || !freed {
                return Poll::Pending;
            }
        }
    }
}

/// One handshake under [`HANDSHAKE_TIMEOUT`]; a failure is logged with the peer and why.
async fn handshake(acceptor: TlsAcceptor, tcp: TcpStream) -> Option<Conn> {
    let peer = tcp.peer_addr().ok();
    let peer = peer.map_or_else(|| "unknown".to_string(), |p| p.to_string());
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => Some(Conn::Tls(Box::new(tls))),
        Ok(Err(e)) => {
            debug!(%peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            debug!(
                %peer,
                timeout_ms = HANDSHAKE_TIMEOUT.as_millis() as u64,
                "TLS handshake timed out"
            );
            None
        }
    }
}

impl Connected for Conn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.tcp().connect_info()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(io) => Pin::new(io).poll_read(cx, buf),
            Conn::Tls(io) => Pin::new(io.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(io) => Pin::new(io).poll_write(cx, buf),
            Conn::Tls(io) => Pin::new(io.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            Conn::Tls(io) => Pin::new(io.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Plain(io) => io.is_write_vectored(),
            Conn::Tls(io) => io.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(io) => Pin::new(io).poll_flush(cx),
            Conn::Tls(io) => Pin::new(io.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(io) => Pin::new(io).poll_shutdown(cx),
            Conn::Tls(io) => Pin::new(io.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use futures::StreamExt;
    use rcgen::{
        BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
        KeyUsagePurpose,
    };
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls::pki_types::ServerName;
    use tokio_rustls::rustls::ClientConfig;
    use tokio_rustls::TlsConnector;
    use tokio_stream::wrappers::TcpListenerStream;

    /// A CA that signs leaf certificates.
    struct Ca {
        pem: String,
        issuer: Issuer<'static, KeyPair>,
    }

    impl Ca {
        fn new(name: &str) -> Ca {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, name);
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            let key = KeyPair::generate().unwrap();
            let cert = params.self_signed(&key).unwrap();
            Ca {
                pem: cert.pem(),
                issuer: Issuer::new(params, key),
            }
        }

        /// A leaf for `names`, as (certificate PEM, key PEM).
        fn leaf(&self, names: &[&str], usage: ExtendedKeyUsagePurpose) -> (String, String) {
            let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
            let mut params = CertificateParams::new(names).unwrap();
            params.extended_key_usages = vec![usage];
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &self.issuer).unwrap();
            (cert.pem(), key.serialize_pem())
        }

        fn roots(&self) -> RootCertStore {
            let mut roots = RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(self.pem.as_bytes()) {
                roots.add(c.unwrap()).unwrap();
            }
            roots
        }
    }

    /// Server files for `localhost` under `dir`, optionally requiring clients of `client_ca`.
    fn files(dir: &Path, ca: &Ca, client_ca: Option<&Ca>) -> TlsFiles {
        let (cert, key) = ca.leaf(
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        std::fs::write(dir.join("cert.pem"), cert).unwrap();
        std::fs::write(dir.join("key.pem"), key).unwrap();
        let client_ca = client_ca.map(|c| {
            let path = dir.join("client-ca.pem");
            std::fs::write(&path, &c.pem).unwrap();
            path
        });
        TlsFiles {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            client_ca,
        }
    }

    fn client_config(trust: &Ca, identity: Option<(String, String)>) -> Arc<ClientConfig> {
        let builder =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(trust.roots());
        let mut config = match identity {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let certs = CertificateDer::pem_slice_iter(cert.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .unwrap();
                let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
                builder.with_client_auth_cert(certs, key).unwrap()
            }
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        Arc::new(config)
    }

    /// A listener on loopback whose accepted connections go through [`accept`].
    async fn listen(
        tls: Option<Arc<ServerConfig>>,
    ) -> (std::net::SocketAddr, Accept<TcpListenerStream>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        (addr, accept(TcpListenerStream::new(listener), tls))
    }

    /// Connects with TLS, writes `ping`, and reads the server's answer.
    async fn tls_ping(
        addr: std::net::SocketAddr,
        config: Arc<ClientConfig>,
    ) -> io::Result<Vec<u8>> {
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::try_from("localhost").unwrap();
        let mut tls = TlsConnector::from(config).connect(name, tcp).await?;
        tls.write_all(b"ping").await?;
        tls.flush().await?;
        let mut answer = vec![0; 4];
        tls.read_exact(&mut answer).await?;
        Ok(answer)
    }

    /// Serves the next connection of `incoming`: answers `pong` to its `ping`.
    async fn serve_one(incoming: &mut Accept<TcpListenerStream>) -> Conn {
        let mut conn = tokio::time::timeout(Duration::from_secs(5), incoming.next())
            .await
            .expect("a connection within 5 s")
            .expect("the stream goes on")
            .expect("no accept error");
        let mut ping = [0; 4];
        conn.read_exact(&mut ping).await.unwrap();
        assert_eq!(&ping, b"ping");
        conn.write_all(b"pong").await.unwrap();
        conn.flush().await.unwrap();
        conn
    }

    #[test]
    fn loads_a_certificate_and_key_and_offers_alpn() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("ca");
        let config = server_config(&files(dir.path(), &ca, None), ALPN_HTTP).unwrap();
        assert_eq!(
            config.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        // The gRPC listener offers HTTP/1.1 too, for gRPC-Web clients; h2 first.
        let config = server_config(&files(dir.path(), &ca, Some(&ca)), ALPN_GRPC).unwrap();
        assert_eq!(
            config.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
    }

    #[test]
    fn bad_files_are_named_with_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("ca");
        let good = files(dir.path(), &ca, None);

        let missing = TlsFiles {
            cert: dir.path().join("nope.pem"),
            ..good.clone()
        };
        let e = server_config(&missing, ALPN_GRPC).unwrap_err();
        assert!(e.contains("--tls-cert") && e.contains("nope.pem"), "{e}");
        assert!(e.contains("No such file"), "{e}");

        // The key file given as the certificate: no certificate in it.
        let swapped = TlsFiles {
            cert: good.key.clone(),
            ..good.clone()
        };
        let e = server_config(&swapped, ALPN_GRPC).unwrap_err();
        assert!(e.contains("key.pem") && e.contains("no certificate"), "{e}");

        // The certificate given as the key: no key in it.
        let no_key = TlsFiles {
            key: good.cert.clone(),
            ..good.clone()
        };
        let e = server_config(&no_key, ALPN_GRPC).unwrap_err();
        assert!(
            e.contains("--tls-key") && e.contains("no private key"),
            "{e}"
        );

        // A key of another certificate.
        let other = dir.path().join("other-key.pem");
        std::fs::write(&other, KeyPair::generate().unwrap().serialize_pem()).unwrap();
        let mismatched = TlsFiles {
            key: other,
            ..good.clone()
        };
        let e = server_config(&mismatched, ALPN_GRPC).unwrap_err();
        assert!(e.contains("does not belong"), "{e}");

        // A client CA file that is not PEM at all.
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "-----BEGIN CERTIFICATE-----\nnot base64 at all!\n").unwrap();
        let bad_ca = TlsFiles {
            client_ca: Some(junk),
            ..good
        };
        let e = server_config(&bad_ca, ALPN_GRPC).unwrap_err();
        assert!(
            e.contains("--tls-client-ca") && e.contains("junk.pem"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn without_tls_connections_pass_through() {
        let (addr, mut incoming) = listen(None).await;
        let client = TcpStream::connect(addr).await.unwrap();
        let conn = tokio::time::timeout(Duration::from_secs(5), incoming.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(matches!(conn, Conn::Plain(_)));
        assert_eq!(
            conn.connect_info().remote_addr,
            Some(client.local_addr().unwrap())
        );
    }

    #[tokio::test]
    async fn a_silent_client_does_not_hold_up_the_next_handshake() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("ca");
        let config = server_config(&files(dir.path(), &ca, None), ALPN_GRPC).unwrap();
        let (addr, mut incoming) = listen(Some(config)).await;
        // Connects and says nothing: its handshake waits (up to HANDSHAKE_TIMEOUT).
        let _silent = TcpStream::connect(addr).await.unwrap();
        // Speaks garbage: its handshake fails, and that is no error of the stream.
        let mut garbage = TcpStream::connect(addr).await.unwrap();
        garbage.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();

        let client = tokio::spawn(tls_ping(addr, client_config(&ca, None)));
        let conn = serve_one(&mut incoming).await;
        assert!(matches!(conn, Conn::Tls(_)));
        assert_eq!(conn.alpn_protocol(), Some(&b"h2"[..]));
        assert_eq!(client.await.unwrap().unwrap(), b"pong");
    }

    #[tokio::test]
    async fn a_client_that_does_not_trust_the_server_fails() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("ca");
        let config = server_config(&files(dir.path(), &ca, None), ALPN_GRPC).unwrap();
        let (addr, mut incoming) = listen(Some(config)).await;
        // Handshakes progress while the stream is polled, as a server always does.
        let server = tokio::spawn(async move {
            serve_one(&mut incoming).await;
        });
        let e = tls_ping(addr, client_config(&Ca::new("another ca"), None))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("invalid peer certificate"), "{e}");
        // Nothing was yielded for it; the next client is served.
        let answer = tls_ping(addr, client_config(&ca, None)).await.unwrap();
        assert_eq!(answer, b"pong");
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn with_a_client_ca_only_its_clients_are_served() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("ca");
        let clients = Ca::new("client ca");
        let config = server_config(&files(dir.path(), &ca, Some(&clients)), ALPN_GRPC).unwrap();
        let (addr, mut incoming) = listen(Some(config)).await;
        let server = tokio::spawn(async move {
            let conn = serve_one(&mut incoming).await;
            drop(conn);
            incoming
        });

        // No certificate, then one from another CA: refused at the handshake (in TLS 1.3
        // the client learns it on its first read).
        assert!(tls_ping(addr, client_config(&ca, None)).await.is_err());
        let stranger = Ca::new("stranger").leaf(&["me"], ExtendedKeyUsagePurpose::ClientAuth);
        assert!(tls_ping(addr, client_config(&ca, Some(stranger)))
            .await
            .is_err());

        let mine = clients.leaf(&["me"], ExtendedKeyUsagePurpose::ClientAuth);
        let answer = tls_ping(addr, client_config(&ca, Some(mine)))
            .await
            .unwrap();
        assert_eq!(answer, b"pong");
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .unwrap()
            .unwrap();
    }
}
