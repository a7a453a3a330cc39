//! A small typed async etcd v3 client for exactly what the cluster needs, over the vendored
//! protos (`proto/etcd/`): leases and the [`LeaseKeeper`] that renews one, KV (put, get,
//! prefix listing, delete), prefix watches, the election service (campaign, proclaim,
//! leader, observe, resign) and the write fenced on leadership ([`Etcd::put_if_leader`]).
//!
//! Failover between endpoints: every call goes to the current endpoint; when it is
//! unreachable (`UNAVAILABLE`) or does not answer in time, the next endpoint becomes the
//! current one, and a unary call is retried there (at most once per endpoint). Every write
//! here is safe to apply twice (a put of the same value, a fenced put, a delete), except
//! that a retried [`Etcd::grant_lease`] may leave an unused lease behind, which expires on
//! its own.
//!
//! Times are [`tokio::time::Instant`]s, so that a caller can `sleep_until` them.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::Streaming;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
use tracing::{debug, info, warn};

use super::etcd_proto::etcdserverpb::{
    compare, kv_client::KvClient, lease_client::LeaseClient, request_op, watch_client::WatchClient,
    watch_request, Compare, DeleteRangeRequest, LeaseGrantRequest, LeaseKeepAliveRequest,
    LeaseKeepAliveResponse, LeaseRevokeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
    WatchCreateRequest, WatchRequest, WatchResponse,
};
use super::etcd_proto::mvccpb::{event::EventType, KeyValue};
use super::etcd_proto::v3electionpb::{
    election_client::ElectionClient, CampaignRequest, LeaderRequest, LeaderResponse,
    ProclaimRequest, ResignRequest,
};
use crate::client::ClientTls;

/// HTTP/2 keep-alive ping interval on every etcd connection, so that a watch, an observe or
/// a campaign on a connection that silently died (etcd paused, network cut) ends with an
/// error instead of hanging. Above etcd's `--grpc-keepalive-min-time` (5 s by default):
/// etcd closes connections that ping more often (`too_many_pings`).
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(6);

/// Pause between two attempts of the lease keeper to reopen its stream.
const KEEPER_RETRY: Duration = Duration::from_millis(200);

/// The renewal period never goes below this, whatever the TTL.
const MIN_RENEW_PERIOD: Duration = Duration::from_millis(100);

/// What etcd answers, in the message of its error, to an operation on a lease it does not
/// hold (expired or revoked).
const LEASE_NOT_FOUND: &str = "requested lease not found";
/// The message of the election service's error when the caller no longer leads.
const ELECTION_NOT_LEADER: &str = "election: not leader";
/// The message of the election service's error when an election has no leader.
const ELECTION_NO_LEADER: &str = "election: no leader";

/// The errors of the etcd layer.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// `connect` was given an empty endpoint list.
    #[error("no etcd endpoint given")]
    NoEndpoints,
    /// An endpoint is not a valid URI.
    #[error("invalid etcd endpoint {endpoint:?}: {source}")]
    InvalidEndpoint {
        /// The endpoint as given.
        endpoint: String,
        /// Why it is not valid.
        #[source]
        source: tonic::transport::Error,
    },
    /// The TLS settings for an endpoint are not usable (a file without a certificate, say).
    #[error("TLS to etcd endpoint {endpoint:?}: {reason}")]
    InvalidTls {
        /// The endpoint as given.
        endpoint: String,
        /// What is wrong.
        reason: String,
    },
    /// etcd did not answer in time (on any endpoint).
    #[error("etcd {op} timed out after {timeout:?}")]
    Timeout {
        /// The operation.
        op: &'static str,
        /// The per-request timeout.
        timeout: Duration,
    },
    /// etcd, or the connection to it, answered with an error.
    #[error("etcd {op} failed: {code:?}: {message}")]
    Rpc {
        /// The operation.
        op: &'static str,
        /// The gRPC status code.
        code: Code,
        /// The status message.
        message: String,
    },
    /// The lease is gone: expired, or revoked.
    #[error("etcd lease {lease:#x} is gone (expired or revoked)")]
    LeaseNotFound {
        /// The lease.
        lease: i64,
    },
    /// The caller no longer leads the election (its leader key was deleted or replaced).
    #[error("not the leader of election {name:?}")]
    NotLeader {
        /// The election.
        name: String,
    },
    /// etcd canceled a watch, e.g. because its start revision was compacted.
    #[error("etcd canceled the watch (compact revision {compact_revision}): {reason}")]
    WatchCanceled {
        /// etcd's reason.
        reason: String,
        /// Set when the start revision was compacted: the oldest revision still watchable.
        compact_revision: i64,
    },
    /// etcd ended a stream that only ends on error.
    #[error("etcd closed the {op} stream")]
    StreamClosed {
        /// The operation.
        op: &'static str,
    },
    /// etcd's answer lacked a field it always sets.
    #[error("etcd answered {op} without its {field}")]
    MissingField {
        /// The operation.
        op: &'static str,
        /// The missing field.
        field: &'static str,
    },
}

/// The result type of the etcd layer.
pub type Result<T> = std::result::Result<T, EtcdError>;

