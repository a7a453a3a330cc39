//! Which web pages may call the HTTP door. A browser names the page behind every request it
//! may send on a page's behalf in `Origin`; the door serves such a request only when the
//! origin is the door's own (the `Host` the request was sent to, or the host a reverse
//! proxy in front names in `X-Forwarded-Host` or `Forwarded`) or one `--cors-origin` lets
//! in, and refuses it otherwise with 403 before any handler runs. CORS alone does not do
//! this: a browser opens a WebSocket, and sends a "simple" POST, to any origin without
//! asking first, so without this check any site a user of a server without `--auth-*`
//! visits could subscribe to its topics and publish to them. Clients that are not browsers send no `Origin` and are not
//! concerned. This is not authorization (the broker decides what a caller may do): it keeps
//! other sites' pages from calling as the browser's user.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::door::HttpDoor;
use super::error::ApiError;
use crate::broker::Error;

/// The origins, besides the door's own, whose pages may call it: `--cors-origin`.
#[derive(Debug, Clone, Default)]
pub struct Origins {
    /// `--cors-origin '*'`: every origin.
    any: bool,
    /// The others, lower-case, without a trailing `/`.
    listed: Vec<String>,
}

impl Origins {
    /// The origins `--cors-origin` names (`*`: all).
    pub fn new(cors_origins: &[String]) -> Origins {
        Origins {
            any: cors_origins.iter().any(|o| o == "*"),
            listed: cors_origins
                .iter()
                .map(|o| o.trim_end_matches('/').to_ascii_lowercase())
                .collect(),
        }
    }

    /// `Ok` when a request with these headers may be served: it names no origin, or its
    /// origin is the door's own or a listed one. Otherwise `PERMISSION_DENIED`, naming the
    /// flag that would let the page in.
    ///
    /// `open`: the server takes calls without a token (no `--auth-*`). Then a page of its
    /// own origin is admitted only at an IP address or `localhost`: a page at a DNS name is
    /// one a DNS rebinding may have pointed at the server (the attacker's name, now
    /// resolving to 127.0.0.1, is the page's own origin), and with no token to ask for it
    /// would act as the browser's user. Such a name is let in with `--cors-origin`.
    pub fn admit(&self, headers: &HeaderMap, uri: &Uri, open: bool) -> Result<(), Error> {
        let Some(origin) = headers.get("origin") else {
            return Ok(());
        };
        if self.any {
            return Ok(());
        }
        let origin = origin.to_str().unwrap_or("").trim_end_matches('/');
        let lower = origin.to_ascii_lowercase();
        if self.listed.contains(&lower) {
            return Ok(());
        }
        if same_origin(&lower, headers, uri) {
            if !open || at_an_address(&lower) {
                return Ok(());
            }
            return Err(Error::PermissionDenied(format!(
                "a page from origin '{origin}' may not call this server: without --auth-*, \
                 only pages at an IP address or localhost may (a DNS name may have been \
                 rebound to this server); let it in with --cors-origin {origin}"
            )));
        }
        Err(Error::PermissionDenied(format!(
            "a page from origin '{origin}' may not call this server (only its own origin's \
             pages may): let it in with --cors-origin {origin}"
        )))
    }
}

/// Whether `origin` (lower-case) is the one the request was sent to: its scheme's host and
/// port are the `Host` (or HTTP/2 authority) of the request, or the first host a reverse
/// proxy names in `X-Forwarded-Host` or `Forwarded` (a browser cannot set either without
/// asking the server first).
fn same_origin(origin: &str, headers: &HeaderMap, uri: &Uri) -> bool {
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false;
    };
    let default_port = match scheme {
        "http" => ":80",
        "https" => ":443",
        _ => return false,
    };
    let plain = |a: &str| {
        let a = a.trim().to_ascii_lowercase();
        match a.strip_suffix(default_port) {
            Some(host) => host.to_string(),
            None => a,
        }
    };
    let authority = plain(authority);
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let forwarded_host = header("x-forwarded-host").and_then(|v| v.split(',').next());
    // RFC 7239: `Forwarded: for=…;host=example.com;proto=https, for=…` (the first proxy's).
    let forwarded = header("forwarded").and_then(|v| {
        v.split(',').next()?.split(';').find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            name.eq_ignore_ascii_case("host")
                .then(|| value.trim_matches('"'))
        })
    });
    [
        header("host"),
        uri.authority().map(|a| a.as_str()),
        forwarded_host,
        forwarded,
    ]
    .into_iter()
    .flatten()
    .any(|host| plain(host) == authority)
}

