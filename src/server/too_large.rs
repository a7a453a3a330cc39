//! A unary request whose message is over the gRPC decoding limit (`max(--max-frame-bytes +
//! 1 MiB, 8 MiB)`) is refused by tonic itself, before any handler runs, with `OUT_OF_RANGE`
//! in the answer's trailers. API.md gives a payload over `--max-frame-bytes` the broker's
//! `INVALID_ARGUMENT`, whatever its size: this layer rewrites that one answer of Publish and
//! Broadcast (the calls whose messages carry a payload) and counts it in
//! `rejected_requests_total`. A stream's messages are refused by its handler
//! ([`super::status::undecodable`]).

use std::task::{Context, Poll};

use axum::http::{HeaderMap, HeaderValue, Request, Response};
use futures::future::{BoxFuture, Either};
use http_body_util::BodyExt;
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
        Either::Right(Box::pin(
            async move { Ok(rewritten(answer.await?, broker)) },
        ))
    }
}

/// `resp` with a decoding-limit refusal, in its headers (a trailers-only answer) or its
/// trailers, made `INVALID_ARGUMENT`.
fn rewritten(resp: Response<Body>, broker: Broker) -> Response<Body> {
    let (mut parts, body) = resp.into_parts();
    if rewrite(&mut parts.headers, &broker) {
        return Response::from_parts(parts, body);
    }
    let body = body.map_frame(move |frame| match frame.into_trailers() {
        Ok(mut trailers) => {
            rewrite(&mut trailers, &broker);
            http_body::Frame::trailers(trailers)
        }
        Err(frame) => frame,
    });
    Response::from_parts(parts, Body::new(body))
}

/// Rewrites `grpc-status`/`grpc-message` in `map` when they are tonic's decoding-limit
/// refusal; whether it did.
fn rewrite(map: &mut HeaderMap, broker: &Broker) -> bool {
    if map.get("grpc-status").map(HeaderValue::as_bytes) != Some(b"11") {
        return false;
    }
    // The message as tonic sent it (percent-encoded).
    let Some(status) = tonic::Status::from_header_map(map) else {
        return false;
    };
    let Some(e) = undecodable(&status, broker.max_frame_bytes()) else {
        return false;
    };
    let e = broker.reject(e);
    tracing::debug!(error = %e, "request message over the gRPC decoding limit");
    super::status::status(e).add_header(map).is_ok()
}
