//! The metrics registry behind `/metrics`.
//!
//! The hot path (a frame published, a frame delivered) takes no lock and looks up no label:
//! a caller resolves a topic's handles once, with [`Metrics::topic`] when the topic is opened
//! or created, and afterwards only adds to the atomics those handles share with the registry.
//! Series are bounded: past `max_topics` distinct topics, the rest share one `topic="_other"`
//! series (no topic can be named that, since topic names start with a letter or digit).
//!
//! Figures that are cheaper to read than to keep up to date (a topic's offsets, stored bytes
//! and the slowest subscriber's lag) are not kept here: the caller reads them at scrape time
//! and hands them to [`Metrics::encode`] as [`TopicGauges`].
//!
//! The exposition is OpenMetrics text (what `prometheus-client` writes, ending in `# EOF`),
//! which Prometheus scrapes natively; serve it with [`CONTENT_TYPE`].
//!
//! `replication_lag_frames{topic,node}` is such a figure too ([`ReplicaLag`]): the leader's
//! durable end minus what each follower holds, as the leader knows it at the scrape. Only a
//! cluster's leader has series in it.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabel, EncodeLabelSet, EncodeMetric, LabelSetEncoder, MetricEncoder,
};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

use super::process::ProcessCollector;

pub use prometheus_client::metrics::counter::Counter;
pub use prometheus_client::metrics::gauge::Gauge;

/// The content type of [`Metrics::encode`]'s output, for the `/metrics` response.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The content type of the Prometheus text format (0.0.4), for scrapers that do not ask for
/// OpenMetrics: see [`text_format`].
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether a scraper's `Accept` header asks for OpenMetrics (Prometheus asks for it first;
/// curl and older tools do not).
pub fn wants_openmetrics(accept: &str) -> bool {
    accept.contains("application/openmetrics-text")
}

/// An exposition as [`Metrics::encode`] writes it, in the Prometheus text format 0.0.4:
/// a counter's `HELP` and `TYPE` name its samples (`…_total`), and the `# UNIT` and `# EOF`
/// lines, which that format does not have, go. Samples are unchanged.
pub fn text_format(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len() + 16 * counters.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let comment = line
            .strip_prefix("# HELP ")
            .map(|r| ("# HELP ", r))
            .or_else(|| line.strip_prefix("# TYPE ").map(|r| ("# TYPE ", r)));
        match comment.and_then(|(kind, rest)| Some((kind, rest.split_once(' ')?))) {
            Some((kind, (name, rest))) if counters.contains(name) => {
                out.push_str(kind);
                out.push_str(name);
                out.push_str("_total ");
                out.push_str(rest);
            }
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// Every framecast family is named `framecast_<name>`.
const PREFIX: &str = "framecast";

/// The `topic` label value shared by every topic past `max_topics`.
pub const OTHER_TOPIC: &str = "_other";

/// The default of `--metrics-max-topics`.
pub const DEFAULT_MAX_TOPICS: usize = 1000;

/// Lower-case names of the gRPC status codes a request can be rejected with, in code order
/// (`OK` is not a rejection). `rejected_requests_total` has one pre-created series per name.
const REJECT_CODES: [&str; 16] = [
    "cancelled",
    "unknown",
    "invalid_argument",
    "deadline_exceeded",
    "not_found",
    "already_exists",
    "permission_denied",
    "resource_exhausted",
    "failed_precondition",
    "aborted",
    "out_of_range",
    "unimplemented",
    "internal",
    "unavailable",
    "data_loss",
    "unauthenticated",
];

/// Where an unrecognised code name is counted.
const UNKNOWN_CODE: usize = 1;

/// `publish_duration_seconds` upper bounds: 50 µs doubling 18 times (to 13.1 s).
const PUBLISH_BUCKETS: (u64, u32) = (50_000, 19);

/// `fsync_duration_seconds` upper bounds: 10 µs doubling 20 times (to 10.5 s).
const FSYNC_BUCKETS: (u64, u32) = (10_000, 21);

/// Which front door a subscriber came through (label `transport`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// Native gRPC over HTTP/2.
    Grpc,
    /// gRPC-Web, from browsers.
    GrpcWeb,
    /// Server-sent events.
    Sse,
    /// WebSocket.
    Ws,
}

impl Transport {
    /// Every transport, in the order handles are indexed by.
    pub const ALL: [Transport; 4] = [
        Transport::Grpc,
        Transport::GrpcWeb,
        Transport::Sse,
        Transport::Ws,
    ];

    /// The `transport` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Grpc => "grpc",
            Transport::GrpcWeb => "grpc_web",
            Transport::Sse => "sse",
            Transport::Ws => "ws",
        }
    }
}

/// Handles of one topic's series, resolved once by [`Metrics::topic`]. Cloning is cheap (a
/// reference count per handle) and every clone adds to the same series.
#[derive(Clone, Debug)]
pub struct TopicMetrics {
    /// `published_frames_total{topic}`: frames appended to the topic's log.
    pub published_frames: Counter,
    /// `published_bytes_total{topic}`: payload bytes appended to the topic's log.
    pub published_bytes: Counter,
    /// `compactions_total{topic}`: compactions committed.
    pub compactions: Counter,
    /// `maintenance_failures_total{topic}`: retention or compaction passes that failed
    /// (each retried later, waiting longer after each failure in a row).
    pub maintenance_failures: Counter,
    delivered: [Counter; 4],
    subscribers: [Gauge; 4],
}

