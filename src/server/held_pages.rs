//! A History answer's page stays in memory after its handler returns — tonic encodes it when
//! the body is polled, and HTTP/2 holds the encoding until the client's window lets it out —
//! so its room among the pages the server holds ([`crate::broker::PageRoom`], which the
//! handler puts in the response's extensions) must go with the body: this layer moves it
//! there, and the room is given back when the body ends (its trailers are asked for only
//! once the page was written) or is dropped (the client went away).

use std::task::{Context, Poll};

use axum::http::{Request, Response};
use http_body_util::BodyExt;
use tonic::body::Body;

use crate::broker::PageRoom;

/// The layer: [`HeldPages`] around the gRPC routes.
#[derive(Debug, Clone, Copy, Default)]
pub struct HeldPagesLayer;

impl<S> tower::Layer<S> for HeldPagesLayer {
    type Service = HeldPages<S>;

    fn layer(&self, inner: S) -> HeldPages<S> {
        HeldPages { inner }
    }
}

/// The service: an answer that carries a [`PageRoom`] holds it in its body.
#[derive(Debug, Clone)]
pub struct HeldPages<S> {
    inner: S,
}

impl<S, B> tower::Service<Request<B>> for HeldPages<S>
where
    S: tower::Service<Request<B>, Response = Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = futures::future::MapOk<S::Future, fn(Response<Body>) -> Response<Body>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        use futures::TryFutureExt;
        self.inner.call(req).map_ok(hold_in_body)
    }
}

/// `resp` with its [`PageRoom`], if any, moved from its extensions into its body.
fn hold_in_body(mut resp: Response<Body>) -> Response<Body> {
    let Some(room) = resp.extensions_mut().remove::<PageRoom>() else {
        return resp;
    };
    let mut room = Some(room);
    resp.map(|body| {
        Body::new(body.map_frame(move |frame| {
            if frame.is_trailers() {
                room.take();
            }
            frame
        }))
    })
}
