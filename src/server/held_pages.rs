//! A History answer's page stays in memory after its handler returns — tonic encodes it when
//! the body is polled, and HTTP/2 holds the encoding until the client's window lets it out —
//! so its room among the pages the server holds ([`crate::broker::PageRoom`], which the
//! handler puts in the response's extensions) must go with the body: this layer moves it
//! there, and the room is given back when the body ends (or is dropped: the client went
//! away). The page is handed on in slices of [`SLICE`]: hyper's HTTP/2 writer takes a whole
//! chunk into its send buffer as soon as the stream has a byte of window, and asks for the
//! next one at once, so a page given as one chunk would reach its end (and give its room
//! back) while nearly all of it still waited for the client's window. In slices, the body
//! is asked for the next one only as the window lets the last one out.

use std::task::{Context, Poll};

use axum::http::{Request, Response};
use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyStream, StreamBody};
use hyper::body::Frame;
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

/// Bytes of a page handed to the connection at a time.
const SLICE: usize = 64 << 10;

/// `resp` with its [`PageRoom`], if any, moved from its extensions into its body, whose
/// data goes out in slices of [`SLICE`].
fn hold_in_body(mut resp: Response<Body>) -> Response<Body> {
    let Some(room) = resp.extensions_mut().remove::<PageRoom>() else {
        return resp;
    };
    let mut room = Some(room);
    resp.map(|body| {
        let frames = BodyStream::new(body)
            .flat_map(|frame| futures::stream::iter(sliced(frame)))
            .map(move |frame| {
                if frame.as_ref().map_or(true, Frame::is_trailers) {
                    room.take();
                }
                frame
            });
        Body::new(StreamBody::new(frames))
    })
}

/// A data frame as frames of at most [`SLICE`] bytes (no copy); anything else as it is.
fn sliced<E>(frame: Result<Frame<Bytes>, E>) -> Vec<Result<Frame<Bytes>, E>> {
    let mut data = match frame.map(Frame::into_data) {
        Ok(Ok(data)) => data,
        Ok(Err(other)) => return vec![Ok(other)],
        Err(e) => return vec![Err(e)],
    };
    let mut out = Vec::with_capacity(data.len().div_ceil(SLICE));
    while data.len() > SLICE {
        out.push(Ok(Frame::data(data.split_to(SLICE))));
    }
    out.push(Ok(Frame::data(data)));
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_page_goes_out_in_slices_and_the_rest_as_it_is() {
        let page = Bytes::from(vec![7u8; 3 * SLICE + 5]);
        let out = sliced::<()>(Ok(Frame::data(page.clone())));
        let lens: Vec<usize> = out
            .iter()
            .map(|f| f.as_ref().unwrap().data_ref().unwrap().len())
            .collect();
        assert_eq!(lens, [SLICE, SLICE, SLICE, 5]);
        let joined: Vec<u8> = out
            .into_iter()
            .flat_map(|f| f.unwrap().into_data().unwrap().to_vec())
            .collect();
        assert_eq!(joined, page.to_vec());
        let trailers = sliced::<()>(Ok(Frame::trailers(Default::default())));
        assert!(trailers[0].as_ref().unwrap().is_trailers());
        assert_eq!(sliced::<()>(Err(())).len(), 1);
    }
}