impl TopicMetrics {
    /// `delivered_frames_total{topic,transport}`: frames sent to subscribers.
    pub fn delivered(&self, t: Transport) -> &Counter {
        &self.delivered[t as usize]
    }

    /// `subscribers{topic,transport}`: subscriptions open now (`inc` on open, `dec` on close).
    pub fn subscribers(&self, t: Transport) -> &Gauge {
        &self.subscribers[t as usize]
    }
}

/// Figures of one topic read at scrape time (not kept in the registry).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TopicGauges {
    /// The topic's name.
    pub topic: String,
    /// Offset the next frame will get.
    pub next_offset: u64,
    /// Offset of the oldest frame still stored.
    pub first_offset: u64,
    /// Bytes of the topic's log on disk.
    pub stored_bytes: u64,
    /// Largest durable frontier minus position among the topic's subscribers.
    pub max_lag_frames: u64,
}

/// How far one follower is behind the leader in one topic, read at scrape time on the
/// leader: `replication_lag_frames{topic,node}`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplicaLag {
    /// The topic's name.
    pub topic: String,
    /// The follower's node id.
    pub node: String,
    /// The leader's durable end minus what the follower holds.
    pub frames: u64,
}

/// The metrics registry: the families, the per-topic series and the scrape.
pub struct Metrics {
    /// Every `framecast_` family kept between scrapes.
    registry: Registry,
    /// Collects the `process_*` metrics at each scrape.
    process: Registry,
    families: TopicFamilies,
    /// Which topics have their own series. A mutex because it is touched only at topic
    /// open, deletion and scrape, never per frame.
    topics: Mutex<TopicSlots>,
    max_topics: usize,
    /// Indexed like [`REJECT_CODES`].
    rejected: [Counter; 16],
    publish_duration: DurationHistogram,
    fsync_duration: DurationHistogram,
    connections: Family<[(&'static str, &'static str); 1], Gauge>,
    cluster_nodes: Family<[(&'static str, &'static str); 1], Gauge>,
}

/// The families labelled by topic, from which [`TopicMetrics`] are resolved.
struct TopicFamilies {
    published_frames: Family<TopicLabel, Counter>,
    published_bytes: Family<TopicLabel, Counter>,
    compactions: Family<TopicLabel, Counter>,
    maintenance_failures: Family<TopicLabel, Counter>,
    delivered_frames: Family<TopicTransportLabels, Counter>,
    subscribers: Family<TopicTransportLabels, Gauge>,
}

impl TopicFamilies {
    fn resolve(&self, topic: &str) -> TopicMetrics {
        let label = TopicLabel(topic.to_owned());
        let per_transport = |transport| TopicTransportLabels {
            topic: topic.to_owned(),
            transport,
        };
        TopicMetrics {
            published_frames: self.published_frames.get_or_create_owned(&label),
            published_bytes: self.published_bytes.get_or_create_owned(&label),
            compactions: self.compactions.get_or_create_owned(&label),
            maintenance_failures: self.maintenance_failures.get_or_create_owned(&label),
            delivered: Transport::ALL
                .map(|t| self.delivered_frames.get_or_create_owned(&per_transport(t))),
            subscribers: Transport::ALL
                .map(|t| self.subscribers.get_or_create_owned(&per_transport(t))),
        }
    }

    fn remove(&self, topic: &str) {
        let label = TopicLabel(topic.to_owned());
        self.published_frames.remove(&label);
        self.published_bytes.remove(&label);
        self.compactions.remove(&label);
        self.maintenance_failures.remove(&label);
        for transport in Transport::ALL {
            let labels = TopicTransportLabels {
                topic: topic.to_owned(),
                transport,
            };
            self.delivered_frames.remove(&labels);
            self.subscribers.remove(&labels);
        }
    }
}

/// The topics that have their own series, and the shared series of the rest (made on the
/// first overflow, so that a server under the limit shows no `_other` at all).
#[derive(Default)]
struct TopicSlots {
    named: HashMap<String, TopicMetrics>,
    other: Option<TopicMetrics>,
}

