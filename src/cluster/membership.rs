//! Membership: which nodes of a cluster are alive, as etcd says. Each node registers a
//! [`NodeRecord`] at `/framecast/<cluster>/nodes/<id>` under the lease it keeps alive, so its
//! key vanishes when it dies; every node lists that prefix and watches it to keep a live map
//! of the nodes.
//!
//! Two outputs, kept consistent with each other:
//!
//! - [`Membership::nodes`]: a `tokio::sync::watch` of the latest map (id → record). One value,
//!   replaced on every change: a slow reader costs no memory and skips to the latest map.
//! - [`Membership::subscribe`]: the map now and a bounded `broadcast` of the
//!   [`MemberEvent`]s that follow it. Applying the events in order to that snapshot gives the
//!   map, always (the map and the event are published under one lock). A receiver that
//!   falls more than [`EVENT_CAPACITY`] events behind gets `RecvError::Lagged`: it must then
//!   resynchronise from [`Membership::nodes`] (e.g. with [`diff`] against what it held).
//!
//! When the watch breaks (etcd restarted, unreachable, or the watch's start revision
//! compacted), the background task lists the prefix again and watches from there, with a
//! bounded backoff; the new listing is diffed against the map, so nodes that vanished
//! meanwhile are reported offline and new ones online. (etcd 3.4 gives every lease a whole
//! new TTL when it restarts, see `super::etcd`: a node that died while etcd was down is
//! listed again after the restart and goes offline one TTL later.)
//!
//! This node's own key is never re-created behind the caller's back: when it vanishes (the
//! lease was lost) or another process overwrites it, [`Membership::is_registered`] turns
//! false, and the caller, which owns the leases, calls [`Membership::rejoin`] with a new one.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use super::etcd::{Etcd, EtcdError, Kv, WatchEvent, WatchStream};

/// How many [`MemberEvent`]s a subscriber may fall behind before it lags (and must
/// resynchronise from [`Membership::nodes`]). Membership changes are rare: a node joining
/// or leaving; this covers a whole cluster restarting at once.
pub const EVENT_CAPACITY: usize = 256;

/// The first pause before listing again after the watch broke; it doubles at each failed
/// attempt up to [`RELIST_BACKOFF_MAX`].
const RELIST_BACKOFF_MIN: Duration = Duration::from_millis(200);

/// The longest pause between two attempts to list and watch again.
const RELIST_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// The errors of membership.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    /// Another live process holds this node id: two processes with one `--node-id` must not
    /// both run. The id frees itself when that process leaves or its lease expires.
    #[error(
        "node id {id:?} is already registered in cluster {cluster:?} under another lease \
         ({holder}): another process runs with this node id"
    )]
    DuplicateId {
        /// The cluster.
        cluster: String,
        /// The node id.
        id: String,
        /// The lease the key lives under, in hex, or "no lease".
        holder: String,
    },
    /// A cluster name or node id that cannot be a key segment.
    #[error("invalid {what} {value:?}: must be non-empty and contain no '/'")]
    InvalidName {
        /// "cluster name" or "node id".
        what: &'static str,
        /// The name as given.
        value: String,
    },
    /// The node record could not be encoded.
    #[error("cannot encode the node record: {0}")]
    Encode(#[source] serde_json::Error),
    /// etcd failed.
    #[error(transparent)]
    Etcd(#[from] EtcdError),
}

/// The result type of membership.
pub type Result<T> = std::result::Result<T, MembershipError>;

/// A node as the cluster knows it: the JSON value of its key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// The node id (`--node-id`), also the last segment of its key.
    pub id: String,
    /// The gRPC address clients and peers reach it at (`--advertise`, `HOST:PORT`).
    pub address: String,
    /// The HTTP door's URL (`--advertise-http`), or `""` when it has none.
    pub http_address: String,
    /// Where the node keeps its data: the host's boot and name, its data directory and the
    /// identity of that directory's lock file (`boot:host:/path:dev:ino`), or `""` when not
    /// said. A record of the same id and home under another lease is taken for an earlier
    /// run of this very node, killed before its lease lapsed: the process starting now
    /// holds that directory's lock on the same boot of the same host, so that run is gone.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub home: String,
}

/// A change of the membership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberEvent {
    /// A node registered, or its record changed (the new record).
    Online(NodeRecord),
    /// A node's key vanished (it left, or its lease expired): its id.
    Offline(String),
}

impl MemberEvent {
    /// Applies the event to a map of the nodes.
    pub fn apply(&self, nodes: &mut BTreeMap<String, NodeRecord>) {
        match self {
            MemberEvent::Online(record) => {
                nodes.insert(record.id.clone(), record.clone());
            }
            MemberEvent::Offline(id) => {
                nodes.remove(id);
            }
        }
    }
}