/// Whether `origin` (`scheme://host[:port]`, lower-case) is at an IP address or at
/// `localhost` (or a name under it): names no DNS rebinding can point elsewhere.
fn at_an_address(origin: &str) -> bool {
    let Some((_, authority)) = origin.split_once("://") else {
        return false;
    };
    let host = match authority.strip_prefix('[') {
        // [v6]:port
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    host.parse::<std::net::IpAddr>().is_ok() || host == "localhost" || host.ends_with(".localhost")
}

/// The middleware: refuses a request from another origin's page before its handler runs.
pub async fn guard(State(door): State<Arc<HttpDoor>>, req: Request, next: Next) -> Response {
    let open = door.broker().is_ok_and(|b| !b.requires_auth());
    match door.origins().admit(req.headers(), req.uri(), open) {
        Ok(()) => next.run(req).await,
        Err(e) => ApiError(e).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).expect("header"));
        }
        h
    }

    fn admits(origins: &[&str], pairs: &[(&'static str, &str)]) -> bool {
        let origins: Vec<String> = origins.iter().map(|s| s.to_string()).collect();
        let uri: Uri = "/v1/ws".parse().expect("uri");
        Origins::new(&origins)
            .admit(&headers(pairs), &uri, false)
            .is_ok()
    }

    #[test]
    fn requests_without_an_origin_are_not_concerned() {
        assert!(admits(&[], &[("host", "127.0.0.1:7071")]));
        assert!(admits(&[], &[]));
    }

    #[test]
    fn the_doors_own_origin_is_admitted() {
        let host = ("host", "127.0.0.1:7071");
        assert!(admits(&[], &[host, ("origin", "http://127.0.0.1:7071")]));
        assert!(admits(
            &[],
            &[("host", "Example.COM"), ("origin", "https://example.com")]
        ));
        assert!(admits(
            &[],
            &[
                ("host", "example.com:443"),
                ("origin", "https://example.com")
            ]
        ));
        assert!(admits(
            &[],
            &[
                ("host", "example.com:80"),
                ("origin", "http://example.com/")
            ]
        ));
        // Behind a proxy that passes the page's host on, either way.
        assert!(admits(
            &[],
            &[
                host,
                (
                    "forwarded",
                    "for=10.0.0.1;host=\"app.example:8443\";proto=https, for=x"
                ),
                ("origin", "https://app.example:8443")
            ]
        ));
        assert!(!admits(
            &[],
            &[
                host,
                ("forwarded", "for=10.0.0.1;host=app.example;proto=https"),
                ("origin", "https://app.example:8443")
            ]
        ));
        assert!(admits(
            &[],
            &[
                host,
                ("x-forwarded-host", "app.example, proxy.internal"),
                ("origin", "https://app.example")
            ]
        ));
    }

    #[test]
    fn without_auth_only_pages_at_an_address_or_localhost_are_their_own_origin() {
        let open = |origins: &[&str], host: &str, origin: &str| {
            let origins: Vec<String> = origins.iter().map(|s| s.to_string()).collect();
            let h = headers(&[("host", host), ("origin", origin)]);
            Origins::new(&origins)
                .admit(&h, &"/".parse().expect("uri"), true)
                .is_ok()
        };
        for (host, origin) in [
            ("127.0.0.1:7071", "http://127.0.0.1:7071"),
            ("[::1]:7071", "http://[::1]:7071"),
            ("localhost:7071", "http://localhost:7071"),
            ("app.localhost", "http://app.localhost"),
            ("10.1.2.3", "https://10.1.2.3"),
        ] {
            assert!(open(&[], host, origin), "{origin}");
        }
        for (host, origin) in [
            ("evil.example:7071", "http://evil.example:7071"),
            ("localhost.evil.example", "http://localhost.evil.example"),
            ("127.0.0.1.nip.io:7071", "http://127.0.0.1.nip.io:7071"),
        ] {
            assert!(!open(&[], host, origin), "{origin}");
        }
        // A name let in by --cors-origin is served.
        assert!(open(
            &["http://app.example:7071"],
            "app.example:7071",
            "http://app.example:7071"
        ));
    }

    #[test]
    fn other_origins_are_refused_unless_listed() {
        let host = ("host", "127.0.0.1:7071");
        for other in [
            "https://evil.example",
            "http://127.0.0.1:7072",
            "https://127.0.0.1:7071:80",
            "http://localhost:7071",
            "null",
            "",
        ] {
            assert!(!admits(&[], &[host, ("origin", other)]), "{other}");
        }
        assert!(!admits(&[], &[("origin", "http://127.0.0.1:7071")]));
        assert!(!admits(
            &[],
            &[
                ("host", "example.com"),
                ("origin", "https://example.com:80")
            ]
        ));
        let listed = ["https://app.example/"];
        assert!(admits(&listed, &[host, ("origin", "https://APP.example")]));
        assert!(!admits(
            &listed,
            &[host, ("origin", "https://evil.example")]
        ));
        assert!(admits(&["*"], &[host, ("origin", "null")]));
    }

    #[test]
    fn the_refusal_names_the_flag() {
        let err = Origins::new(&[])
            .admit(
                &headers(&[("origin", "https://evil.example")]),
                &"/".parse().expect("uri"),
                false,
            )
            .expect_err("refused");
        assert!(matches!(err, Error::PermissionDenied(_)));
        assert!(
            err.to_string()
                .contains("--cors-origin https://evil.example"),
            "{err}"
        );
    }
}