impl Metrics {
    /// A registry whose first `max_topics` topics get their own series
    /// (`--metrics-max-topics`, [`DEFAULT_MAX_TOPICS`]).
    pub fn new(max_topics: usize) -> Metrics {
        // `register` ends each help text with a period of its own.
        let mut registry = Registry::with_prefix(PREFIX);
        let families = TopicFamilies {
            published_frames: Family::default(),
            published_bytes: Family::default(),
            compactions: Family::default(),
            maintenance_failures: Family::default(),
            delivered_frames: Family::default(),
            subscribers: Family::default(),
        };
        registry.register(
            "published_frames",
            "Frames appended to the topic's log",
            families.published_frames.clone(),
        );
        registry.register(
            "published_bytes",
            "Payload bytes appended to the topic's log",
            families.published_bytes.clone(),
        );
        registry.register(
            "delivered_frames",
            "Frames sent to subscribers, by the door they came through",
            families.delivered_frames.clone(),
        );
        registry.register(
            "subscribers",
            "Subscriptions open now, by the door they came through",
            families.subscribers.clone(),
        );
        registry.register(
            "compactions",
            "Compactions committed",
            families.compactions.clone(),
        );
        registry.register(
            "maintenance_failures",
            "Retention or compaction passes that failed (retried later)",
            families.maintenance_failures.clone(),
        );

        let rejected_family = Family::<[(&'static str, &'static str); 1], Counter>::default();
        // Pre-created so that every code shows (at 0) from the start, and so that counting a
        // rejection indexes an array instead of hashing a label.
        let rejected =
            REJECT_CODES.map(|code| rejected_family.get_or_create_owned(&[("code", code)]));
        registry.register(
            "rejected_requests",
            "Requests refused, by lower-case gRPC status code name",
            rejected_family,
        );

        let publish_duration = DurationHistogram::doubling(PUBLISH_BUCKETS.0, PUBLISH_BUCKETS.1);
        registry.register(
            "publish_duration_seconds",
            "Time from a publish request received to its acknowledgement",
            publish_duration.clone(),
        );
        let fsync_duration = DurationHistogram::doubling(FSYNC_BUCKETS.0, FSYNC_BUCKETS.1);
        registry.register(
            "fsync_duration_seconds",
            "Time one sync of a topic's log took",
            fsync_duration.clone(),
        );

        let connections = Family::<[(&'static str, &'static str); 1], Gauge>::default();
        for listener in ["grpc", "http"] {
            connections.get_or_create_owned(&[("listener", listener)]);
        }
        registry.register(
            "connections",
            "Client connections open now, by listener",
            connections.clone(),
        );

        let cluster_nodes = Family::<[(&'static str, &'static str); 1], Gauge>::default();
        // A single node is a cluster of one: online and in sync.
        for state in ["online", "in_sync"] {
            cluster_nodes
                .get_or_create_owned(&[("state", state)])
                .set(1);
        }
        registry.register(
            "cluster_nodes",
            "Nodes of the cluster as this node sees it, by state (online: registered; in_sync: in the in-sync set, the leader included)",
            cluster_nodes.clone(),
        );

        let mut process = Registry::default();
        process.register_collector(Box::new(ProcessCollector));

        Metrics {
            registry,
            process,
            families,
            topics: Mutex::new(TopicSlots::default()),
            max_topics,
            rejected,
            publish_duration,
            fsync_duration,
            connections,
            cluster_nodes,
        }
    }

    /// cluster_nodes{state}: how many nodes this node sees `online` and `in_sync`.
    pub fn set_cluster_nodes(&self, online: u64, in_sync: u64) {
        for (state, n) in [("online", online), ("in_sync", in_sync)] {
            self.cluster_nodes
                .get_or_create_owned(&[("state", state)])
                .set(n as i64);
        }
    }

    /// Handles of one topic's series, resolved once (at topic open/creation). Past
    /// `max_topics` distinct topics, the handles of the shared topic="_other" series.
    pub fn topic(&self, name: &str) -> TopicMetrics {
        let mut slots = self.topics.lock();
        if let Some(handles) = slots.named.get(name) {
            return handles.clone();
        }
        if slots.named.len() < self.max_topics {
            let handles = self.families.resolve(name);
            slots.named.insert(name.to_owned(), handles.clone());
            return handles;
        }
        slots
            .other
            .get_or_insert_with(|| self.families.resolve(OTHER_TOPIC))
            .clone()
    }

    /// Drops a deleted topic's series (so deleted topics do not pile up) and frees its slot.
    ///
    /// Handles still held keep counting into detached series that no scrape shows. A topic
    /// counted under `_other` leaves its counts there: a counter never goes down.
    pub fn forget_topic(&self, name: &str) {
        let mut slots = self.topics.lock();
        if slots.named.remove(name).is_some() {
            self.families.remove(name);
        }
    }

    /// rejected_requests_total{code}: code is a lower-case gRPC code name ("unauthenticated",
    /// "permission_denied", "invalid_argument", "not_found", ...). A name that is not a gRPC
    /// code is counted under "unknown" (and is a bug: debug builds assert).
    pub fn rejected(&self, code: &'static str) {
        let index = REJECT_CODES.iter().position(|c| *c == code);
        debug_assert!(index.is_some(), "not a gRPC status code name: {code:?}");
        self.rejected[index.unwrap_or(UNKNOWN_CODE)].inc();
    }

    /// publish_duration_seconds: one publish, from request received to acknowledgement.
    pub fn observe_publish(&self, d: Duration) {
        self.publish_duration.observe(d);
    }

    /// publish_duration_seconds: `n` publishes of one log request, each from request
    /// received to acknowledgement.
    pub fn observe_publishes(&self, d: Duration, n: u64) {
        self.publish_duration.observe_n(d, n);
    }

