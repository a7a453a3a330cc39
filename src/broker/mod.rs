//! The broker: the one transport-neutral core behind every front door (gRPC, HTTP, SSE,
//! WebSocket, replication). Validation, authorization and metrics live here, once; a door
//! translates its protocol into these calls and their answers back, and nothing else.
//!
//! - `core`: [`Broker`], the operations (publish, subscribe, topics) every door calls.
//! - `history`: History pages over a fixed snapshot, forward and newest first, and the
//!   budget of pages held until their clients read them.
//! - `cluster_view`: the cluster as this node sees it, for Cluster and WatchCluster.
//! - `broadcast`: one frame to many topics or patterns, checked whole before any write.
//! - `cursor`: cursor tokens, the opaque resume points of SSE, WebSocket and History.
//! - `topics`: the topic registry, each topic's metadata and log, and the name rules.
//! - `terms`: a topic's term history, and where a follower's copy diverges from a leader's.
//! - `doubt`: a cluster copy whose recovery cut what may have been acknowledged, kept from
//!   leading until settled.
//! - `subscription`: the replay→live cursor over one topic's log.
//! - `frame_cache`: live frames encoded once per topic, shared by every subscriber.
//! - `shutdown`: the one shutdown signal.
//! - `last_fsync`: the fsync policy the data was last written under (recovery's epoch rule).
//! - `error`: the one error enum and its status code.
//! - `metrics`: the metrics registry, its pre-resolved per-topic handles for the hot path,
//!   and the `/metrics` exposition.
//! - `process`: the standard `process_*` metrics, read from `/proc` at scrape time.
//! - `pattern`: topic patterns (`a.*`, `a.>`, `>`), compiled once and matched without
//!   allocating.
//! - `principal`: who is calling and what they may publish, subscribe to and administer.
//! - `token`: JWT verification (HS256, RS256, ES256) into a principal, its cache, and
//!   minting HS256 tokens.

pub mod broadcast;
pub mod cluster_view;
pub mod core;
pub mod cursor;
pub mod doubt;
pub mod error;
pub mod frame_cache;
pub mod history;
pub mod last_fsync;
pub mod metrics;
pub mod pattern;
pub mod principal;
pub mod process;
pub mod shutdown;
pub mod subscription;
pub mod terms;
pub mod token;
pub mod topics;

pub use self::core::{Broker, Opened, Pending, PublishGate};
pub use cursor::{CursorToken, CursorWriter};
pub use error::{Error, Result};
pub use history::{Page, PageRoom};
pub use subscription::{StartAt, Subscription};
pub use topics::{Cause, Topic, TopicMeta, Topics};
