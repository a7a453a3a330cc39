//! `--max-connections`: at most N client connections are served at once.
//!
//! The listener's stream of accepted connections is wrapped so that a connection is only
//! accepted once a permit of a semaphore of N is free (mini-redis's pattern). The permit
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

/// Accepts from `incoming` only while fewer than `max` accepted connections are open;
/// `open` counts them. A failed accept is passed on after a short pause.
pub fn limit<S, IO, E>(
    incoming: S,
    max: usize,
    open: Gauge,
) -> impl Stream<Item = Result<Limited<IO>, E>>
where
    S: Stream<Item = Result<IO, E>> + Unpin,
    E: std::fmt::Display,
{
    let max = max.clamp(1, Semaphore::MAX_PERMITS);
    let permits = Arc::new(Semaphore::new(max));
    futures::stream::unfold(
        (incoming, permits, open),
        move |(mut incoming, permits, open)| async move {
            let permit = match Arc::clone(&permits).try_acquire_owned() {
                Ok(p) => p,
                Err(_) => {
                    warn!(
                        max_connections = max,
                        "connection limit reached: new connections wait until one closes"
                    );
                    // The semaphore is never closed, so this only waits.
                    Arc::clone(&permits).acquire_owned().await.ok()?
                }
            };
            let next = incoming.next().await?;
            if let Err(e) = &next {
                // A failed accept (a connection reset before it was taken, too many open
                // files) ends that connection, not the listener; a pause, because the
                // server's accept loop asks again at once, and a connection left in the
                // kernel's queue (out of descriptors) would fail again at once: a busy loop.
                debug!(error = %e, "accept failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
            }
            let item = next.map(|io| {
                open.inc();
                Limited {
                    io,
                    _permit: permit,
                    _open: OpenConnection(open.clone()),
                }
            });
            Some((item, (incoming, permits, open)))
        },
    )
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