    /// fsync_duration_seconds: one sync of a topic's log.
    pub fn observe_fsync(&self, d: Duration) {
        self.fsync_duration.observe(d);
    }

    /// connections{listener}: `inc` when a connection is accepted, `dec` when it closes.
    /// `listener` is "grpc" or "http"; resolve once per listener, not per connection.
    pub fn connections(&self, listener: &'static str) -> Gauge {
        self.connections
            .get_or_create_owned(&[("listener", listener)])
    }

    /// The whole exposition in OpenMetrics text ([`CONTENT_TYPE`]): every registered
    /// family, then the scrape-time topic gauges and replication lags computed by the
    /// caller, then the process metrics. A topic without its own series (past `max_topics`)
    /// is added into `topic="_other"`: its figures summed, its lags the largest.
    pub fn encode(&self, topics: &[TopicGauges], replicas: &[ReplicaLag]) -> String {
        let mut rows = Vec::with_capacity(topics.len() + 1);
        let mut other: Option<TopicGauges> = None;
        let mut lags: Vec<ReplicaLag> = Vec::with_capacity(replicas.len());
        {
            let slots = self.topics.lock();
            let mut other_lags: std::collections::BTreeMap<&str, u64> = Default::default();
            for lag in replicas {
                if slots.named.contains_key(&lag.topic) {
                    lags.push(lag.clone());
                } else {
                    let worst = other_lags.entry(lag.node.as_str()).or_default();
                    *worst = (*worst).max(lag.frames);
                }
            }
            lags.extend(other_lags.into_iter().map(|(node, frames)| ReplicaLag {
                topic: OTHER_TOPIC.to_owned(),
                node: node.to_owned(),
                frames,
            }));
            for gauges in topics {
                if slots.named.contains_key(&gauges.topic) {
                    rows.push(gauges.clone());
                    continue;
                }
                let sum = other.get_or_insert_with(|| TopicGauges {
                    topic: OTHER_TOPIC.to_owned(),
                    ..TopicGauges::default()
                });
                sum.next_offset = sum.next_offset.saturating_add(gauges.next_offset);
                sum.first_offset = sum.first_offset.saturating_add(gauges.first_offset);
                sum.stored_bytes = sum.stored_bytes.saturating_add(gauges.stored_bytes);
                sum.max_lag_frames = sum.max_lag_frames.max(gauges.max_lag_frames);
            }
        }
        rows.extend(other);
        let mut scraped = Registry::with_prefix(PREFIX);
        scraped.register_collector(Box::new(TopicGaugesCollector { rows, lags }));

        let mut out = String::with_capacity(64 * 1024);
        let written = encode_registry(&mut out, &self.registry)
            .and_then(|()| encode_registry(&mut out, &scraped))
            .and_then(|()| encode_registry(&mut out, &self.process))
            .and_then(|()| encode_eof(&mut out));
        // Writing into a String cannot fail, and no encoder here makes an error of its own.
        if written.is_err() {
            tracing::error!("metrics exposition failed to encode");
        }
        out
    }
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let slots = self.topics.lock();
        f.debug_struct("Metrics")
            .field("max_topics", &self.max_topics)
            .field("topics", &slots.named.len())
            .field("other", &slots.other.is_some())
            .finish_non_exhaustive()
    }
}

/// The `topic` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct TopicLabel(String);

impl EncodeLabelSet for TopicLabel {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> fmt::Result {
        EncodeLabel::encode(&("topic", self.0.as_str()), encoder.encode_label())
    }
}

/// The `topic` and `transport` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct TopicTransportLabels {
    topic: String,
    transport: Transport,
}

impl EncodeLabelSet for TopicTransportLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> fmt::Result {
        EncodeLabel::encode(&("topic", self.topic.as_str()), encoder.encode_label())?;
        EncodeLabel::encode(
            &("transport", self.transport.as_str()),
            encoder.encode_label(),
        )
    }
}

/// A histogram of durations that takes no lock: `prometheus-client`'s `Histogram` sits
/// behind a mutex, and publish is the hot path. Bounds are whole nanoseconds, so placing an
/// observation compares integers; the count is the sum of the buckets, so `_count` and the
/// `+Inf` bucket always agree (only `_sum` may lag an observation being recorded).
#[derive(Clone, Debug)]
struct DurationHistogram(Arc<HistogramCells>);

#[derive(Debug)]
struct HistogramCells {
    /// Upper bounds (inclusive, as `le` is), ascending.
    bounds_ns: Box<[u64]>,
    /// One more than the bounds: the last counts what is above every bound (`+Inf`).
    buckets: Box<[AtomicU64]>,
    sum_ns: AtomicU64,
}

impl DurationHistogram {
    /// `count` bounds from `first_ns`, each twice the one before.
    fn doubling(first_ns: u64, count: u32) -> DurationHistogram {
        let bounds_ns: Box<[u64]> = (0..count).map(|i| first_ns << i).collect();
        let buckets = (0..=bounds_ns.len()).map(|_| AtomicU64::new(0)).collect();
        DurationHistogram(Arc::new(HistogramCells {
            bounds_ns,
            buckets,
            sum_ns: AtomicU64::new(0),
        }))
    }

