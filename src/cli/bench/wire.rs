//! Bytes on the wire: a TCP connector for tonic that counts every byte the bench's
//! connections write and read, TLS-free HTTP/2 framing, headers and gRPC message prefixes
//! included. This is what compression saves; the server's `/proc/<pid>/io` (disk) and the
//! loopback counters (shared with every other process) are not.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tonic::transport::Uri;

/// Bytes written and read by the bench's connections, all of them together.
#[derive(Debug, Default)]
pub struct WireBytes {
    sent: AtomicU64,
    received: AtomicU64,
}

impl WireBytes {
    /// Bytes the bench wrote to its sockets (requests: publishes, subscribe calls).
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Bytes the bench read from its sockets (responses: acks, delivered frames).
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
}

/// Connects plain TCP (`TCP_NODELAY` on) and counts the bytes into one [`WireBytes`].
#[derive(Debug, Clone)]
pub struct CountingConnector {
    wire: Arc<WireBytes>,
}

impl CountingConnector {
    /// A connector counting into `wire`.
    pub fn new(wire: Arc<WireBytes>) -> CountingConnector {
        CountingConnector { wire }
    }
}

impl tower_service::Service<Uri> for CountingConnector {
    type Response = TokioIo<Counted>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<TokioIo<Counted>>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let wire = Arc::clone(&self.wire);
        Box::pin(async move {
            let host = uri
                .host()
                .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_string())
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no host"))?;
            let port = uri.port_u16().unwrap_or(80);
            let stream = TcpStream::connect((host.as_str(), port)).await?;
            stream.set_nodelay(true)?;
            Ok(TokioIo::new(Counted {
                inner: stream,
                wire,
            }))
        })
    }
}

/// A TCP stream whose reads and writes are counted.
#[derive(Debug)]
pub struct Counted {
    inner: TcpStream,
    wire: Arc<WireBytes>,
}

impl Counted {
    /// Connects plain TCP to `host:port` (`TCP_NODELAY` on), counting into `wire`: the
    /// HTTP/1.1 and WebSocket subscribers' connections, counted like the gRPC ones.
    pub async fn connect(host: &str, port: u16, wire: Arc<WireBytes>) -> io::Result<Counted> {
        let stream = TcpStream::connect((host, port)).await?;
        stream.set_nodelay(true)?;
        Ok(Counted {
            inner: stream,
            wire,
        })
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        self.wire.received.fetch_add(n, Ordering::Relaxed);
        r
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            self.wire.sent.fetch_add(*n as u64, Ordering::Relaxed);
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = &r {
            self.wire.sent.fetch_add(*n as u64, Ordering::Relaxed);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