/// The events that turn `before` into `after`: the nodes gone (offline), then the nodes new
/// or changed (online), each in id order.
pub fn diff(
    before: &BTreeMap<String, NodeRecord>,
    after: &BTreeMap<String, NodeRecord>,
) -> Vec<MemberEvent> {
    let gone = before
        .keys()
        .filter(|id| !after.contains_key(*id))
        .map(|id| MemberEvent::Offline(id.clone()));
    let new = after
        .values()
        .filter(|record| before.get(&record.id) != Some(*record))
        .map(|record| MemberEvent::Online(record.clone()));
    gone.chain(new).collect()
}

/// The prefix every node key of `cluster` starts with: `/framecast/<cluster>/nodes/`.
pub fn nodes_prefix(cluster: &str) -> String {
    format!("/framecast/{cluster}/nodes/")
}

/// Checks that `value` can be one segment of a key.
fn check_name(what: &'static str, value: &str) -> Result<()> {
    if value.is_empty() || value.contains('/') {
        return Err(MembershipError::InvalidName {
            what,
            value: value.to_owned(),
        });
    }
    Ok(())
}

/// A lease as the logs and errors show it.
fn lease_name(lease: Option<i64>) -> String {
    lease.map_or_else(
        || "no lease".to_owned(),
        |lease| format!("lease {lease:#x}"),
    )
}

/// The record a kv under the prefix holds, or `None` (with a warning) when it is not a
/// well-formed node record whose id is its key's last segment.
fn parse_record(prefix: &str, key: &str, value: &[u8]) -> Option<NodeRecord> {
    let id = key.strip_prefix(prefix)?;
    match serde_json::from_slice::<NodeRecord>(value) {
        Ok(record) if record.id == id && check_name("node id", id).is_ok() => Some(record),
        Ok(record) => {
            warn!(key, record_id = %record.id, "node key whose record names another id; ignored");
            None
        }
        Err(e) => {
            warn!(key, error = %e, "malformed node record; ignored");
            None
        }
    }
}

/// This node's registration, as the writers (join, rejoin, leave) and the watch share it.
#[derive(Debug)]
struct Registration {
    /// The lease this node's key is (to be) put under.
    lease: i64,
    /// The revision of this node's last put (or delete, by `leave`): changes of its key at
    /// or before it are this node's own, older than what it knows.
    revision: i64,
    /// `leave` deleted the key on purpose: its vanishing is no news.
    left: bool,
}

/// What the handle and the background task share.
#[derive(Debug)]
struct Shared {
    cluster: String,
    me: NodeRecord,
    key: String,
    prefix: String,
    /// Held while the map and the events are published, and while a subscriber snapshots
    /// the map and subscribes: that makes the events apply exactly on top of the snapshot.
    registration: Mutex<Registration>,
    nodes: watch::Sender<BTreeMap<String, NodeRecord>>,
    events: broadcast::Sender<MemberEvent>,
    registered: watch::Sender<bool>,
    /// Serialises `rejoin` and `leave`.
    writes: tokio::sync::Mutex<()>,
}

impl Shared {
    /// Applies one change of the watch.
    fn apply_watch_event(&self, event: WatchEvent) {
        let mut registration = self.registration.lock();
        let (key, revision, record) = match &event {
            WatchEvent::Put(kv) => (
                kv.key.as_str(),
                kv.mod_revision,
                parse_record(&self.prefix, &kv.key, &kv.value),
            ),
            WatchEvent::Delete { key, mod_revision } => (key.as_str(), *mod_revision, None),
        };
        if key == self.key && revision > registration.revision {
            let lease = match &event {
                WatchEvent::Put(kv) => kv.lease,
                WatchEvent::Delete { .. } => None,
            };
            self.check_own_key(
                &mut registration,
                lease,
                matches!(event, WatchEvent::Put(_)),
            );
        }
        let Some(id) = key.strip_prefix(&self.prefix) else {
            return;
        };
        let change = match record {
            Some(record) if self.nodes.borrow().get(id) != Some(&record) => {
                Some(MemberEvent::Online(record))
            }
            Some(_) => None,
            None if self.nodes.borrow().contains_key(id) => {
                Some(MemberEvent::Offline(id.to_owned()))
            }
            None => None,
        };
        if let Some(change) = change {
            self.publish(vec![change]);
        }
        drop(registration);
    }

