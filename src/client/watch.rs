//! [`ClusterWatch`]: the cluster's changes as a client follows them (`WatchCluster`), moving
//! on to another node when the one it watches goes away.

use super::error::{from_status, transient, Result};
use super::handle::Client;
use super::nodes::Conn;
use super::retry::Attempts;
use crate::proto;

/// One change of the cluster: its kind (`NODE_ONLINE`, `NODE_OFFLINE`, `LEADER_CHANGED`),
/// the node it is about, and the whole cluster after it.
pub type ClusterEvent = proto::ClusterEvent;

/// The kinds of a [`ClusterEvent`].
pub use proto::cluster_event::Kind as ClusterEventKind;

/// Follows the cluster's changes from one node at a time; see [`Client::watch_cluster`].
/// Holds one stream, never a queue: a watcher that reads slowly gets the latest state.
#[derive(Debug)]
pub struct ClusterWatch {
    client: Client,
    /// The stream open now, and the node it comes from.
    stream: Option<(Conn, tonic::Streaming<ClusterEvent>)>,
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
    /// refusal that another node would repeat (a token refused or expired).
    pub async fn next(&mut self) -> Result<ClusterEvent> {
        loop {
            let (conn, mut stream) = match self.stream.take() {
                Some(open) => open,
                None => {
                    let conn = self.client.conn();
                    let opened = conn
                        .grpc
                        .clone()
                        .watch_cluster(proto::ClusterRequest {})
                        .await;
                    match opened {
                        Ok(r) => (conn, r.into_inner()),
                        Err(s) => {
                            self.failed(&conn, s).await?;
                            continue;
                        }
                    }
                }
            };
            match stream.message().await {
                Ok(Some(event)) => {
                    self.attempts.succeeded();
                    self.stream = Some((conn, stream));
                    return Ok(event);
                }
                Ok(None) => {
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