    fn observe(&self, d: Duration) {
        self.observe_n(d, 1);
    }

    /// `n` observations of `d`.
    fn observe_n(&self, d: Duration, n: u64) {
        if n == 0 {
            return;
        }
        let cells = &*self.0;
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let bucket = cells.bounds_ns.partition_point(|&bound| bound < ns);
        cells.buckets[bucket].fetch_add(n, Ordering::Relaxed);
        cells
            .sum_ns
            .fetch_add(ns.saturating_mul(n), Ordering::Relaxed);
    }
}

impl TypedMetric for DurationHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for DurationHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> fmt::Result {
        let cells = &*self.0;
        let upper_bounds = cells
            .bounds_ns
            .iter()
            .map(|&ns| ns as f64 / 1e9)
            .chain([f64::INFINITY]);
        let buckets: Vec<(f64, u64)> = upper_bounds
            .zip(cells.buckets.iter())
            .map(|(le, n)| (le, n.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = cells.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        encoder
            .encode_histogram::<prometheus_client::encoding::NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// The scrape-time topic gauges and replication lags of one scrape.
#[derive(Debug)]
struct TopicGaugesCollector {
    rows: Vec<TopicGauges>,
    lags: Vec<ReplicaLag>,
}

impl Collector for TopicGaugesCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        type Read = fn(&TopicGauges) -> u64;
        let families: [(&str, &str, Read); 4] = [
            (
                "topic_next_offset",
                "Offset the topic's next frame will get.",
                |t| t.next_offset,
            ),
            (
                "topic_first_offset",
                "Offset of the topic's oldest stored frame.",
                |t| t.first_offset,
            ),
            (
                "topic_stored_bytes",
                "Bytes of the topic's log on disk.",
                |t| t.stored_bytes,
            ),
            (
                "subscriber_max_lag_frames",
                "Largest durable frontier minus position among the topic's subscribers.",
                |t| t.max_lag_frames,
            ),
        ];
        for (name, help, read) in families {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for row in &self.rows {
                family
                    .encode_family(&[("topic", row.topic.as_str())])?
                    .encode_gauge(&read(row))?;
            }
        }
        if !self.lags.is_empty() {
            let mut family = encoder.encode_descriptor(
                "replication_lag_frames",
                "Frames of the leader's durable end a follower does not hold yet.",
                None,
                MetricType::Gauge,
            )?;
            for lag in &self.lags {
                family
                    .encode_family(&[("topic", lag.topic.as_str()), ("node", lag.node.as_str())])?
                    .encode_gauge(&lag.frames)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a failed unwrap is the test failing

    use super::*;
    use std::collections::HashSet;

    /// An exposition parsed by lines, checked for the shape Prometheus needs on the way.
    struct Exposition {
        /// `name{labels}` → value.
        samples: HashMap<String, f64>,
    }

    impl Exposition {
        fn parse(text: &str) -> Exposition {
            let lines: Vec<&str> = text.lines().collect();
            assert_eq!(lines.last(), Some(&"# EOF"), "ends in # EOF");
            let mut helped = HashSet::new();
            let mut typed = HashMap::new();
            let mut samples = HashMap::new();
            for line in &lines[..lines.len() - 1] {
                if let Some(rest) = line.strip_prefix("# HELP ") {
                    let name = rest.split(' ').next().unwrap();
                    assert!(!rest.ends_with(".."), "help ends in one period: {rest}");
                    assert!(helped.insert(name.to_owned()), "one HELP for {name}");
                } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                    let (name, kind) = rest.split_once(' ').unwrap();
                    assert!(helped.contains(name), "HELP before TYPE for {name}");
                    assert!(
                        typed.insert(name.to_owned(), kind.to_owned()).is_none(),
                        "one TYPE for {name}"
                    );
                } else {
                    assert!(!line.starts_with('#'), "unexpected comment {line}");
                    let (series, value) = line.rsplit_once(' ').unwrap();
                    let name = series.split('{').next().unwrap();
                    let family = typed
                        .keys()
                        .find(|f| {
                            name == f.as_str()
                                || name.strip_prefix(f.as_str()).is_some_and(|s| {
                                    ["_total", "_sum", "_count", "_bucket"].contains(&s)
                                })
                        })
                        .unwrap_or_else(|| panic!("{name} belongs to no declared family"));
                    assert!(
                        name.starts_with("framecast_") || name.starts_with("process_"),
                        "{family}"
                    );
                    let value: f64 = value.parse().unwrap();
                    assert!(
                        samples.insert(series.to_owned(), value).is_none(),
                        "one sample per series: {series}"
                    );
                }
            }
            Exposition { samples }
        }

        fn get(&self, series: &str) -> Option<f64> {
            self.samples.get(series).copied()
        }

        fn value(&self, series: &str) -> f64 {
            self.get(series)
                .unwrap_or_else(|| panic!("no sample {series} in {:?}", self.samples.keys()))
        }

        /// Every series whose labels include `label`.
        fn with_label(&self, label: &str) -> Vec<&str> {
            self.samples
                .keys()
                .filter(|s| s.contains(&format!("{{{label}")) || s.contains(&format!(",{label}")))
                .map(String::as_str)
                .collect()
        }
    }

    fn scrape(metrics: &Metrics, topics: &[TopicGauges]) -> Exposition {
        Exposition::parse(&metrics.encode(topics, &[]))
    }

    fn gauges(topic: &str, n: u64) -> TopicGauges {
        TopicGauges {
            topic: topic.to_owned(),
            next_offset: 100 * n,
            first_offset: 10 * n,
            stored_bytes: 1000 * n,
            max_lag_frames: n,
        }
    }

    #[test]
    fn handles_resolved_once_add_up_exactly() {
        let metrics = Metrics::new(DEFAULT_MAX_TOPICS);
        let a = metrics.topic("a");
        for _ in 0..5 {
            a.published_frames.inc();
            a.published_bytes.inc_by(10);
        }
        let text = scrape(&metrics, &[]);
        assert_eq!(
            text.value(r#"framecast_published_frames_total{topic="a"}"#),
            5.0
        );
        assert_eq!(
            text.value(r#"framecast_published_bytes_total{topic="a"}"#),
            50.0
        );
        assert_eq!(text.value(r#"framecast_compactions_total{topic="a"}"#), 0.0);

        // A second resolution and threads all count into the same series.
        let again = metrics.topic("a");
        std::thread::scope(|s| {
            for handles in [&a, &again] {
                s.spawn(move || {
                    for _ in 0..10_000 {
                        handles.published_frames.inc();
                    }
                });
            }
        });
        let text = scrape(&metrics, &[]);
        assert_eq!(
            text.value(r#"framecast_published_frames_total{topic="a"}"#),
            20_005.0
        );
    }

    #[test]
    fn delivered_and_subscribers_are_per_transport() {
        let metrics = Metrics::new(DEFAULT_MAX_TOPICS);
        let t = metrics.topic("t");
        t.delivered(Transport::Sse).inc_by(3);
        t.delivered(Transport::Ws).inc();
        t.subscribers(Transport::GrpcWeb).inc();
        t.subscribers(Transport::GrpcWeb).inc();
        t.subscribers(Transport::GrpcWeb).dec();
        t.subscribers(Transport::Grpc).inc();

        let text = scrape(&metrics, &[]);
        let delivered = |tr: &str| {
            text.value(&format!(
                r#"framecast_delivered_frames_total{{topic="t",transport="{tr}"}}"#
            ))
        };
        let subscribers = |tr: &str| {
            text.value(&format!(
                r#"framecast_subscribers{{topic="t",transport="{tr}"}}"#
            ))
        };
        assert_eq!(
            [
                delivered("grpc"),
                delivered("grpc_web"),
                delivered("sse"),
                delivered("ws")
            ],
            [0.0, 0.0, 3.0, 1.0]
        );
        assert_eq!(
            [
                subscribers("grpc"),
                subscribers("grpc_web"),
                subscribers("sse"),
                subscribers("ws")
            ],
            [1.0, 1.0, 0.0, 0.0]
        );
        let names: Vec<_> = Transport::ALL.iter().map(|t| t.as_str()).collect();
        assert_eq!(names, ["grpc", "grpc_web", "sse", "ws"]);
    }

    #[test]
    fn topics_past_the_limit_share_other() {
        let metrics = Metrics::new(2);
        let text = scrape(&metrics, &[]);
        assert!(
            text.with_label(r#"topic="_other""#).is_empty(),
            "no _other under the limit"
        );

        let a = metrics.topic("a");
        let _b = metrics.topic("b");
        let c = metrics.topic("c");
        let d = metrics.topic("d");
        a.published_frames.inc_by(2);
        c.published_frames.inc_by(7);
        d.published_frames.inc();
        c.delivered(Transport::Ws).inc_by(4);

        let topics = [
            gauges("a", 1),
            gauges("b", 2),
            gauges("c", 3),
            gauges("d", 5),
        ];
        let text = scrape(&metrics, &topics);
        assert_eq!(
            text.value(r#"framecast_published_frames_total{topic="a"}"#),
            2.0
        );
        assert_eq!(
            text.value(r#"framecast_published_frames_total{topic="_other"}"#),
            8.0
        );
        assert_eq!(
            text.value(r#"framecast_delivered_frames_total{topic="_other",transport="ws"}"#),
            4.0
        );
        assert!(text.with_label(r#"topic="c""#).is_empty());
        assert!(text.with_label(r#"topic="d""#).is_empty());

        // Scrape-time gauges: own topics as given, the rest summed (lag: the largest).
        assert_eq!(
            text.value(r#"framecast_topic_next_offset{topic="b"}"#),
            200.0
        );
        assert_eq!(
            text.value(r#"framecast_topic_next_offset{topic="_other"}"#),
            800.0
        );
        assert_eq!(
            text.value(r#"framecast_topic_first_offset{topic="_other"}"#),
            80.0
        );
        assert_eq!(
            text.value(r#"framecast_topic_stored_bytes{topic="_other"}"#),
            8000.0
        );
        assert_eq!(
            text.value(r#"framecast_subscriber_max_lag_frames{topic="a"}"#),
            1.0
        );
        assert_eq!(
            text.value(r#"framecast_subscriber_max_lag_frames{topic="_other"}"#),
            5.0
        );
        // Per family: a, b and _other, nothing else.
        assert_eq!(
            text.samples
                .keys()
                .filter(|s| s.starts_with("framecast_topic_next_offset"))
                .count(),
            3
        );
    }

    #[test]
    fn replication_lags_by_topic_and_node_with_the_rest_under_other_at_their_largest() {
        let metrics = Metrics::new(1);
        let _a = metrics.topic("a");
        let _b = metrics.topic("b");
        let _c = metrics.topic("c");
        let lag = |topic: &str, node: &str, frames| ReplicaLag {
            topic: topic.to_owned(),
            node: node.to_owned(),
            frames,
        };
        // No lags (a follower, a single node): no family at all.
        let text = scrape(&metrics, &[]);
        assert!(!text
            .samples
            .keys()
            .any(|s| s.starts_with("framecast_replication_lag_frames")));
        let lags = [
            lag("a", "n2", 3),
            lag("a", "n3", 0),
            lag("b", "n2", 5),
            lag("c", "n2", 9),
            lag("c", "n3", 1),
        ];
        let text = Exposition::parse(&metrics.encode(&[], &lags));
        let value =
            |labels: &str| text.value(&format!("framecast_replication_lag_frames{{{labels}}}"));
        assert_eq!(value(r#"topic="a",node="n2""#), 3.0);
        assert_eq!(value(r#"topic="a",node="n3""#), 0.0);
        assert_eq!(value(r#"topic="_other",node="n2""#), 9.0);
        assert_eq!(value(r#"topic="_other",node="n3""#), 1.0);
        assert_eq!(
            text.samples
                .keys()
                .filter(|s| s.starts_with("framecast_replication_lag_frames"))
                .count(),
            4
        );
    }

    #[test]
    fn the_text_format_names_counters_by_their_samples_and_drops_what_it_lacks() {
        let metrics = Metrics::new(DEFAULT_MAX_TOPICS);
        metrics.topic("a").published_frames.inc_by(3);
        metrics.observe_fsync(Duration::from_millis(2));
        let open = metrics.encode(&[gauges("a", 1)], &[]);
        let text = text_format(&open);
        assert!(
            !text.contains("# EOF") && !text.contains("# UNIT"),
            "{text}"
        );
        assert!(text.contains("# TYPE framecast_published_frames_total counter\n"));
        assert!(text.contains("# HELP framecast_published_frames_total "));
        assert!(text.contains("# TYPE process_cpu_seconds_total counter\n"));
        assert!(text.contains("# TYPE framecast_fsync_duration_seconds histogram\n"));
        assert!(text.contains("# TYPE framecast_topic_next_offset gauge\n"));
        // Every sample line as it was, in order; every TYPE names the samples after it.
        let samples = |t: &str| -> Vec<String> {
            t.lines()
                .filter(|l| !l.starts_with('#'))
                .map(str::to_owned)
                .collect()
        };
        assert_eq!(samples(&text), samples(&open));
        let mut family = "";
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                family = rest.split(' ').next().unwrap();
            } else if !line.starts_with('#') {
                assert!(line.starts_with(family), "{line} under TYPE {family}");
            }
        }
        assert!(wants_openmetrics(
            "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.3"
        ));
        assert!(!wants_openmetrics("*/*"));
    }

    #[test]
    fn forget_topic_removes_its_series_and_frees_its_slot() {
        let metrics = Metrics::new(1);
        let a = metrics.topic("a");
        a.published_frames.inc();
        a.subscribers(Transport::Sse).inc();
        assert!(!scrape(&metrics, &[]).with_label(r#"topic="a""#).is_empty());

        metrics.forget_topic("a");
        // A handle still held counts into a detached series that no scrape shows.
        a.published_frames.inc();
        let text = scrape(&metrics, &[gauges("a", 1)]);
        assert_eq!(text.with_label(r#"topic="a""#), Vec::<&str>::new());

        // The freed slot goes to the next topic, which starts from zero.
        let b = metrics.topic("b");
        b.published_frames.inc();
        let text = scrape(&metrics, &[]);
        assert_eq!(
            text.value(r#"framecast_published_frames_total{topic="b"}"#),
            1.0
        );
        assert!(text.with_label(r#"topic="_other""#).is_empty());

        // Forgetting a topic that never had its own series changes nothing.
        let c = metrics.topic("c");
        c.published_frames.inc();
        metrics.forget_topic("c");
        let text = scrape(&metrics, &[]);
        assert_eq!(
            text.value(r#"framecast_published_frames_total{topic="_other"}"#),
            1.0
        );
        assert_eq!(
            text.value(r#"framecast_published_frames_total{topic="b"}"#),
            1.0
        );
    }

    #[test]
    fn rejected_counts_by_code() {
        assert_eq!(REJECT_CODES[UNKNOWN_CODE], "unknown");
        let metrics = Metrics::new(DEFAULT_MAX_TOPICS);
        let text = scrape(&metrics, &[]);
        for code in REJECT_CODES {
            assert_eq!(
                text.value(&format!(
                    r#"framecast_rejected_requests_total{{code="{code}"}}"#
                )),
                0.0
            );
        }
        metrics.rejected("unauthenticated");
        metrics.rejected("unauthenticated");
        metrics.rejected("not_found");
        let text = scrape(&metrics, &[]);
        let rejected = |code: &str| {
            text.value(&format!(
                r#"framecast_rejected_requests_total{{code="{code}"}}"#
            ))
        };
        assert_eq!(rejected("unauthenticated"), 2.0);
        assert_eq!(rejected("not_found"), 1.0);
        assert_eq!(rejected("permission_denied"), 0.0);
        let total: f64 = REJECT_CODES.iter().map(|c| rejected(c)).sum();
        assert_eq!(total, 3.0);
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "not a gRPC status code name")]
    fn rejected_with_a_made_up_code_asserts() {
        Metrics::new(1).rejected("nope");
    }

    #[test]
    fn histograms_count_and_bucket_observations() {
        let metrics = Metrics::new(DEFAULT_MAX_TOPICS);
        for _ in 0..3 {
            metrics.observe_publish(Duration::from_micros(100));
        }
        metrics.observe_publish(Duration::from_secs(60));
        metrics.observe_fsync(Duration::from_millis(1));

        let text = scrape(&metrics, &[]);
        let publish = "framecast_publish_duration_seconds";
        assert_eq!(text.value(&format!("{publish}_count")), 4.0);
        assert!((text.value(&format!("{publish}_sum")) - 60.0003).abs() < 1e-9);
        // `le` is inclusive: exactly 100 µs is in the 100 µs bucket, not above it.
        assert_eq!(
            text.value(&format!(r#"{publish}_bucket{{le="0.00005"}}"#)),
            0.0
        );
        assert_eq!(
            text.value(&format!(r#"{publish}_bucket{{le="0.0001"}}"#)),
            3.0
        );
        assert_eq!(
            text.value(&format!(r#"{publish}_bucket{{le="13.1072"}}"#)),
            3.0
        );
        assert_eq!(
            text.value(&format!(r#"{publish}_bucket{{le="+Inf"}}"#)),
            4.0
        );

        let fsync = "framecast_fsync_duration_seconds";
        assert_eq!(text.value(&format!("{fsync}_count")), 1.0);
        assert_eq!(
            text.value(&format!(r#"{fsync}_bucket{{le="0.00001"}}"#)),
            0.0
        );
        assert_eq!(
            text.value(&format!(r#"{fsync}_bucket{{le="0.00064"}}"#)),
            0.0
        );
        assert_eq!(
            text.value(&format!(r#"{fsync}_bucket{{le="0.00128"}}"#)),
            1.0
        );
        assert_eq!(
            text.value(&format!(r#"{fsync}_bucket{{le="10.48576"}}"#)),
            1.0
        );

        // Buckets are cumulative and ascending.
        let mut buckets: Vec<(f64, f64)> = text
            .samples
            .iter()
            .filter_map(|(s, v)| {
                let le = s.strip_prefix(&format!(r#"{publish}_bucket{{le=""#))?;
                let le = le.trim_end_matches("\"}");
                Some((
                    if le == "+Inf" {
                        f64::INFINITY
                    } else {
                        le.parse().unwrap()
                    },
                    *v,
                ))
            })
            .collect();
        buckets.sort_by(|x, y| x.0.total_cmp(&y.0));
        assert_eq!(buckets.len(), 20);
        assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1));
    }

    #[test]
    fn connections_by_listener() {
        let metrics = Metrics::new(DEFAULT_MAX_TOPICS);
        let grpc = metrics.connections("grpc");
        grpc.inc();
        grpc.inc();
        metrics.connections("grpc").dec();
        let text = scrape(&metrics, &[]);
        assert_eq!(text.value(r#"framecast_connections{listener="grpc"}"#), 1.0);
        assert_eq!(text.value(r#"framecast_connections{listener="http"}"#), 0.0);
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn process_metrics_are_in_the_exposition() {
        let text = scrape(&Metrics::new(DEFAULT_MAX_TOPICS), &[]);
        assert!(text.value("process_resident_memory_bytes") > 0.0);
        assert!(text.value("process_open_fds") > 0.0);
        assert!(text.value("process_cpu_seconds_total") >= 0.0);
        assert!(text.value("process_threads") >= 1.0);
        let (maps, limit) = (
            text.value("framecast_memory_mappings"),
            text.value("framecast_memory_mappings_limit"),
        );
        assert!(maps > 5.0 && limit > maps, "{maps} of {limit}");
        // Started after 2020 and not in the future.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let start = text.value("process_start_time_seconds");
        assert!(start > 1.577e9 && start <= now + 1.0, "{start}");
    }
}