/// Converts a gRPC status into the layer's error: the one place that reads etcd's messages.
/// A failed connection says little alone ("transport error"): its causes (a refused
/// connection, a TLS handshake error) are appended.
fn rpc_error(op: &'static str, status: &Status) -> EtcdError {
    let mut message = status.message().to_owned();
    let mut cause = std::error::Error::source(status);
    while let Some(e) = cause {
        let said = e.to_string();
        if !message.contains(&said) {
            message = format!("{message}: {said}");
        }
        cause = e.source();
    }
    EtcdError::Rpc {
        op,
        code: status.code(),
        message,
    }
}

/// A key and its value as stored in etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    /// The key (etcd keys are bytes; framecast's are UTF-8, others are read lossily).
    pub key: String,
    /// The value.
    pub value: Vec<u8>,
    /// The revision that created the key (for a leader key: the term).
    pub create_revision: i64,
    /// The revision of the last change of the key.
    pub mod_revision: i64,
    /// The lease the key lives under, if any.
    pub lease: Option<i64>,
}

impl From<KeyValue> for Kv {
    fn from(kv: KeyValue) -> Self {
        Kv {
            key: String::from_utf8_lossy(&kv.key).into_owned(),
            value: kv.value,
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
            lease: (kv.lease != 0).then_some(kv.lease),
        }
    }
}

/// A change under a watched prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// A key was created or changed: its new state.
    Put(Kv),
    /// A key was deleted (explicitly, or with its lease).
    Delete {
        /// The deleted key.
        key: String,
        /// The revision of the deletion.
        mod_revision: i64,
    },
}

/// A won election: what proves leadership to etcd. `rev`, the creation revision of the
/// leader key, is the **term**; it only grows from one leader to the next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderKey {
    /// The election.
    pub name: String,
    /// The leader key (`<name>/<lease in hex>`); leadership ends when it is deleted.
    pub key: String,
    /// The creation revision of the leader key: the term.
    pub rev: i64,
    /// The lease the leader key lives under.
    pub lease: i64,
}

impl LeaderKey {
    fn to_proto(&self) -> super::etcd_proto::v3electionpb::LeaderKey {
        super::etcd_proto::v3electionpb::LeaderKey {
            name: self.name.as_bytes().to_vec(),
            key: self.key.as_bytes().to_vec(),
            rev: self.rev,
            lease: self.lease,
        }
    }
}

/// What a [`LeaseKeeper`] knows of its lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseState {
    /// When the last renewal that etcd confirmed was *sent*: etcd renewed the lease after
    /// this instant, so it holds at least until `last_renewed + ttl`.
    pub last_renewed: Instant,
    /// The lease's TTL, as etcd answered it (etcd may raise a requested TTL to its minimum).
    pub ttl: Duration,
    /// etcd answered that the lease is gone (expired or revoked). Final: the keeper stops.
    pub lost: bool,
}

impl LeaseState {
    /// Until when the lease surely holds (unless revoked explicitly): `last_renewed + ttl`,
    /// or `last_renewed`, a past instant, once the lease is lost.
    pub fn valid_until(&self) -> Instant {
        if self.lost {
            self.last_renewed
        } else {
            self.last_renewed + self.ttl
        }
    }
}

/// Keeps a lease alive from a background task, renewing it every third of its TTL over
/// etcd's keep-alive stream and reopening the stream after errors. Dropping the keeper stops
/// the renewals (the lease then expires after its TTL); it does not revoke the lease: call
/// [`Etcd::revoke`] for that.
#[derive(Debug)]
pub struct LeaseKeeper {
    lease: i64,
    state: watch::Receiver<LeaseState>,
    task: JoinHandle<()>,
}

impl LeaseKeeper {
    /// The lease kept alive.
    pub fn lease(&self) -> i64 {
        self.lease
    }

    /// The lease's state, updated at every confirmed renewal and when the lease is lost.
    pub fn state(&self) -> watch::Receiver<LeaseState> {
        self.state.clone()
    }

    /// Until when the lease surely holds: see [`LeaseState::valid_until`]. A leader must
    /// stop acting as one by this instant unless a renewal pushes it further.
    pub fn valid_until(&self) -> Instant {
        self.state.borrow().valid_until()
    }
}

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One open keep-alive stream of a lease, with the send times of the renewals not yet
/// answered (etcd answers them in order).
struct KeepAliveStream {
    lease: i64,
    /// The endpoint the stream runs on, to fail over from when it breaks.
    index: usize,
    requests: mpsc::Sender<LeaseKeepAliveRequest>,
    responses: Streaming<LeaseKeepAliveResponse>,
    unanswered: VecDeque<Instant>,
}

/// How one keep-alive stream ended.
enum StreamEnd {
    /// etcd answered TTL <= 0: the lease is gone.
    Lost,
    /// The stream broke or stalled; reopen it.
    Broken(String),
}

/// A stream of etcd events that never ends quietly: when etcd goes away or cancels it, it
/// yields one error and then ends, so that the caller can list again and watch from the
/// listing's revision.
pub struct EventStream<T> {
    inner: Pin<Box<dyn Stream<Item = Result<T>> + Send>>,
}

