//! The server process: its settings, the gRPC door onto the [`crate::broker`], TLS for the
//! listeners, the background maintenance, and startup, serving and the drain at shutdown.

pub mod config;
mod connections;
mod gate;
mod held_pages;
pub mod maintenance;
pub mod readiness;
mod repair;
mod run;
pub mod service;
pub(crate) mod status;
pub mod tls;
mod too_large;

pub use crate::broker::{last_fsync, shutdown, topics, Error, Result, Topic, TopicMeta, Topics};
pub use crate::proto::{EPOCH_HEADER, SNAPSHOT_OFFSET_HEADER};
pub use config::{Http2Limits, ServerConfig};
pub use repair::{repair_offline, RepairOutcome};
pub use run::{compact_offline, run, DataDirLock};
pub use service::BroadcastService;
pub use tls::TlsFiles;
