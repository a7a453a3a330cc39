//! The HTTP door's one mapping from the broker's errors to responses: the status table of
//! API.md, and the body `{"code":"INVALID_ARGUMENT","message":"…"}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tonic::Code;

use crate::broker::Error;

/// A refused or failed call, as an HTTP response.
#[derive(Debug)]
pub struct ApiError(pub Error);

impl From<Error> for ApiError {
    fn from(e: Error) -> ApiError {
        ApiError(e)
    }
}

/// The HTTP status of `e`: API.md's table (a payload over `--max-frame-bytes` is 413).
pub fn http_status(e: &Error) -> StatusCode {
    if matches!(e, Error::PayloadTooLarge { .. }) {
        return StatusCode::PAYLOAD_TOO_LARGE;
    }
    match e.code() {
        Code::InvalidArgument => StatusCode::BAD_REQUEST,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists => StatusCode::CONFLICT,
        Code::FailedPrecondition => StatusCode::PRECONDITION_FAILED,
        Code::OutOfRange => StatusCode::RANGE_NOT_SATISFIABLE,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The JSON body of an error: `code` is the upper-case gRPC code name. A follower's
/// refusal also names the leader (`"leader"`: its HTTP door, else its gRPC address), as the
/// `Framecast-Leader` header does: a WebSocket error has no headers.
pub fn error_body(e: &Error) -> serde_json::Value {
    let mut body = serde_json::json!({
        "code": e.code_name().to_ascii_uppercase(),
        "message": e.to_string(),
    });
    if let Some(leader) = leader_named(e) {
        body["leader"] = leader.into();
    }
    body
}

/// The leader a follower's refusal `e` names for an HTTP client: the leader's HTTP door
/// (a browser needs it, not the gRPC address), else its gRPC address; `None` when `e` is
/// not such a refusal or no leader is known.
fn leader_named(e: &Error) -> Option<&str> {
    let Error::NotLeader {
        leader,
        leader_http,
        ..
    } = e
    else {
        return None;
    };
    let named = if leader_http.is_empty() {
        leader
    } else {
        leader_http
    };
    (!named.is_empty()).then_some(named.as_str())
}

/// The `Framecast-Leader` header of a follower's refusal `e` (see [`error_body`]); `None`
/// when `e` names no leader.
pub fn leader_header(e: &Error) -> Option<HeaderValue> {
    leader_named(e).and_then(|n| HeaderValue::from_str(n).ok())
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = http_status(&self.0);
        let mut resp = (status, axum::Json(error_body(&self.0))).into_response();
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(v) = leader_header(&self.0) {
            resp.headers_mut().insert("framecast-leader", v);
        }
        if matches!(self.0, Error::Starting) {
            // Refused before the broker saw it: a client may send even a write without an
            // idempotency key again (a plain 503 may come after the write was applied).
            resp.headers_mut()
                .insert(UNWRITTEN, HeaderValue::from_static("starting"));
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}

/// The header of a refusal that surely wrote nothing (the server still starting).
pub const UNWRITTEN: &str = "framecast-unwritten";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_table() {
        let cases = [
            (Error::InvalidArgument("x".into()), 400),
            (Error::PayloadTooLarge { size: 2, max: 1 }, 413),
            (Error::Unauthenticated("x".into()), 401),
            (Error::TokenExpired, 401),
            (Error::PermissionDenied("x".into()), 403),
            (Error::TopicNotFound("t".into()), 404),
            (Error::AlreadyExists("t".into()), 409),
            (
                Error::EpochMismatch {
                    topic: "t".into(),
                    cursor: 1,
                    current: 2,
                },
                412,
            ),
            (Error::OutOfRange("x".into()), 416),
            (Error::TooManySubscribers(1), 429),
            (Error::Busy("x".into()), 429),
            (Error::ShuttingDown, 503),
            (Error::NotCommittedYet("x".into()), 503),
            (Error::Starting, 503),
        ];
        for (e, want) in cases {
            assert_eq!(http_status(&e).as_u16(), want, "{e}");
        }
        let body = error_body(&Error::PermissionDenied("no".into()));
        assert_eq!(body["code"], "PERMISSION_DENIED");
        assert_eq!(body["message"], "no");
        assert!(body.get("leader").is_none());
        let starting = ApiError(Error::Starting).into_response();
        assert_eq!(starting.headers()[UNWRITTEN], "starting");
        assert_eq!(starting.headers()[header::RETRY_AFTER], "1");
        let other = ApiError(Error::ShuttingDown).into_response();
        assert!(other.headers().get(UNWRITTEN).is_none());
    }

    #[test]
    fn a_followers_refusal_names_the_leaders_http_door_else_its_grpc_address() {
        let refusal = |http: &str| Error::NotLeader {
            lacks: String::new(),
            leader: "l:7070".into(),
            leader_http: http.into(),
        };
        let body = error_body(&refusal("http://l:8080"));
        assert_eq!(body["code"], "UNAVAILABLE");
        assert_eq!(body["leader"], "http://l:8080");
        assert_eq!(error_body(&refusal(""))["leader"], "l:7070");
        let resp = ApiError(refusal("http://l:8080")).into_response();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(resp.headers()["framecast-leader"], "http://l:8080");
        let none = Error::NotLeader {
            lacks: "topic 't'".into(),
            leader: String::new(),
            leader_http: String::new(),
        };
        assert!(error_body(&none).get("leader").is_none());
        assert_eq!(
            error_body(&none)["message"],
            "this node does not hold topic 't' and is not the leader (no leader elected yet)"
        );
        assert_eq!(
            error_body(&refusal(""))["message"],
            "not the leader: the leader is l:7070"
        );
        assert!(ApiError(none)
            .into_response()
            .headers()
            .get("framecast-leader")
            .is_none());
    }
}
