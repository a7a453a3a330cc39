//! The Rust client: [`Client`] publishes with retries that never duplicate (each frame
//! carries a client-made idempotency key) and subscribes with a stream that reconnects and
//! resumes exactly. No gRPC type is needed to use it.

mod coalesce;
mod compression;
mod error;
mod handle;
mod publisher;
mod retry;
mod subscription;

pub use compression::Compression;
pub use error::{Error, Result};
pub use handle::{Ack, Client, TopicInfo};
pub use publisher::{PendingAck, Publisher};
pub use retry::{RetryPolicy, Retrying};
pub use subscription::{Frame, Subscription};
