//! CORS for both doors (`--cors-origin`): which other origins' pages may call the HTTP door
//! and gRPC-Web. Without the flag, no CORS headers are sent and only same-origin pages (the
//! console) may call (the HTTP door refuses the others outright: see
//! [`origin`](super::origin)); `*` allows any origin. Tokens travel in `Authorization` (or
//! `access_token`), never in cookies, so credentials are never allowed.

use std::time::Duration;

use axum::http::{header, HeaderName, HeaderValue, Method};
use tower_http::cors::{AllowHeaders, AllowOrigin, Any, CorsLayer};

/// Response headers a page may read: gRPC-Web's status trailers-in-headers, a
/// subscription's snapshot and epoch, the leader to follow.
const EXPOSED: [&str; 7] = [
    "grpc-status",
    "grpc-message",
    "grpc-status-details-bin",
    "framecast-snapshot-offset",
    "framecast-epoch",
    "framecast-leader",
    "framecast-unwritten",
];

/// The CORS layer for `origins` (`*` among them: any origin); `None` when none is given.
/// An origin that is not a valid header value is an error naming it.
pub fn layer(origins: &[String]) -> Result<Option<CorsLayer>, String> {
    if origins.is_empty() {
        return Ok(None);
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::from(Any)
    } else {
        let values = origins
            .iter()
            .map(|o| {
                HeaderValue::from_str(o.trim_end_matches('/'))
                    .map_err(|_| format!("--cors-origin '{o}' is not a valid origin"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        AllowOrigin::list(values)
    };
    let exposed: Vec<HeaderName> = EXPOSED
        .iter()
        .map(|h| HeaderName::from_static(h))
        .chain([header::WWW_AUTHENTICATE])
        .collect();
    Ok(Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST, Method::PUT, Method::DELETE])
            // Mirrored, not `*`: a wildcard does not cover `Authorization` in browsers.
            .allow_headers(AllowHeaders::mirror_request())
            .expose_headers(exposed)
            .max_age(Duration::from_secs(3600)),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_checked() {
        assert!(matches!(layer(&[]), Ok(None)));
        assert!(matches!(layer(&["*".into()]), Ok(Some(_))));
        assert!(matches!(layer(&["https://a.example".into()]), Ok(Some(_))));
        assert!(layer(&["bad\norigin".into()]).is_err());
    }
}
