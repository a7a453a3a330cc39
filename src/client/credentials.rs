//! What a client shows the server: a bearer token on every call ([`Bearer`]) and, for TLS,
//! the CA that signed the server's certificate and optionally its own certificate
//! ([`ClientTls`]). Shared by [`super::Client`] and the load generator's connections.

use std::fmt;

use bytes::Bytes;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use super::error::{Error, Result};

/// Adds `authorization: Bearer <token>` to every call it intercepts; without a token it
/// adds nothing. Cheap to clone (the header value is shared bytes).
#[derive(Clone, Default)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Bearer {
    /// A bearer of `token` (a JWT, e.g. from `framecast token`).
    pub fn new(token: &str) -> Result<Bearer> {
        let token = token.trim();
        if token.is_empty() {
            return Err(Error::InvalidArgument("the token is empty".into()));
        }
        let refused = || {
            Error::InvalidArgument(
                "the token has characters a bearer token cannot have (a JWT is printable \
                 ASCII without spaces)"
                    .into(),
            )
        };
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(refused());
        }
        MetadataValue::try_from(format!("Bearer {token}"))
            .map(|v| Bearer(Some(v)))
            .map_err(|_| refused())
    }

    /// True when a token is sent.
    pub fn is_set(&self) -> bool {
        self.0.is_some()
    }
}

/// The token stays out of logs and `{:?}`.
impl fmt::Debug for Bearer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(_) => f.write_str("Bearer(<token>)"),
            None => f.write_str("Bearer(none)"),
        }
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            req.metadata_mut().insert("authorization", value.clone());
        }
        Ok(req)
    }
}

/// A client's TLS settings. TLS is on when a CA is given or the address is `https://`;
/// only the given CA is trusted (no system roots), so an `https://` address needs one.
#[derive(Clone, Default)]
pub struct ClientTls {
    /// PEM of the CA(s) whose certificates the server's must chain to.
    pub ca_pem: Option<Bytes>,
    /// PEM certificate and key presented to a server that requires client certificates.
    pub identity: Option<(Bytes, Bytes)>,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("ca", &self.ca_pem.is_some())
            .field("identity", &self.identity.is_some())
            .finish()
    }
}

impl ClientTls {
    /// True when the settings ask for TLS whatever the address says.
    pub fn wanted(&self) -> bool {
        self.ca_pem.is_some() || self.identity.is_some()
    }

    /// The URL of `addr` (`host:port`, `http://…`, `https://…`): `https://` when TLS is
    /// wanted or asked for, `http://` otherwise.
    pub fn url(&self, addr: &str) -> String {
        let rest = match addr.split_once("://") {
            Some(("https", _)) => return addr.to_string(),
            Some((_, rest)) => rest,
            None => addr,
        };
        let scheme = if self.wanted() { "https" } else { "http" };
        format!("{scheme}://{rest}")
    }

    /// An endpoint for `addr` with these settings; the TLS server name is the address's
    /// host. Certificates and keys are checked here, so a bad PEM fails before any call.
    pub fn endpoint(&self, addr: &str) -> Result<Endpoint> {
        let url = self.url(addr);
        let endpoint = Endpoint::from_shared(url.clone())
            .map_err(|_| Error::InvalidAddress(addr.to_string()))?;
        if !url.starts_with("https://") {
            return Ok(endpoint);
        }
        let mut config = ClientTlsConfig::new();
        if let Some(ca) = &self.ca_pem {
            certificates(ca, "the CA certificate")?;
            config = config.ca_certificate(Certificate::from_pem(ca));
        }
        if let Some((cert, key)) = &self.identity {
            certificates(cert, "the client certificate")?;
            PrivateKeyDer::from_pem_slice(key).map_err(|e| {
                Error::InvalidArgument(format!("the client key: no PEM private key in it ({e})"))
            })?;
            config = config.identity(Identity::from_pem(cert, key));
        }
        endpoint
            .tls_config(config)
            .map_err(|e| Error::InvalidArgument(format!("TLS settings: {}", chain(&e))))
    }
}

/// Checks that `pem` holds at least one certificate (tonic would take a file without any
/// and fail every handshake later).
fn certificates(pem: &[u8], what: &str) -> Result<()> {
    let mut n = 0;
    for cert in CertificateDer::pem_slice_iter(pem) {
        cert.map_err(|e| Error::InvalidArgument(format!("{what}: not valid PEM ({e})")))?;
        n += 1;
    }
    if n == 0 {
        return Err(Error::InvalidArgument(format!(
            "{what}: no certificate in it (expected a PEM \"BEGIN CERTIFICATE\" block)"
        )));
    }
    Ok(())
}

/// An error and its causes, `: `-separated (tonic's transport errors say little alone).
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn urls_follow_the_tls_settings() {
        let plain = ClientTls::default();
        assert_eq!(plain.url("h:1"), "http://h:1");
        assert_eq!(plain.url("http://h:1"), "http://h:1");
        assert_eq!(plain.url("https://h:1"), "https://h:1");
        let tls = ClientTls {
            ca_pem: Some(Bytes::from_static(b"pem")),
            identity: None,
        };
        assert_eq!(tls.url("h:1"), "https://h:1");
        assert_eq!(tls.url("http://h:1"), "https://h:1");
    }

    #[test]
    fn a_bad_ca_is_refused_before_any_call() {
        let tls = ClientTls {
            ca_pem: Some(Bytes::from_static(b"not a certificate")),
            identity: None,
        };
        assert!(matches!(
            tls.endpoint("localhost:1"),
            Err(Error::InvalidArgument(_))
        ));
    }

    #[test]
    fn the_bearer_adds_the_header_and_hides_the_token() {
        let mut b = Bearer::new("abc.def.ghi\n").unwrap();
        let req = b.call(tonic::Request::new(())).unwrap();
        assert_eq!(
            req.metadata().get("authorization").unwrap(),
            "Bearer abc.def.ghi"
        );
        assert!(!format!("{b:?}").contains("abc"));
        assert!(Bearer::new("").is_err());
        assert!(Bearer::new("tok\u{e9}n").is_err());
        let mut none = Bearer::default();
        let req = none.call(tonic::Request::new(())).unwrap();
        assert!(req.metadata().get("authorization").is_none());
    }
}
