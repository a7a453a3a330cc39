//! `--max-connections`: at most N client connections are served at once, on both doors
//! together.
//!
//! Each listener's stream of accepted connections is wrapped so that a connection is only
//! accepted once a permit of one semaphore of N, shared by the listeners, is free
//! (mini-redis's pattern), and is served once it holds one (when both listeners accept at
//! the last free permit, one connection waits, accepted, for the next). The permit
//! travels with the connection and is given back when the server drops it, that is when
//! the connection closes. Beyond N, new connections wait in the kernel's accept queue
//! (the client sees its handshake hang, or time out) until one closes.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::transport::server::Connected;
use tracing::{debug, warn};

use crate::broker::metrics::Gauge;

/// A connection holding one of the `--max-connections` permits while it is open, and
/// counted in `connections{listener}`.
#[derive(Debug)]
pub struct Limited<IO> {
    io: IO,
    _permit: OwnedSemaphorePermit,
    _open: OpenConnection,
}

/// One count of the `connections{listener}` gauge, taken back when dropped.
#[derive(Debug)]
struct OpenConnection(Gauge);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// How long a listener waits after a failed accept before it accepts again.
const ACCEPT_ERROR_PAUSE: std::time::Duration = std::time::Duration::from_millis(5);

/// The `--max-connections` permits, one per open client connection, shared by every
/// listener of the server.
#[derive(Debug, Clone)]
pub struct Permits {
    semaphore: Arc<Semaphore>,
    max: usize,
}

impl Permits {
    /// `max` permits (at least one).
    pub fn new(max: usize) -> Self {
        let max = max.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            semaphore: Arc::new(Semaphore::new(max)),
            max,
        }
    }
}

/// Accepts from `incoming` only while a connection permit of `permits` is free; each
/// accepted connection holds one while it is open, and `open` counts them. A failed accept
/// is passed on after a short pause.
pub fn limit<S, IO, E>(
    incoming: S,
    permits: &Permits,
    open: Gauge,
) -> impl Stream<Item = Result<Limited<IO>, E>>
where
    S: Stream<Item = Result<IO, E>> + Unpin,
    E: std::fmt::Display,
{
    let max = permits.max;
    let permits = Arc::clone(&permits.semaphore);
    futures::stream::unfold(
        (incoming, permits, open),
        move |(mut incoming, permits, open)| async move {
            // Accept only once a permit is free (beyond that, connections wait in the
            // kernel's queue), without holding it while no connection comes: the other
            // listener shares the permits.
            drop(permit_of(&permits, max).await?);
            let next = incoming.next().await?;
            let item = match next {
                Ok(io) => {
                    // The other listener may have taken the free permit meanwhile: then
                    // this one connection waits, accepted but not served, until one closes.
                    let permit = permit_of(&permits, max).await?;
                    open.inc();
                    Ok(Limited {
                        io,
                        _permit: permit,
                        _open: OpenConnection(open.clone()),
                    })
                }
                Err(e) => {
                    // A failed accept (a connection reset before it was taken, too many
                    // open files) ends that connection, not the listener; a pause, because
                    // the server's accept loop asks again at once, and a connection left in
                    // the kernel's queue (out of descriptors) would fail again at once: a
                    // busy loop.
                    debug!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    Err(e)
                }
            };
            Some((item, (incoming, permits, open)))
        },
    )
}

/// A permit of `permits`, at once or (logged) once a connection closes; `None` only if the
/// semaphore were closed, which it never is.
async fn permit_of(permits: &Arc<Semaphore>, max: usize) -> Option<OwnedSemaphorePermit> {
    match Arc::clone(permits).try_acquire_owned() {
        Ok(p) => Some(p),
        Err(_) => {
            warn!(
                max_connections = max,
                "connection limit reached: new connections wait until one closes"
            );
            Arc::clone(permits).acquire_owned().await.ok()
        }
    }
}

impl<IO: Connected> Connected for Limited<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Limited<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Limited<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
