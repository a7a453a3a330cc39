//! Checks on a gRPC call's head, answered before tonic reads, decompresses or decodes its
//! message: a refused call costs the server its headers only.
//!
//! - [`Gate::tokens`] (with authentication on): a call to the `Broadcast` service without a
//!   valid token is refused `UNAUTHENTICATED`. The handlers check the token too, but only
//!   once tonic has decoded the request: an anonymous caller could otherwise make the
//!   server inflate a few hundred gzip bytes into a message of up to the decoding limit
//!   (8 MiB and more) per call, on every stream of every connection. The check is the
//!   broker's own [`Broker::authenticate`], which the handler then repeats (a cache hit);
//!   the refusal is counted once, there.
//! - [`Gate::origins`] (with authentication off): a gRPC-Web call from a web page is served
//!   only when the HTTP door would serve that page ([`Origins::admit`]): a page at a DNS
//!   name rebound to this server calls as its own origin, which no CORS preflight stops.

use std::sync::Arc;
use std::task::{Context, Poll};

use axum::http::{HeaderMap, Request, Response, Uri};
use futures::future::{ready, Either, Ready};
use tonic::body::Body;

use super::status::status;
use crate::broker::{Broker, Error};
use crate::http::origin::Origins;

/// The calls the token check covers: every method of the `Broadcast` service (health and
/// reflection stay open, as `/healthz` does).
const CHECKED: &str = "/framecast.v1.Broadcast/";

/// What a gate checks on a call's head.
type Check = Arc<dyn Fn(&HeaderMap, &Uri) -> Result<(), Error> + Send + Sync>;

/// The layer: [`Gated`] around the gRPC routes.
#[derive(Clone)]
pub struct Gate {
    check: Check,
}

impl Gate {
    /// Refuses a `Broadcast` call without a valid token, checked with `broker`; install it
    /// only with authentication on.
    pub fn tokens(broker: Broker) -> Self {
        Self {
            check: Arc::new(move |headers, uri| {
                if !uri.path().starts_with(CHECKED) {
                    return Ok(());
                }
                let header = headers.get("authorization").and_then(|v| v.to_str().ok());
                broker.authenticate(header).map(|_| ())
            }),
        }
    }

    /// Refuses a call from a web page the HTTP door would refuse, the server taking calls
    /// without a token; install it only with authentication off.
    pub fn origins(origins: Origins) -> Self {
        Self {
            check: Arc::new(move |headers, uri| origins.admit(headers, uri, true)),
        }
    }
}

impl<S> tower::Layer<S> for Gate {
    type Service = Gated<S>;

    fn layer(&self, inner: S) -> Gated<S> {
        Gated {
            inner,
            check: Arc::clone(&self.check),
        }
    }
}

/// The service: a call the check refuses answered at once, others passed on.
#[derive(Clone)]
pub struct Gated<S> {
    inner: S,
    check: Check,
}

impl<S, B> tower::Service<Request<B>> for Gated<S>
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
        if let Err(e) = (self.check)(req.headers(), req.uri()) {
            return Either::Right(ready(Ok(status(e).into_http())));
        }
        Either::Left(self.inner.call(req))
    }
}
