//! A unary request whose message tonic cannot decode — over the gRPC decoding limit
//! (`max(--max-frame-bytes + 1 MiB, 8 MiB)`, as sent or once decompressed), not protobuf,
//! or not the compression it names — is refused by tonic itself, before any handler runs,
//! in a trailers-only answer (`OUT_OF_RANGE`, `RESOURCE_EXHAUSTED` or `INTERNAL` in the
//! headers). API.md gives a payload over `--max-frame-bytes`, and bad input, the broker's
//! `INVALID_ARGUMENT`: this layer rewrites that answer of Publish and Broadcast (the calls
//! whose messages carry a payload) and counts it in `rejected_requests_total`. A stream's
//! messages are refused by its handler ([`super::status::undecodable`]).

use std::task::{Context, Poll};

use axum::http::{HeaderMap, HeaderValue, Request, Response};
use futures::future::{BoxFuture, Either};
use tonic::body::Body;

use super::status::undecodable;
use crate::broker::Broker;

/// The unary calls whose request carries a payload.
const PAYLOAD_CALLS: [&str; 2] = [
    "/framecast.v1.Broadcast/Publish",
    "/framecast.v1.Broadcast/Broadcast",
];

/// The layer: [`TooLarge`] around the gRPC routes.
#[derive(Clone)]
pub struct TooLargeLayer {
    broker: Broker,
}

impl TooLargeLayer {
    /// Counts its rewrites in `broker`'s metrics, and reads `--max-frame-bytes` from it.
    pub fn new(broker: Broker) -> Self {
        Self { broker }
    }
}

impl<S> tower::Layer<S> for TooLargeLayer {
    type Service = TooLarge<S>;

    fn layer(&self, inner: S) -> TooLarge<S> {
        TooLarge {
            inner,
            broker: self.broker.clone(),
        }
    }
}

/// The service: answers of Publish and Broadcast looked into; others passed as they are.
#[derive(Clone)]
pub struct TooLarge<S> {
    inner: S,
    broker: Broker,
}

impl<S, B> tower::Service<Request<B>> for TooLarge<S>
where
    S: tower::Service<Request<B>, Response = Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Either<S::Future, BoxFuture<'static, Result<Response<Body>, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        if !PAYLOAD_CALLS.contains(&req.uri().path()) {
            return Either::Left(self.inner.call(req));
        }
        let broker = self.broker.clone();
        let answer = self.inner.call(req);
        Either::Right(Box::pin(async move {
            let mut resp = answer.await?;
            rewrite(resp.headers_mut(), &broker);
            Ok(resp)
        }))
    }
}

/// Rewrites `grpc-status`/`grpc-message` in `map` (a trailers-only answer's headers; the
/// body is left untouched) when they are tonic's refusal of an undecodable message.
fn rewrite(map: &mut HeaderMap, broker: &Broker) {
    let status = map.get("grpc-status").map(HeaderValue::as_bytes);
    if !matches!(status, Some(b"8" | b"11" | b"13")) {
        return;
    }
    // The message as tonic sent it (percent-encoded).
    let Some(e) = tonic::Status::from_header_map(map)
        .and_then(|status| undecodable(&status, broker.max_frame_bytes()))
    else {
        return;
    };
    let e = broker.reject(e);
    tracing::debug!(error = %e, "request message tonic could not decode");
    // ASCII text from tonic's own message: encodable, so the refusal is always written.
    let _ = super::status::status(e).add_header(map);
}
