//! [`ClusterWatch`]: the cluster's changes as a client follows them (`WatchCluster`), moving
//! on to another node when the one it watches goes away.

use std::time::Instant;

use super::error::{from_status, transient, Result};
use super::handle::Client;
use super::nodes::Conn;
use super::retry::{Attempts, STAYED_UP};
use crate::proto;

/// One change of the cluster: its kind (`NODE_ONLINE`, `NODE_OFFLINE`, `LEADER_CHANGED`),
/// the node it is about, and the whole cluster after it.
pub type ClusterEvent = proto::ClusterEvent;

/// The kinds of a [`ClusterEvent`].
pub use proto::cluster_event::Kind as ClusterEventKind;

/// The stream a [`ClusterWatch`] reads.
#[derive(Debug)]
struct Open {
    conn: Conn,
    stream: tonic::Streaming<ClusterEvent>,
    events: u64,
    since: Instant,
}

/// Follows the cluster's changes from one node at a time; see [`Client::watch_cluster`].
/// Holds one stream, never a queue: a watcher that reads slowly gets the latest state.
#[derive(Debug)]
pub struct ClusterWatch {
    client: Client,
    /// The stream open now: the node it comes from, and how many events it gave.
    stream: Option<Open>,
    attempts: Attempts,
}

impl Client {
    /// Follows the cluster's changes (`WatchCluster`) on the node calls go to. The first
    /// event is that node coming online, with the whole cluster; then one event per change
    /// (or the latest, for a reader that fell behind). When the node watched goes away (it
    /// stops, the network breaks), the watch moves on to another node, whose first event
    /// again carries the whole cluster, so a reader that keeps the last `cluster` it saw
    /// never misses a state. Nothing is sent until the first [`ClusterWatch::next`].
    pub fn watch_cluster(&self) -> ClusterWatch {
        ClusterWatch {
            client: self.clone(),
            stream: None,
            attempts: self.attempts(),
        }
    }
}

impl ClusterWatch {
    /// The next event. Fails only when no node answers within the retry policy, or for a
    /// refusal that another node would repeat (a token refused or expired). A node that
    /// answers neither the call nor with the first event (stopped, hung) counts as failed
    /// within the stall limit, as for every call, and the next address is watched. Safe to
    /// cancel (in a `select!`, under a timeout): the stream stays open for the next call.
    pub async fn next(&mut self) -> Result<ClusterEvent> {
        loop {
            if self.stream.is_none() {
                let conn = self.client.conn();
                let mut grpc = conn.grpc.clone();
                // A node that takes the connection and answers nothing (stopped, hung) fails
                // the attempt within the stall limit, as every other call does: the next
                // address, rather than a wait on the connection's keepalive (about 40 s).
                let opened = self
                    .attempts
                    .bounded(&conn.addr, grpc.watch_cluster(proto::ClusterRequest {}))
                    .await;
                match opened {
                    Ok(r) => {
                        self.stream = Some(Open {
                            conn,
                            stream: r.into_inner(),
                            events: 0,
                            since: Instant::now(),
                        })
                    }
                    Err(s) => self.failed(&conn, s).await?,
                }
                continue;
            }
            let Some(open) = self.stream.as_mut() else {
                continue;
            };
            let read = if open.events == 0 {
                // The snapshot every stream opens with comes at once: a node that opened the
                // stream and sends nothing stalled like one that never answered. Later
                // events come only with changes, so only the first is bounded.
                let limit = self.attempts.stall_limit();
                match tokio::time::timeout(limit, open.stream.message()).await {
                    Ok(read) => read,
                    Err(_) => {
                        if let Some(Open { conn, .. }) = self.stream.take() {
                            let nodes = self.client.nodes();
                            if let Some(e) = self.attempts.stalled(nodes, &conn, limit).await {
                                return Err(e);
                            }
                        }
                        continue;
                    }
                }
            } else {
                open.stream.message().await
            };
            if let Ok(Some(event)) = read {
                open.events += 1;
                // The first event is the snapshot every stream opens with: only a second
                // one shows the node stays up (one that accepts and drops streams would
                // otherwise be retried at once, forever).
                if open.events > 1 {
                    self.attempts.succeeded();
                }
                return Ok(event);
            }
            let Some(Open {
                conn,
                events,
                since,
                ..
            }) = self.stream.take()
            else {
                continue;
            };
            if events > 0 && since.elapsed() >= STAYED_UP {
                self.attempts.succeeded();
            }
            match read {
                Ok(_) => {
                    let nodes = self.client.nodes();
                    if let Some(e) = self
                        .attempts
                        .broken(nodes, &conn, "the cluster watch ended")
                        .await
                    {
                        return Err(e);
                    }
                }
                Err(s) => self.failed(&conn, s).await?,
            }
        }
    }

    /// After the watch on `conn` failed with `status`: `Ok` to try again (on the next node,
    /// after a backoff wait), or the error to end with.
    async fn failed(&mut self, conn: &Conn, status: tonic::Status) -> Result<()> {
        if !transient(&status) {
            return Err(from_status(status));
        }
        match self
            .attempts
            .failed(self.client.nodes(), conn, &status)
            .await
        {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}
