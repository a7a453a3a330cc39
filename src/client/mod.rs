//! The Rust client: [`Client`] publishes with retries that never duplicate (each frame
//! carries a client-made idempotency key) and subscribes with a stream that reconnects and
//! resumes exactly; it reads History pages too. It can send a token on every call and connect with TLS (mutual too).
//! Given the nodes of a cluster, it moves to the next when one fails and follows the leader
//! a follower names; asked to ([`ReadFrom::Followers`]), it spreads subscriptions over the
//! followers. No gRPC type is needed to use it.

mod coalesce;
mod compression;
mod credentials;
mod error;
mod followers;
mod handle;
mod history;
mod nodes;
mod publisher;
mod retry;
mod subscription;
mod watch;

pub use coalesce::MAX_PAYLOAD_BYTES;
pub use compression::Compression;
pub use credentials::{Bearer, ClientTls};
pub use error::{Error, Result};
pub use followers::ReadFrom;
pub use handle::{Ack, Client, ClusterInfo, TopicInfo};
pub use history::{HistoryPage, HistoryQuery};
pub use publisher::{PendingAck, Publisher};
pub use retry::{RetryPolicy, Retrying};
pub use subscription::{Frame, Subscription};
pub use watch::{ClusterEvent, ClusterEventKind, ClusterWatch};