    /// Replaces the map with a fresh listing (taken at `revision`), publishing the diff.
    fn apply_listing(&self, kvs: &[Kv], revision: i64) {
        let mut registration = self.registration.lock();
        let listed: BTreeMap<String, NodeRecord> = kvs
            .iter()
            .filter_map(|kv| parse_record(&self.prefix, &kv.key, &kv.value))
            .map(|record| (record.id.clone(), record))
            .collect();
        if revision >= registration.revision {
            let own = kvs.iter().find(|kv| kv.key == self.key);
            match own {
                Some(kv) if kv.mod_revision <= registration.revision => {}
                Some(kv) => self.check_own_key(&mut registration, kv.lease, true),
                None => self.check_own_key(&mut registration, None, false),
            }
        }
        let changes = diff(&self.nodes.borrow(), &listed);
        debug!(
            revision,
            nodes = listed.len(),
            changes = changes.len(),
            "listed the cluster's nodes"
        );
        self.publish(changes);
        drop(registration);
    }

    /// Updates `registered` from a change of this node's key newer than its last write:
    /// present under its lease (registered), gone, or taken by another lease.
    fn check_own_key(&self, registration: &mut Registration, lease: Option<i64>, present: bool) {
        let registered = present && lease == Some(registration.lease);
        if present && !registered {
            error!(
                node = %self.me.id,
                key = %self.key,
                holder = %lease_name(lease),
                lease = registration.lease,
                "another process took this node's id: no longer registered"
            );
        } else if !present && !registration.left && *self.registered.borrow() {
            warn!(
                node = %self.me.id,
                lease = registration.lease,
                "this node's key vanished (lease lost?): no longer registered; not re-created"
            );
        }
        self.registered.send_if_modified(|now| {
            let changed = *now != registered;
            *now = registered;
            changed
        });
    }

    /// Publishes `changes`: the map first, then each event, so that a receiver of an event
    /// reads a map that holds it. The caller holds the registration lock.
    fn publish(&self, changes: Vec<MemberEvent>) {
        if changes.is_empty() {
            return;
        }
        self.nodes.send_modify(|nodes| {
            for change in &changes {
                change.apply(nodes);
            }
        });
        for change in changes {
            match &change {
                MemberEvent::Online(record) => info!(
                    cluster = %self.cluster,
                    node = %record.id,
                    address = %record.address,
                    http_address = %record.http_address,
                    "node online"
                ),
                MemberEvent::Offline(id) => {
                    info!(cluster = %self.cluster, node = %id, "node offline")
                }
            }
            // No receiver is not an error: the map holds the change.
            let _ = self.events.send(change);
        }
    }
}

