//! A minimal HTTP/1.1 client for the tests of the HTTP door: one request per connection
//! (`Connection: close`), a bounded read, chunked bodies decoded. No dependency, so the
//! tests see exactly the bytes the server sent.
#![allow(clippy::unwrap_used)]
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// One response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// Sends `method path` to `base` (`http://127.0.0.1:PORT`) with `headers` and `body`.
pub fn request(
    base: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let host = base.trim_start_matches("http://");
    let s = TcpStream::connect(host).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    exchange(s, host, method, path, headers, body).unwrap()
}

/// `GET path` from `base` ([`request`]) off the async runtime's threads.
pub async fn get(base: &str, path: &str) -> Response {
    let (base, path) = (base.to_string(), path.to_string());
    tokio::task::spawn_blocking(move || request(&base, "GET", &path, &[], b""))
        .await
        .unwrap()
}

/// Sends `method path` to `base` (`https://localhost:PORT`) over TLS, trusting only the CA
/// certificate `ca_pem`. The handshake's error, if it fails.
pub fn request_tls(
    base: &str,
    ca_pem: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Response, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, ServerName};
    use tokio_rustls::rustls;
    let host = base.trim_start_matches("https://");
    let name = host.rsplit_once(':').unwrap().0.to_string();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let conn = rustls::ClientConnection::new(
        std::sync::Arc::new(config),
        ServerName::try_from(name).unwrap(),
    )
    .unwrap();
    let tcp = TcpStream::connect(host.replace("localhost", "127.0.0.1")).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    // Complete the handshake first, so its failure is told apart from the request's.
    while tls.conn.is_handshaking() {
        tls.conn
            .complete_io(&mut tls.sock)
            .map_err(|e| e.to_string())?;
    }
    exchange(tls, host, method, path, headers, body)
}

/// One request and its response on `s`.
fn exchange(
    mut s: impl Read + Write,
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Response, String> {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).map_err(|e| e.to_string())?;
    s.write_all(body).map_err(|e| e.to_string())?;
    s.flush().map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    // A TLS peer may close without close_notify after the response: keep what was read.
    if let Err(e) = s.read_to_end(&mut raw) {
        if raw.is_empty() {
            return Err(format!("reading the response: {e}"));
        }
    }
    if raw.is_empty() {
        return Err("the connection closed without a response".into());
    }
    Ok(parse(&raw))
}

/// Sends `message` (raw protobuf bytes, which a generated client could not send) to the
/// gRPC call `path` as gRPC-Web over HTTP/1.1; the answer's `grpc-status` (from its headers,
/// or its trailers in the body) and the answer, for messages.
pub fn grpc_web_status(base: &str, path: &str, message: &[u8]) -> (Option<String>, Response) {
    grpc_web_status_with(base, path, message, &[])
}

/// [`grpc_web_status`] with more request headers (an `Origin`, say).
pub fn grpc_web_status_with(
    base: &str,
    path: &str,
    message: &[u8],
    headers: &[(&str, &str)],
) -> (Option<String>, Response) {
    let mut body = vec![0u8];
    body.extend((message.len() as u32).to_be_bytes());
    body.extend(message);
    let mut all = vec![("Content-Type", "application/grpc-web+proto")];
    all.extend_from_slice(headers);
    let answer = request(base, "POST", path, &all, &body);
    let trailers = String::from_utf8_lossy(&answer.body).to_lowercase();
    let status = answer
        .header("grpc-status")
        .map(str::to_string)
        .or_else(|| {
            trailers.split("grpc-status:").nth(1).map(|rest| {
                rest.trim()
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect()
            })
        });
    (status, answer)
}

/// A request with a bearer token.
pub fn with_token(base: &str, method: &str, path: &str, token: &str, body: &[u8]) -> Response {
    let auth = format!("Bearer {token}");
    request(base, method, path, &[("Authorization", &auth)], body)
}

fn parse(raw: &[u8]) -> Response {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    Response {
        status,
        headers,
        body,
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size_text = String::from_utf8_lossy(&b[..eol]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + size]);
        b = &b[eol + 2 + size + 2..];
    }
}

/// The value of the metric line `series` (`name{labels}`, exactly as exposed) in `text`.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok())?
    })
}
