//! Accepted connections as axum's [`Listener`]: the listener's stream of connections
//! (already limited by `--max-connections` and counted in `connections{listener="http"}`,
//! and, with TLS, already through their handshake) handed to axum one by one.

use std::io;
use std::net::SocketAddr;

use axum::serve::Listener;
use futures::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::debug;

/// A stream of accepted connections that axum serves.
pub struct Incoming<S> {
    connections: S,
    local: SocketAddr,
}

impl<S> Incoming<S> {
    /// Serves the connections of `connections`, accepted on `local`.
    pub fn new(connections: S, local: SocketAddr) -> Incoming<S> {
        Incoming { connections, local }
    }
}

impl<S, IO> Listener for Incoming<S>
where
    S: Stream<Item = io::Result<IO>> + Unpin + Send + 'static,
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Io = IO;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (IO, SocketAddr) {
        loop {
            match self.connections.next().await {
                Some(Ok(io)) => return (io, self.local),
                // A failed accept ends that connection, not the listener (the connection
                // limit paused after it: `connections::limit`).
                Some(Err(e)) => debug!(error = %e, "http accept failed"),
                // The stream never ends while the listener is open; if it does, no more
                // connections come.
                None => std::future::pending::<()>().await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}
