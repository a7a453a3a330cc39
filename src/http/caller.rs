//! Who is calling: the bearer token of an HTTP request, from its `Authorization` header or,
//! where a browser cannot set headers (EventSource, WebSocket), its `access_token` query
//! parameter. The broker verifies it.

use std::collections::HashMap;
use std::sync::Arc;

use axum::http::{header, HeaderMap};

use crate::broker::principal::Principal;
use crate::broker::{Broker, Result};

/// The caller of a request, authenticated by the broker.
pub fn caller(
    broker: &Broker,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
) -> Result<Arc<Principal>> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        // A header that is not visible ASCII is no token at all.
        return broker.authenticate(Some(value.to_str().unwrap_or("")));
    }
    match query.get("access_token") {
        Some(token) => broker.authenticate(Some(&format!("Bearer {token}"))),
        None => broker.authenticate(None),
    }
}