/// The [`WatchEvent`]s under a prefix, from [`Etcd::watch_prefix`].
pub type WatchStream = EventStream<WatchEvent>;

/// The successive leaders of an election, from [`Etcd::observe`]: the current leader's kv
/// first (once there is one), then one item per new leader or proclaimed value.
pub type ObserveStream = EventStream<Kv>;

impl<T> Stream for EventStream<T> {
    type Item = Result<T>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

impl<T> std::fmt::Debug for EventStream<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStream").finish_non_exhaustive()
    }
}

/// A connection to an etcd cluster (one or several endpoints). Cheap to clone: clones share
/// the connections.
#[derive(Clone, Debug)]
pub struct Etcd {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// One lazily connected channel per endpoint, with the endpoint for the logs.
    channels: Vec<(String, Channel)>,
    /// The index of the endpoint calls go to.
    current: AtomicUsize,
    /// The per-request timeout (and the connect timeout).
    timeout: Duration,
}

impl Etcd {
    /// Connects to etcd at `endpoints` (e.g. `http://127.0.0.1:2379`), failing over between
    /// them. `timeout` bounds connecting and every unary request (not [`Etcd::campaign`],
    /// which waits for as long as it takes to win). Checks with one read that an endpoint
    /// answers, so that a wrong address fails here and not at the first use.
    pub async fn connect(endpoints: &[String], timeout: Duration) -> Result<Etcd> {
        Etcd::connect_with(endpoints, None, timeout).await
    }

    /// [`Etcd::connect`], over TLS when `tls` is given: every endpoint is reached at
    /// `https://` (whatever its URL says), its certificate checked against `tls`'s CA, and
    /// `tls`'s certificate presented when etcd asks for one (`--client-cert-auth`).
    pub async fn connect_with(
        endpoints: &[String],
        tls: Option<&ClientTls>,
        timeout: Duration,
    ) -> Result<Etcd> {
        if endpoints.is_empty() {
            return Err(EtcdError::NoEndpoints);
        }
        let mut channels = Vec::with_capacity(endpoints.len());
        for endpoint in endpoints {
            let base = match tls {
                Some(tls) => tls.endpoint(endpoint).map_err(|e| EtcdError::InvalidTls {
                    endpoint: endpoint.clone(),
                    reason: e.to_string(),
                })?,
                None => Endpoint::from_shared(endpoint.clone()).map_err(|source| {
                    EtcdError::InvalidEndpoint {
                        endpoint: endpoint.clone(),
                        source,
                    }
                })?,
            };
            let channel = base
                .connect_timeout(timeout)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
                .keep_alive_timeout(timeout)
                // etcd counts pings on a connection without streams as abuse.
                .keep_alive_while_idle(false)
                .connect_lazy();
            channels.push((endpoint.clone(), channel));
        }
        let etcd = Etcd {
            inner: Arc::new(Inner {
                channels,
                current: AtomicUsize::new(0),
                timeout,
            }),
        };
        let probe = RangeRequest {
            key: b"\0".to_vec(),
            count_only: true,
            ..RangeRequest::default()
        };
        etcd.unary("connect", &probe, |channel, request| async move {
            KvClient::new(channel).range(request).await
        })
        .await?;
        debug!(endpoints = ?endpoints, "connected to etcd");
        Ok(etcd)
    }

    /// The per-request timeout given to [`Etcd::connect`].
    pub fn timeout(&self) -> Duration {
        self.inner.timeout
    }

    // ----- leases -----

    /// Grants a lease of `ttl` (rounded up to whole seconds; etcd may raise it to its
    /// minimum, 2 s with default settings). Returns the lease id.
    pub async fn grant_lease(&self, ttl: Duration) -> Result<i64> {
        let request = LeaseGrantRequest {
            ttl: ttl_seconds(ttl),
            id: 0,
        };
        let response = self
            .unary("lease grant", &request, |channel, request| async move {
                LeaseClient::new(channel).lease_grant(request).await
            })
            .await?;
        if !response.error.is_empty() {
            return Err(EtcdError::Rpc {
                op: "lease grant",
                code: Code::Unknown,
                message: response.error,
            });
        }
        debug!(
            lease = response.id,
            ttl_s = response.ttl,
            "granted etcd lease"
        );
        Ok(response.id)
    }

