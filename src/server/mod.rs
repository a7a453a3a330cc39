//! The gRPC server: topics, the `Broadcast` service, subscriptions and shutdown.

pub mod config;
mod connections;
mod error;
pub mod frame_cache;
pub mod last_fsync;
pub mod maintenance;
mod repair;
mod run;
pub mod service;
pub mod shutdown;
mod subscription;
pub mod tasks;
pub mod topics;

pub use crate::proto::{EPOCH_HEADER, SNAPSHOT_OFFSET_HEADER};
pub use config::{Http2Limits, ServerConfig};
pub use error::{Error, Result};
pub use repair::{repair_offline, RepairOutcome};
pub use run::{compact_offline, run, DataDirLock};
pub use service::BroadcastService;
pub use subscription::{FrameStream, Subscription};
pub use topics::{Topic, TopicMeta, Topics};
