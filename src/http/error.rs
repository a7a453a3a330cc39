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

/// The JSON body of an error: `code` is the upper-case gRPC code name.
pub fn error_body(e: &Error) -> serde_json::Value {
    serde_json::json!({
        "code": e.code_name().to_ascii_uppercase(),
        "message": e.to_string(),
    })
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = http_status(&self.0);
        let mut resp = (status, axum::Json(error_body(&self.0))).into_response();
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Error::NotLeader {
            leader,
            leader_http,
        } = &self.0
        {
            // A browser client needs the leader's HTTP door, not its gRPC address.
            let named = if leader_http.is_empty() {
                leader
            } else {
                leader_http
            };
            if let Ok(v) = HeaderValue::from_str(named) {
                if !named.is_empty() {
                    resp.headers_mut().insert("framecast-leader", v);
                }
            }
        }
        resp
    }
}

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
            (Error::ShuttingDown, 503),
            (Error::Starting, 503),
        ];
        for (e, want) in cases {
            assert_eq!(http_status(&e).as_u16(), want, "{e}");
        }
        let body = error_body(&Error::PermissionDenied("no".into()));
        assert_eq!(body["code"], "PERMISSION_DENIED");
        assert_eq!(body["message"], "no");
    }
}