    /// Revokes a lease, deleting every key under it. A lease already gone is not an error.
    pub async fn revoke(&self, lease: i64) -> Result<()> {
        let request = LeaseRevokeRequest { id: lease };
        let result = self
            .unary("lease revoke", &request, |channel, request| async move {
                LeaseClient::new(channel).lease_revoke(request).await
            })
            .await;
        match result {
            Ok(_) => {
                debug!(lease, "revoked etcd lease");
                Ok(())
            }
            Err(EtcdError::Rpc { ref message, .. }) if message.contains(LEASE_NOT_FOUND) => {
                debug!(lease, "etcd lease to revoke was already gone");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Starts keeping `lease` alive, renewing it every `ttl / 3`. Renews once before
    /// returning, so that the keeper starts from a confirmed renewal; fails with
    /// [`EtcdError::LeaseNotFound`] if the lease is already gone.
    pub async fn keep_alive(&self, lease: i64, ttl: Duration) -> Result<LeaseKeeper> {
        let op = "lease keep-alive";
        let timeout = self.inner.timeout;
        let mut stream = self.open_keep_alive(lease).await?;
        let first = tokio::time::timeout(timeout, stream.responses.message())
            .await
            .map_err(|_| EtcdError::Timeout { op, timeout })?
            .map_err(|status| rpc_error(op, &status))?
            .ok_or(EtcdError::StreamClosed { op })?;
        let sent = stream
            .unanswered
            .pop_front()
            .ok_or(EtcdError::MissingField {
                op,
                field: "request",
            })?;
        if first.ttl <= 0 {
            return Err(EtcdError::LeaseNotFound { lease });
        }
        let (state_tx, state) = watch::channel(LeaseState {
            last_renewed: sent,
            ttl: Duration::from_secs(first.ttl.unsigned_abs()),
            lost: false,
        });
        let period = (ttl / 3).max(MIN_RENEW_PERIOD);
        let task = tokio::spawn(keep_lease_alive(
            self.clone(),
            lease,
            period,
            stream,
            state_tx,
        ));
        debug!(lease, ttl_s = first.ttl, "keeping etcd lease alive");
        Ok(LeaseKeeper { lease, state, task })
    }

    /// Opens a keep-alive stream for `lease` and sends its first renewal.
    async fn open_keep_alive(&self, lease: i64) -> Result<KeepAliveStream> {
        let op = "lease keep-alive";
        let timeout = self.inner.timeout;
        let (requests, outgoing) = mpsc::channel(4);
        // Queued before the call: etcd sends the response headers with its first answer.
        let now = Instant::now();
        requests
            .send(LeaseKeepAliveRequest { id: lease })
            .await
            .map_err(|_| EtcdError::StreamClosed { op })?;
        let (index, channel) = self.channel();
        let opened = tokio::time::timeout(
            timeout,
            LeaseClient::new(channel).lease_keep_alive(ReceiverStream::new(outgoing)),
        )
        .await;
        let responses = match opened {
            Ok(Ok(response)) => response.into_inner(),
            Ok(Err(status)) => {
                self.failover_on(index, &status);
                return Err(rpc_error(op, &status));
            }
            Err(_) => {
                self.failover(index, "timeout");
                return Err(EtcdError::Timeout { op, timeout });
            }
        };
        Ok(KeepAliveStream {
            lease,
            index,
            requests,
            responses,
            unanswered: VecDeque::from([now]),
        })
    }

    // ----- KV -----

    /// Puts `key` = `value`, under `lease` if given. Returns the revision of the put.
    pub async fn put(&self, key: &str, value: Vec<u8>, lease: Option<i64>) -> Result<i64> {
        let request = PutRequest {
            key: key.as_bytes().to_vec(),
            value,
            lease: lease.unwrap_or(0),
            ..PutRequest::default()
        };
        let response = self
            .unary("put", &request, |channel, request| async move {
                KvClient::new(channel).put(request).await
            })
            .await;
        let response = match (response, lease) {
            (Err(EtcdError::Rpc { ref message, .. }), Some(lease))
                if message.contains(LEASE_NOT_FOUND) =>
            {
                return Err(EtcdError::LeaseNotFound { lease });
            }
            (response, _) => response?,
        };
        let revision = header_revision("put", response.header)?;
        debug!(key, revision, lease, "etcd put");
        Ok(revision)
    }

    /// Reads `key`.
    pub async fn get(&self, key: &str) -> Result<Option<Kv>> {
        let request = RangeRequest {
            key: key.as_bytes().to_vec(),
            ..RangeRequest::default()
        };
        let response = self
            .unary("get", &request, |channel, request| async move {
                KvClient::new(channel).range(request).await
            })
            .await?;
        Ok(response.kvs.into_iter().next().map(Kv::from))
    }

    /// Lists every key under `prefix`, in key order, with the revision of the listing: watch
    /// from `revision + 1` to see every later change exactly once.
    pub async fn get_prefix(&self, prefix: &str) -> Result<(Vec<Kv>, i64)> {
        let request = RangeRequest {
            key: prefix.as_bytes().to_vec(),
            range_end: prefix_end(prefix.as_bytes()),
            ..RangeRequest::default()
        };
        let response = self
            .unary("get prefix", &request, |channel, request| async move {
                KvClient::new(channel).range(request).await
            })
            .await?;
        let revision = header_revision("get prefix", response.header)?;
        Ok((response.kvs.into_iter().map(Kv::from).collect(), revision))
    }

    /// Deletes `key`. Returns whether it existed.
    pub async fn delete(&self, key: &str) -> Result<bool> {
        let request = DeleteRangeRequest {
            key: key.as_bytes().to_vec(),
            ..DeleteRangeRequest::default()
        };
        let response = self
            .unary("delete", &request, |channel, request| async move {
                KvClient::new(channel).delete_range(request).await
            })
            .await?;
        debug!(key, deleted = response.deleted, "etcd delete");
        Ok(response.deleted > 0)
    }

    // ----- watch -----

    /// Watches every key under `prefix` from `start_revision` on (inclusive; 0 = from now).
    /// If that revision was compacted, etcd cancels the watch: this call, or the stream's
    /// first item, is [`EtcdError::WatchCanceled`] with the oldest revision still watchable.
    pub async fn watch_prefix(&self, prefix: &str, start_revision: i64) -> Result<WatchStream> {
        let op = "watch";
        let timeout = self.inner.timeout;
        let create = WatchRequest {
            request_union: Some(watch_request::RequestUnion::CreateRequest(
                WatchCreateRequest {
                    key: prefix.as_bytes().to_vec(),
                    range_end: prefix_end(prefix.as_bytes()),
                    start_revision,
                    ..WatchCreateRequest::default()
                },
            )),
        };
        let (requests, outgoing) = mpsc::channel(1);
        requests
            .send(create)
            .await
            .map_err(|_| EtcdError::StreamClosed { op })?;
        let (index, channel) = self.channel();
        let opened = tokio::time::timeout(timeout, async move {
            let mut responses = WatchClient::new(channel)
                .watch(ReceiverStream::new(outgoing))
                .await?
                .into_inner();
            let created = responses.message().await?;
            Ok::<_, Status>((responses, created))
        })
        .await;
        let (responses, created) = match opened {
            Ok(Ok(opened)) => opened,
            Ok(Err(status)) => {
                self.failover_on(index, &status);
                return Err(rpc_error(op, &status));
            }
            Err(_) => {
                self.failover(index, "timeout");
                return Err(EtcdError::Timeout { op, timeout });
            }
        };
        let created = created.ok_or(EtcdError::StreamClosed { op })?;
        if created.canceled {
            return Err(EtcdError::WatchCanceled {
                reason: created.cancel_reason,
                compact_revision: created.compact_revision,
            });
        }
        debug!(
            prefix,
            start_revision,
            watch_id = created.watch_id,
            "etcd watch created"
        );
        let state = WatchState {
            etcd: self.clone(),
            index,
            responses,
            _requests: requests,
            pending: created.events.into_iter().map(watch_event).collect(),
            finished: false,
        };
        Ok(EventStream {
            inner: Box::pin(futures::stream::unfold(state, next_watch_event)),
        })
    }

    // ----- election -----

    /// Campaigns in election `name` with `lease` (one campaigner per lease), proclaiming
    /// `value` once elected. Waits until elected: there is no timeout. Cancel-safe: dropping
    /// the future cancels the call, and etcd then deletes the campaign's key. (If the future
    /// is dropped just as etcd elects it, the key stays and leads: campaigning again with the
    /// same lease returns that same leadership, and revoking the lease ends it.)
    pub async fn campaign(&self, name: &str, lease: i64, value: Vec<u8>) -> Result<LeaderKey> {
        let op = "campaign";
        let request = CampaignRequest {
            name: name.as_bytes().to_vec(),
            lease,
            value,
        };
        let response = self
            .unary_unbounded(op, &request, |channel, request| async move {
                ElectionClient::new(channel).campaign(request).await
            })
            .await;
        let response = match response {
            Err(EtcdError::Rpc { ref message, .. }) if message.contains(LEASE_NOT_FOUND) => {
                return Err(EtcdError::LeaseNotFound { lease });
            }
            response => response?,
        };
        let leader = response.leader.ok_or(EtcdError::MissingField {
            op,
            field: "leader",
        })?;
        let leader = LeaderKey {
            name: String::from_utf8_lossy(&leader.name).into_owned(),
            key: String::from_utf8_lossy(&leader.key).into_owned(),
            rev: leader.rev,
            lease: leader.lease,
        };
        // etcd's campaign waits for the keys before ours to go, not for ours to stay: if our
        // lease expired meanwhile, it still answers "elected".
        match self.get(&leader.key).await? {
            Some(kv) if kv.create_revision == leader.rev => {}
            _ => {
                warn!(
                    election = name,
                    lease,
                    rev = leader.rev,
                    "elected, but the leader key is already gone"
                );
                return Err(EtcdError::NotLeader {
                    name: name.to_owned(),
                });
            }
        }
        info!(election = name, lease, term = leader.rev, key = %leader.key, "elected leader");
        Ok(leader)
    }

    /// Replaces the leader's proclaimed value. Fails with [`EtcdError::NotLeader`] if
    /// `leader` no longer leads.
    pub async fn proclaim(&self, leader: &LeaderKey, value: Vec<u8>) -> Result<()> {
        let request = ProclaimRequest {
            leader: Some(leader.to_proto()),
            value,
        };
        let response = self
            .unary("proclaim", &request, |channel, request| async move {
                ElectionClient::new(channel).proclaim(request).await
            })
            .await;
        match response {
            Ok(_) => Ok(()),
            Err(EtcdError::Rpc { ref message, .. }) if message.contains(ELECTION_NOT_LEADER) => {
                Err(EtcdError::NotLeader {
                    name: leader.name.clone(),
                })
            }
            Err(e) => Err(e),
        }
    }

    /// The current leader of election `name`: its key, proclaimed value, and
    /// `create_revision` (the term). `None` when nobody leads.
    pub async fn leader(&self, name: &str) -> Result<Option<Kv>> {
        let request = LeaderRequest {
            name: name.as_bytes().to_vec(),
        };
        let response = self
            .unary("leader", &request, |channel, request| async move {
                ElectionClient::new(channel).leader(request).await
            })
            .await;
        match response {
            Ok(response) => Ok(response.kv.map(Kv::from)),
            Err(EtcdError::Rpc { ref message, .. }) if message.contains(ELECTION_NO_LEADER) => {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Observes election `name`: see [`ObserveStream`]. The call is made at the first poll
    /// (etcd answers it only once there is a leader), so this cannot fail.
    pub fn observe(&self, name: &str) -> ObserveStream {
        let state = ObserveState {
            etcd: self.clone(),
            name: name.as_bytes().to_vec(),
            open: None,
            finished: false,
        };
        EventStream {
            inner: Box::pin(futures::stream::unfold(state, next_observed_leader)),
        }
    }

    /// Gives up leadership (deletes the leader key if it still is `leader`'s), so that the
    /// next campaigner is elected. Resigning a leadership already lost is not an error.
    pub async fn resign(&self, leader: &LeaderKey) -> Result<()> {
        let request = ResignRequest {
            leader: Some(leader.to_proto()),
        };
        self.unary("resign", &request, |channel, request| async move {
            ElectionClient::new(channel).resign(request).await
        })
        .await?;
        info!(election = %leader.name, term = leader.rev, "resigned leadership");
        Ok(())
    }

    /// Puts `key` = `value` only while `leader` leads: one transaction comparing the leader
    /// key's creation revision with `leader.rev`. Returns false, writing nothing, when
    /// `leader` was deposed. The key gets no lease: it outlives the leader.
    pub async fn put_if_leader(
        &self,
        leader: &LeaderKey,
        key: &str,
        value: Vec<u8>,
    ) -> Result<bool> {
        let request = TxnRequest {
            compare: vec![Compare {
                result: compare::CompareResult::Equal.into(),
                target: compare::CompareTarget::Create.into(),
                key: leader.key.as_bytes().to_vec(),
                target_union: Some(compare::TargetUnion::CreateRevision(leader.rev)),
                ..Compare::default()
            }],
            success: vec![RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key: key.as_bytes().to_vec(),
                    value,
                    ..PutRequest::default()
                })),
            }],
            failure: Vec::new(),
        };
        let response = self
            .unary("put if leader", &request, |channel, request| async move {
                KvClient::new(channel).txn(request).await
            })
            .await?;
        if response.succeeded {
            debug!(key, term = leader.rev, "etcd put as leader");
        } else {
            warn!(
                key,
                election = %leader.name,
                term = leader.rev,
                "fenced put refused: no longer leader"
            );
        }
        Ok(response.succeeded)
    }

    // ----- plumbing -----

    /// The current endpoint's index and channel.
    fn channel(&self) -> (usize, Channel) {
        let channels = &self.inner.channels;
        let index = self.inner.current.load(Ordering::Relaxed) % channels.len();
        (index, channels[index].1.clone())
    }

    /// Moves calls to the next endpoint if `index` is still the current one.
    fn failover(&self, index: usize, reason: &str) {
        let channels = &self.inner.channels;
        if channels.len() < 2 {
            return;
        }
        let next = (index + 1) % channels.len();
        if self
            .inner
            .current
            .compare_exchange(index, next, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            warn!(
                from = %channels[index].0,
                to = %channels[next].0,
                reason,
                "etcd endpoint failover"
            );
        }
    }

    /// Fails over when `status` says the endpoint is unreachable.
    fn failover_on(&self, index: usize, status: &Status) {
        if status.code() == Code::Unavailable {
            self.failover(index, status.message());
        }
    }

    /// Makes a unary call of `message`, each attempt bounded by the request timeout (and
    /// told to etcd as the gRPC deadline), retrying on the next endpoint while endpoints are
    /// unreachable.
    async fn unary<M, T, F, Fut>(&self, op: &'static str, message: &M, call: F) -> Result<T>
    where
        M: Clone,
        F: FnMut(Channel, tonic::Request<M>) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<T>, Status>>,
    {
        self.call(op, Some(self.inner.timeout), message, call).await
    }

    /// [`Etcd::unary`] without a timeout, for the calls that wait for as long as it takes.
    async fn unary_unbounded<M, T, F, Fut>(
        &self,
        op: &'static str,
        message: &M,
        call: F,
    ) -> Result<T>
    where
        M: Clone,
        F: FnMut(Channel, tonic::Request<M>) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<T>, Status>>,
    {
        self.call(op, None, message, call).await
    }

    /// Makes a unary call, each attempt bounded by `timeout` when given.
    async fn call<M, T, F, Fut>(
        &self,
        op: &'static str,
        timeout: Option<Duration>,
        message: &M,
        mut call: F,
    ) -> Result<T>
    where
        M: Clone,
        F: FnMut(Channel, tonic::Request<M>) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<T>, Status>>,
    {
        let attempts = self.inner.channels.len();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (index, channel) = self.channel();
            let mut request = tonic::Request::new(message.clone());
            let outcome = match timeout {
                Some(timeout) => {
                    request.set_timeout(timeout);
                    tokio::time::timeout(timeout, call(channel, request))
                        .await
                        .map_err(|_| EtcdError::Timeout { op, timeout })
                }
                None => Ok(call(channel, request).await),
            };
            let error = match outcome {
                Ok(Ok(response)) => return Ok(response.into_inner()),
                Ok(Err(status)) if status.code() == Code::Unavailable => {
                    self.failover(index, status.message());
                    rpc_error(op, &status)
                }
                Ok(Err(status)) => return Err(rpc_error(op, &status)),
                Err(timed_out) => {
                    self.failover(index, "timeout");
                    timed_out
                }
            };
            if attempt >= attempts {
                return Err(error);
            }
            debug!(op, attempt, error = %error, "etcd call failed; retrying on the next endpoint");
        }
    }
}

/// The renewal loop of a [`LeaseKeeper`]: drives `stream` until it breaks, then reopens it,
/// until etcd says the lease is gone (or the keeper is dropped, which aborts the task).
async fn keep_lease_alive(
    etcd: Etcd,
    lease: i64,
    period: Duration,
    mut stream: KeepAliveStream,
    state: watch::Sender<LeaseState>,
) {
    // The first renewal was just answered, in `Etcd::keep_alive`.
    let mut first_renewal = Instant::now() + period;
    loop {
        match drive_keep_alive(&etcd, &mut stream, period, first_renewal, &state).await {
            StreamEnd::Lost => {
                warn!(lease, "etcd lease lost: etcd no longer holds it");
                state.send_modify(|s| s.lost = true);
                return;
            }
            StreamEnd::Broken(reason) => {
                let valid_for = state
                    .borrow()
                    .valid_until()
                    .saturating_duration_since(Instant::now());
                warn!(
                    lease,
                    reason,
                    ?valid_for,
                    "etcd lease keep-alive stream broke; reopening"
                );
            }
        }
        stream = loop {
            tokio::time::sleep(KEEPER_RETRY).await;
            match etcd.open_keep_alive(lease).await {
                Ok(stream) => break stream,
                Err(e) => {
                    debug!(lease, error = %e, "reopening the etcd lease keep-alive stream failed")
                }
            }
        };
        // `open_keep_alive` sent a renewal; the next one is a period away.
        first_renewal = Instant::now() + period;
    }
}

/// Renews every `period` over one stream and records the answers, until the stream breaks,
/// stalls (a renewal unanswered for the request timeout) or the lease is gone.
async fn drive_keep_alive(
    etcd: &Etcd,
    stream: &mut KeepAliveStream,
    period: Duration,
    first_renewal: Instant,
    state: &watch::Sender<LeaseState>,
) -> StreamEnd {
    let timeout = etcd.inner.timeout;
    let mut renew = tokio::time::interval_at(first_renewal, period);
    renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let lease = stream.lease;
    loop {
        let stalled_at = stream.unanswered.front().map(|sent| *sent + timeout);
        tokio::select! {
            _ = renew.tick() => {
                let now = Instant::now();
                if stream.requests.send(LeaseKeepAliveRequest { id: lease }).await.is_err() {
                    return StreamEnd::Broken("request stream closed".to_owned());
                }
                stream.unanswered.push_back(now);
            }
            () = sleep_until_some(stalled_at) => {
                return StreamEnd::Broken(format!("a renewal went unanswered for {timeout:?}"));
            }
            answer = stream.responses.message() => match answer {
                Ok(Some(answer)) => {
                    let Some(sent) = stream.unanswered.pop_front() else {
                        return StreamEnd::Broken("an answer to no renewal".to_owned());
                    };
                    if answer.ttl <= 0 {
                        return StreamEnd::Lost;
                    }
                    let ttl = Duration::from_secs(answer.ttl.unsigned_abs());
                    state.send_modify(|s| {
                        s.last_renewed = sent;
                        s.ttl = ttl;
                    });
                }
                Ok(None) => return StreamEnd::Broken("etcd closed the stream".to_owned()),
                Err(status) => {
                    etcd.failover_on(stream.index, &status);
                    return StreamEnd::Broken(status.to_string());
                }
            },
        }
    }
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// The state of a [`WatchStream`].
struct WatchState {
    etcd: Etcd,
    /// The endpoint the watch runs on, to fail over from when it breaks.
    index: usize,
    responses: Streaming<WatchResponse>,
    /// Kept open: closing the request side could end the watch.
    _requests: mpsc::Sender<WatchRequest>,
    pending: VecDeque<WatchEvent>,
    finished: bool,
}

/// The next item of a [`WatchStream`]: a buffered event, the events of the next answer, or
/// one final error.
async fn next_watch_event(mut state: WatchState) -> Option<(Result<WatchEvent>, WatchState)> {
    let op = "watch";
    loop {
        if let Some(event) = state.pending.pop_front() {
            return Some((Ok(event), state));
        }
        if state.finished {
            return None;
        }
        let error = match state.responses.message().await {
            Ok(Some(response)) if response.canceled => EtcdError::WatchCanceled {
                reason: response.cancel_reason,
                compact_revision: response.compact_revision,
            },
            Ok(Some(response)) => {
                state
                    .pending
                    .extend(response.events.into_iter().map(watch_event));
                continue;
            }
            Ok(None) => EtcdError::StreamClosed { op },
            Err(status) => {
                state.etcd.failover_on(state.index, &status);
                rpc_error(op, &status)
            }
        };
        warn!(error = %error, "etcd watch ended");
        state.finished = true;
        return Some((Err(error), state));
    }
}

/// Converts one etcd event.
fn watch_event(event: super::etcd_proto::mvccpb::Event) -> WatchEvent {
    let kv = Kv::from(event.kv.unwrap_or_default());
    if event.r#type == i32::from(EventType::Delete) {
        WatchEvent::Delete {
            key: kv.key,
            mod_revision: kv.mod_revision,
        }
    } else {
        WatchEvent::Put(kv)
    }
}

/// The state of an [`ObserveStream`].
struct ObserveState {
    etcd: Etcd,
    name: Vec<u8>,
    /// The endpoint index and the stream, once the call answered.
    open: Option<(usize, Streaming<LeaderResponse>)>,
    finished: bool,
}

/// The next item of an [`ObserveStream`]: makes the call at the first poll, then yields one
/// leader kv per answer, or one final error.
async fn next_observed_leader(mut state: ObserveState) -> Option<(Result<Kv>, ObserveState)> {
    let op = "observe";
    if state.finished {
        return None;
    }
    let (index, responses) = match &mut state.open {
        Some((index, responses)) => (*index, responses),
        None => {
            let (index, channel) = state.etcd.channel();
            let request = LeaderRequest {
                name: state.name.clone(),
            };
            match ElectionClient::new(channel).observe(request).await {
                Ok(response) => {
                    let open = state.open.insert((index, response.into_inner()));
                    (index, &mut open.1)
                }
                Err(status) => {
                    state.etcd.failover_on(index, &status);
                    state.finished = true;
                    return Some((Err(rpc_error(op, &status)), state));
                }
            }
        }
    };
    let error = match responses.message().await {
        Ok(Some(response)) => match response.kv {
            Some(kv) => return Some((Ok(Kv::from(kv)), state)),
            None => EtcdError::MissingField { op, field: "kv" },
        },
        Ok(None) => EtcdError::StreamClosed { op },
        Err(status) => {
            state.etcd.failover_on(index, &status);
            rpc_error(op, &status)
        }
    };
    warn!(error = %error, "etcd observe ended");
    state.finished = true;
    Some((Err(error), state))
}

/// The revision in a response header.
fn header_revision(
    op: &'static str,
    header: Option<super::etcd_proto::etcdserverpb::ResponseHeader>,
) -> Result<i64> {
    header.map(|h| h.revision).ok_or(EtcdError::MissingField {
        op,
        field: "header",
    })
}

/// A TTL in whole seconds, rounded up, at least 1 (etcd's unit).
fn ttl_seconds(ttl: Duration) -> i64 {
    let seconds = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    i64::try_from(seconds.max(1)).unwrap_or(i64::MAX)
}

/// The end of the key range holding every key that starts with `prefix`: the prefix with
/// its last byte below 0xff incremented and what follows dropped; `\0` (every key from the
/// start on) when there is no such byte.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_the_last_byte_below_0xff() {
        assert_eq!(prefix_end(b"/framecast/a/"), b"/framecast/a0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"a\xff\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff"), vec![0]);
        assert_eq!(prefix_end(b""), vec![0]);
    }

    #[test]
    fn ttl_rounds_up_to_whole_seconds() {
        assert_eq!(ttl_seconds(Duration::from_secs(2)), 2);
        assert_eq!(ttl_seconds(Duration::from_millis(2001)), 3);
        assert_eq!(ttl_seconds(Duration::from_millis(10)), 1);
        assert_eq!(ttl_seconds(Duration::ZERO), 1);
    }

    #[test]
    fn a_lost_lease_is_valid_until_a_past_instant() {
        let now = Instant::now();
        let mut state = LeaseState {
            last_renewed: now,
            ttl: Duration::from_secs(5),
            lost: false,
        };
        assert_eq!(state.valid_until(), now + Duration::from_secs(5));
        state.lost = true;
        assert!(state.valid_until() <= Instant::now());
    }

    #[test]
    fn delete_events_carry_the_key_and_the_deletion_revision() {
        let event = super::super::etcd_proto::mvccpb::Event {
            r#type: EventType::Delete.into(),
            kv: Some(KeyValue {
                key: b"/a".to_vec(),
                mod_revision: 7,
                ..KeyValue::default()
            }),
            prev_kv: None,
        };
        assert_eq!(
            watch_event(event),
            WatchEvent::Delete {
                key: "/a".to_owned(),
                mod_revision: 7
            }
        );
    }
}
