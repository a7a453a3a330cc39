//! The web console at `/`: static files embedded in the binary at build time (no Node,
//! no build step), a page that uses the public HTTP API only — topics with live figures,
//! a live tail over Server-Sent Events, a publish form and the History pager.

use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

const INDEX_HTML: &str = include_str!("console/index.html");
const APP_JS: &str = include_str!("console/app.js");
const STYLE_CSS: &str = include_str!("console/style.css");

/// `GET /`: the console page.
pub async fn index() -> Response {
    file(INDEX_HTML, "text/html; charset=utf-8")
}

/// `GET /console/{file}`: the page's script and style sheet.
pub async fn asset(Path(name): Path<String>) -> Response {
    match name.as_str() {
        "app.js" => file(APP_JS, "text/javascript; charset=utf-8"),
        "style.css" => file(STYLE_CSS, "text/css; charset=utf-8"),
        _ => (
            StatusCode::NOT_FOUND,
            axum::Json(serde_json::json!({"code": "NOT_FOUND", "message": "no such file"})),
        )
            .into_response(),
    }
}

fn file(body: &'static str, content_type: &'static str) -> Response {
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // The page talks to this server only, and runs no inline script.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'",
        ),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}
