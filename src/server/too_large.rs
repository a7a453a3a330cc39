//! A unary request whose message tonic cannot decode — over the gRPC decoding limit
//! (`max(--max-frame-bytes + 1 MiB, 8 MiB)`, as sent or once decompressed), not protobuf,
//! or not the compression it names — is refused by tonic itself, before any handler runs,
//! in a trailers-only answer (`OUT_OF_RANGE`, `RESOURCE_EXHAUSTED` or `INTERNAL` in the
//! headers). API.md gives a payload over `--max-frame-bytes`, and bad input, the broker's
//! `INVALID_ARGUMENT`: this layer rewrites that answer of Publish and Broadcast (the calls
//! whose messages carry a payload), and of the other calls of the service (a topic name
//! that is not UTF-8 is bad input there too), and counts it in `rejected_requests_total`.
//! A publish stream's messages are refused by its handler ([`super::status::undecodable`]).

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

/// The calls of the public service; all but [`PUBLISH_STREAM`] are looked into.
const SERVICE: &str = "/framecast.v1.Broadcast/";
/// The stream whose messages its handler refuses one by one.
const PUBLISH_STREAM: &str = "/framecast.v1.Broadcast/PublishStream";

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

/// The service: answers of the public service's calls looked into (not PublishStream's);
/// others passed as they are.
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
        let path = req.uri().path();
        if !path.starts_with(SERVICE) || path == PUBLISH_STREAM {
            return Either::Left(self.inner.call(req));
        }
        let payload = PAYLOAD_CALLS.contains(&path);
        let broker = self.broker.clone();
        let answer = self.inner.call(req);
        Either::Right(Box::pin(async move {
            let mut resp = answer.await?;
            rewrite(resp.headers_mut(), &broker, payload);
            Ok(resp)
        }))
    }
}

/// Rewrites `grpc-status`/`grpc-message` in `map` (a trailers-only answer's headers; the
/// body is left untouched) when they are tonic's refusal of an undecodable message;
/// `payload`: the call's message carries one (too large is then the payload's fault).
fn rewrite(map: &mut HeaderMap, broker: &Broker, payload: bool) {
    let status = map.get("grpc-status").map(HeaderValue::as_bytes);
    if !matches!(status, Some(b"8" | b"11" | b"13")) {
        return;
    }
    // The message as tonic sent it (percent-encoded).
    let Some(status) = tonic::Status::from_header_map(map) else {
        return;
    };
    let Some(mut e) = undecodable(&status, broker.max_frame_bytes()) else {
        return;
    };
    if !payload {
        e = crate::broker::Error::InvalidArgument(format!(
            "malformed request: {}",
            status.message()
        ));
    }
    let e = broker.reject(e);
    tracing::debug!(error = %e, "request message tonic could not decode");
    // ASCII text from tonic's own message: encodable, so the refusal is always written.
    let _ = super::status::status(e).add_header(map);
}