/// This node's membership of a cluster: its registration, and the live map of every node
/// (itself included) with its changes. Dropping it stops the background watch; it does not
/// delete the key (call [`Membership::leave`]), which then lives as long as the lease.
#[derive(Debug)]
pub struct Membership {
    etcd: Etcd,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Membership {
    /// Registers `me` in `cluster` under `lease` (which the caller keeps alive), lists the
    /// nodes and starts watching them.
    ///
    /// Refuses with [`MembershipError::DuplicateId`] when the key is held under another lease
    /// (another live process with this id), unless the record held there has `me`'s home:
    /// then it is taken for an earlier run of this node, killed within its lease TTL (the
    /// caller holds the data directory's lock on the same boot of the same host), and its
    /// lease is revoked. Checked with a read before the put and again in the listing after
    /// it; two processes starting at the same instant could still both pass the first
    /// check, and then the one overwritten learns it from the listing or the watch (it is
    /// no longer [`Membership::is_registered`]).
    pub async fn join(
        etcd: &Etcd,
        cluster: &str,
        me: NodeRecord,
        lease: i64,
    ) -> Result<Membership> {
        check_name("cluster name", cluster)?;
        check_name("node id", &me.id)?;
        let prefix = nodes_prefix(cluster);
        let key = format!("{prefix}{}", me.id);
        let value = serde_json::to_vec(&me).map_err(MembershipError::Encode)?;
        let duplicate = |holder: Option<i64>| MembershipError::DuplicateId {
            cluster: cluster.to_owned(),
            id: me.id.clone(),
            holder: lease_name(holder),
        };
        if let Some(kv) = etcd.get(&key).await? {
            if kv.lease != Some(lease) {
                let earlier_run = parse_record(&prefix, &kv.key, &kv.value)
                    .is_some_and(|held| !me.home.is_empty() && held.home == me.home);
                let Some(old) = kv.lease.filter(|_| earlier_run) else {
                    return Err(duplicate(kv.lease));
                };
                // Its keys (the registration, a leader key) go now rather than when the
                // lease lapses: a restarted node is back at once, and if that run led, the
                // next leader is elected at once.
                etcd.revoke(old).await?;
                warn!(cluster, node = %me.id, home = %me.home, lease = old, "an earlier run of this node (killed: this process holds its data directory) was still registered; its lease revoked");
            }
        }
        let put_revision = etcd.put(&key, value, Some(lease)).await?;
        let (kvs, listed) = etcd.get_prefix(&prefix).await?;
        match kvs.iter().find(|kv| kv.key == key) {
            Some(kv) if kv.lease == Some(lease) => {}
            Some(kv) => return Err(duplicate(kv.lease)),
            None => return Err(EtcdError::LeaseNotFound { lease }.into()),
        }
        let watch = etcd.watch_prefix(&prefix, listed + 1).await?;
        let nodes: BTreeMap<String, NodeRecord> = kvs
            .iter()
            .filter_map(|kv| parse_record(&prefix, &kv.key, &kv.value))
            .map(|record| (record.id.clone(), record))
            .collect();
        info!(
            cluster,
            node = %me.id,
            address = %me.address,
            lease,
            revision = put_revision,
            nodes = nodes.len(),
            "joined the cluster"
        );
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        let shared = Arc::new(Shared {
            cluster: cluster.to_owned(),
            me,
            key,
            prefix,
            registration: Mutex::new(Registration {
                lease,
                revision: put_revision,
                left: false,
            }),
            nodes: watch::Sender::new(nodes),
            events,
            registered: watch::Sender::new(true),
            writes: tokio::sync::Mutex::new(()),
        });
        let task = tokio::spawn(watch_nodes(etcd.clone(), Arc::clone(&shared), watch));
        Ok(Membership {
            etcd: etcd.clone(),
            shared,
            task,
        })
    }

    /// This node's record.
    pub fn me(&self) -> &NodeRecord {
        &self.shared.me
    }

    /// The lease this node's key is put under (the last given to `join` or `rejoin`).
    pub fn lease(&self) -> i64 {
        self.shared.registration.lock().lease
    }

    /// The live map of the nodes (this one included), id → record: the latest map only.
    pub fn nodes(&self) -> watch::Receiver<BTreeMap<String, NodeRecord>> {
        self.shared.nodes.subscribe()
    }

    /// The map now and the events that follow it: applying them in order to the snapshot
    /// gives the map. Bounded by [`EVENT_CAPACITY`]: on `Lagged`, resynchronise from
    /// [`Membership::nodes`].
    pub fn subscribe(
        &self,
    ) -> (
        BTreeMap<String, NodeRecord>,
        broadcast::Receiver<MemberEvent>,
    ) {
        let _publishing = self.shared.registration.lock();
        let snapshot = self.shared.nodes.borrow().clone();
        (snapshot, self.shared.events.subscribe())
    }

    /// Whether node `id` is registered now (its key is in the map).
    pub fn is_online(&self, id: &str) -> bool {
        self.shared.nodes.borrow().contains_key(id)
    }

    /// Whether this node's key is in etcd under its lease, as far as the watch knows. False
    /// once the key vanished (lease lost), was taken by another process, or after `leave`.
    pub fn is_registered(&self) -> bool {
        *self.shared.registered.borrow()
    }

    /// [`Membership::is_registered`] as a watch, to react when it turns false.
    pub fn registration(&self) -> watch::Receiver<bool> {
        self.shared.registered.subscribe()
    }

    /// Registers this node again under `lease` (after its key vanished, or to move it to a
    /// new lease). Refuses with [`MembershipError::DuplicateId`] when the key is held under a
    /// lease other than this node's current or new one. The map shows the node again once
    /// the watch delivers the put.
    pub async fn rejoin(&self, lease: i64) -> Result<()> {
        let _writing = self.shared.writes.lock().await;
        let shared = &self.shared;
        let value = serde_json::to_vec(&shared.me).map_err(MembershipError::Encode)?;
        let current = shared.registration.lock().lease;
        if let Some(kv) = self.etcd.get(&shared.key).await? {
            if kv.lease != Some(lease) && kv.lease != Some(current) {
                return Err(MembershipError::DuplicateId {
                    cluster: shared.cluster.clone(),
                    id: shared.me.id.clone(),
                    holder: lease_name(kv.lease),
                });
            }
        }
        // The new lease before the put: the watch may deliver the put before it returns.
        {
            let mut registration = shared.registration.lock();
            registration.lease = lease;
            registration.left = false;
        }
        match self.etcd.put(&shared.key, value, Some(lease)).await {
            Ok(revision) => {
                let mut registration = shared.registration.lock();
                registration.revision = registration.revision.max(revision);
                shared.registered.send_replace(true);
                info!(cluster = %shared.cluster, node = %shared.me.id, lease, revision, "rejoined the cluster");
                Ok(())
            }
            Err(e) => {
                shared.registration.lock().lease = current;
                Err(e.into())
            }
        }
    }

    /// Leaves the cluster: deletes this node's key (other nodes see it offline at once). The
    /// watch goes on; [`Membership::rejoin`] registers again.
    pub async fn leave(&self) -> Result<()> {
        let _writing = self.shared.writes.lock().await;
        let shared = &self.shared;
        shared.registration.lock().left = true;
        self.etcd.delete(&shared.key).await?;
        shared.registered.send_replace(false);
        info!(cluster = %shared.cluster, node = %shared.me.id, "left the cluster");
        Ok(())
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The background task: applies the watch's events; when the watch breaks, lists and
/// watches again with a bounded backoff, until the [`Membership`] is dropped.
async fn watch_nodes(etcd: Etcd, shared: Arc<Shared>, watch: WatchStream) {
    let mut watch = Some((watch, Instant::now()));
    let mut backoff = RELIST_BACKOFF_MIN;
    loop {
        if let Some((stream, started)) = watch.as_mut() {
            match stream.next().await {
                Some(Ok(event)) => {
                    shared.apply_watch_event(event);
                    continue;
                }
                Some(Err(e)) => {
                    warn!(cluster = %shared.cluster, error = %e, "node watch broke; listing again")
                }
                None => warn!(cluster = %shared.cluster, "node watch ended; listing again"),
            }
            // A watch that held a while was no failure to back off from.
            if started.elapsed() >= RELIST_BACKOFF_MAX {
                backoff = RELIST_BACKOFF_MIN;
            }
            watch = None;
        }
        tokio::time::sleep(backoff).await;
        match relist(&etcd, &shared).await {
            Ok(stream) => {
                info!(cluster = %shared.cluster, "node watch resumed");
                watch = Some((stream, Instant::now()));
            }
            Err(e) => {
                warn!(cluster = %shared.cluster, error = %e, retry_in = ?backoff, "listing the cluster's nodes failed");
            }
        }
        backoff = (backoff * 2).min(RELIST_BACKOFF_MAX);
    }
}

/// Lists the nodes, replaces the map with the listing, and watches from the next revision.
async fn relist(etcd: &Etcd, shared: &Shared) -> std::result::Result<WatchStream, EtcdError> {
    let (kvs, revision) = etcd.get_prefix(&shared.prefix).await?;
    shared.apply_listing(&kvs, revision);
    etcd.watch_prefix(&shared.prefix, revision + 1).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, address: &str) -> NodeRecord {
        NodeRecord {
            id: id.to_owned(),
            address: address.to_owned(),
            http_address: String::new(),
            home: String::new(),
        }
    }

    fn map(records: &[NodeRecord]) -> BTreeMap<String, NodeRecord> {
        records.iter().map(|r| (r.id.clone(), r.clone())).collect()
    }

    #[test]
    fn diff_reports_gone_new_and_changed_nodes_and_applies_back() {
        let before = map(&[record("a", "a:1"), record("b", "b:1"), record("c", "c:1")]);
        let after = map(&[record("a", "a:1"), record("c", "c:2"), record("d", "d:1")]);
        let events = diff(&before, &after);
        assert_eq!(
            events,
            [
                MemberEvent::Offline("b".to_owned()),
                MemberEvent::Online(record("c", "c:2")),
                MemberEvent::Online(record("d", "d:1")),
            ]
        );
        let mut replayed = before.clone();
        for event in &events {
            event.apply(&mut replayed);
        }
        assert_eq!(replayed, after);
        assert!(diff(&after, &after).is_empty());
    }

    #[test]
    fn records_round_trip_and_bad_ones_are_ignored() {
        let prefix = nodes_prefix("c");
        let r = record("n1", "127.0.0.1:1");
        let json = serde_json::to_vec(&r).expect("encode");
        assert_eq!(
            parse_record(&prefix, "/framecast/c/nodes/n1", &json),
            Some(r)
        );
        assert_eq!(parse_record(&prefix, "/framecast/c/nodes/n2", &json), None);
        assert_eq!(parse_record(&prefix, "/framecast/c/nodes/n1", b"{"), None);
        assert_eq!(parse_record(&prefix, "/elsewhere/n1", &json), None);
    }

    #[test]
    fn names_with_a_slash_or_empty_are_refused() {
        assert!(check_name("node id", "n1").is_ok());
        assert!(check_name("node id", "").is_err());
        assert!(check_name("node id", "a/b").is_err());
    }
}
