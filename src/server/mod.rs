//! The gRPC server: topics, the `Broadcast` service, subscriptions and shutdown.

pub mod config;
mod error;
pub mod last_fsync;
pub mod maintenance;
mod repair;
mod run;
pub mod service;
pub mod shutdown;
mod subscription;
pub mod topics;

pub use config::ServerConfig;
pub use error::{Error, Result};
pub use repair::{repair_offline, RepairOutcome};
pub use run::{compact_offline, run, DataDirLock};
pub use service::{BroadcastService, EPOCH_HEADER, SNAPSHOT_OFFSET_HEADER};
pub use subscription::{FrameStream, Subscription};
pub use topics::{Topic, TopicMeta, Topics};
