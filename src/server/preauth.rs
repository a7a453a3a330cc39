//! With authentication on, a call to the `Broadcast` service without a valid token is
//! refused (`UNAUTHENTICATED`) before tonic reads, decompresses or decodes its message. The
//! handlers check the token too, but only once tonic has decoded the request: an anonymous
//! caller could otherwise make the server inflate a few hundred gzip bytes into a message
//! of up to the decoding limit (8 MiB and more) per call, on every stream of every
//! connection. The check is the broker's own [`Broker::authenticate`], which the handler
//! then repeats (a cache hit); the refusal is counted once, there.

use std::task::{Context, Poll};

use axum::http::{Request, Response};
use futures::future::{ready, Either, Ready};
use tonic::body::Body;

use super::status::status;
use crate::broker::Broker;

/// The calls checked: every method of the `Broadcast` service (health and reflection stay
/// open, as `/healthz` does).
const CHECKED: &str = "/framecast.v1.Broadcast/";

/// The layer: [`PreAuth`] around the gRPC routes; install it only with authentication on.
#[derive(Clone)]
pub struct PreAuthLayer {
    broker: Broker,
}

impl PreAuthLayer {
    /// Checks tokens with `broker`.
    pub fn new(broker: Broker) -> Self {
        Self { broker }
    }
}

impl<S> tower::Layer<S> for PreAuthLayer {
    type Service = PreAuth<S>;

    fn layer(&self, inner: S) -> PreAuth<S> {
        PreAuth {
            inner,
            broker: self.broker.clone(),
        }
    }
}

/// The service: a `Broadcast` call without a valid token answered at once, others passed on.
#[derive(Clone)]
pub struct PreAuth<S> {
    inner: S,
    broker: Broker,
}

impl<S, B> tower::Service<Request<B>> for PreAuth<S>
where
    S: tower::Service<Request<B>, Response = Response<Body>>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Either<S::Future, Ready<Result<Response<Body>, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        if req.uri().path().starts_with(CHECKED) {
            let header = req
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok());
            if let Err(e) = self.broker.authenticate(header) {
                return Either::Right(ready(Ok(status(e).into_http())));
            }
        }
        Either::Left(self.inner.call(req))
    }
}
