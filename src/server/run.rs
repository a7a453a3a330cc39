//! Running the server: recover, serve until the shutdown signal, drain, sync.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use tokio::time::Instant as Deadline;

use tokio::net::TcpListener;
use tonic::codec::CompressionEncoding;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;
use tracing::{error, info, warn};

use super::config::ServerConfig;
use super::service::BroadcastService;
use crate::broker::cluster_view::{ClusterView, ThisNode, STANDALONE_NODE_ID};
use crate::broker::metrics::{Metrics, DEFAULT_MAX_TOPICS};
use crate::broker::token::Authenticator;
use crate::broker::{shutdown, Broker, Error, Result, Topics};
use crate::http::HttpDoor;
use crate::proto::{self, broadcast_server::BroadcastServer};
use crate::wal::{mappings, SyncObserver};
use futures::StreamExt;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::task::TaskTracker;

/// Holds the data directory's lock file for the life of the server, so two servers never
/// write one directory.
#[derive(Debug)]
pub struct DataDirLock {
    file: std::fs::File,
}

impl DataDirLock {
    /// The lock file's device and inode (`dev:ino`): the same across this directory's runs
    /// while it stays mounted as it is, another for another directory, even one at the same
    /// path in another container. (A remount may change it: a restarted node then waits for
    /// its earlier run's lease to lapse.)
    pub fn identity(&self) -> String {
        use std::os::unix::fs::MetadataExt;
        self.file
            .metadata()
            .map(|m| format!("{}:{}", m.dev(), m.ino()))
            .unwrap_or_default()
    }

    /// Takes `<data_dir>/LOCK`, failing at once if another process holds it.
    pub fn acquire(data_dir: &std::path::Path) -> Result<DataDirLock> {
        std::fs::create_dir_all(data_dir).map_err(|e| crate::wal::Error::io(data_dir, e))?;
        let path = data_dir.join("LOCK");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| crate::wal::Error::io(&path, e))?;
        match file.try_lock() {
            Ok(()) => Ok(DataDirLock { file }),
            Err(std::fs::TryLockError::WouldBlock) => {
                Err(Error::Wal(crate::wal::Error::Unavailable(format!(
                    "{} is locked by another framecast process",
                    path.display()
                ))))
            }
            Err(std::fs::TryLockError::Error(e)) => Err(crate::wal::Error::io(&path, e).into()),
        }
    }
}

/// Checks that `data_dir` holds a framecast data directory (its `topics/`), so that an
/// offline tool run on a mistyped path says so instead of creating an empty one.
pub fn require_data_dir(data_dir: &std::path::Path) -> Result<()> {
    if data_dir.join("topics").is_dir() {
        return Ok(());
    }
    Err(Error::InvalidArgument(format!(
        "no framecast data dir at {} (it has no topics/ directory; give the --data-dir a server ran with)",
        data_dir.display()
    )))
}

/// `framecast compact`: on a stopped server's data dir, applies retention and merges every
/// topic's sealed segments and runs into one sorted run. Returns a report per topic, `None`
/// for a topic left alone: a cluster node's copy (its term history names a cluster term).
/// Which of its frames are committed is known only while the cluster runs, and frames above
/// the commit point may have to be cut for a new leader, which a compacted run does not
/// allow: such a copy compacts online, below its commit point. Naming one with `only` is an
/// error.
///
/// `dedup_window`: idempotency keys older than this are dropped from the runs written;
/// `None` keeps every key (offline, the window the server runs with is not known, and a
/// key dropped too early would let a retry append its frame twice). `max_run_bytes`: the
/// most record bytes a run holds (a larger log becomes several runs).
pub fn compact_offline(
    data_dir: &std::path::Path,
    only: Option<&str>,
    dedup_window: Option<std::time::Duration>,
    max_run_bytes: u64,
) -> Result<Vec<(String, Option<crate::wal::CompactionReport>)>> {
    require_data_dir(data_dir)?;
    let _lock = DataDirLock::acquire(data_dir)?;
    let metrics = Arc::new(Metrics::new(DEFAULT_MAX_TOPICS));
    let config = crate::wal::LogConfig {
        dedup_window: dedup_window.unwrap_or(std::time::Duration::MAX),
        ..crate::wal::LogConfig::default()
    };
    let topics = Topics::open(data_dir, config, false, metrics)?;
    let mut out = Vec::new();
    for t in topics.list() {
        if only.is_some_and(|o| o != t.name()) {
            continue;
        }
        let term = t.terms().last_term();
        if term > 0 {
            if only.is_some() {
                topics.close_all();
                return Err(Error::InvalidArgument(format!(
                    "topic '{}' is a cluster node's copy (term {term}): it compacts while the \
                     node runs, below its commit point; offline, which frames a new leader may \
                     cut is unknown, so it is left alone",
                    t.name()
                )));
            }
            info!(topic = t.name(), term, "a cluster node's copy: left alone");
            out.push((t.name().to_string(), None));
            continue;
        }
        t.log().apply_retention(crate::wal::now_ns())?;
        let opts = crate::wal::CompactOptions {
            bytes_per_sec: None,
            max_runs: 1,
            max_run_bytes,
        };
        out.push((t.name().to_string(), Some(t.log().compact(&opts)?)));
    }
    if let Some(o) = only {
        if out.is_empty() {
            return Err(Error::TopicNotFound(o.to_string()));
        }
    }
    topics.close_all();
    Ok(out)
}

/// gzip and zstd requests are accepted; responses are compressed only when the client
/// lists one of them in `grpc-accept-encoding` (tonic picks the first the client lists), so a
/// client that advertises nothing gets plain messages. Once chosen, every message of a
/// response stream is compressed, small ones too (tonic has no size threshold).
fn compressed(service: BroadcastServer<BroadcastService>) -> BroadcastServer<BroadcastService> {
    service
        .accept_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Zstd)
        .send_compressed(CompressionEncoding::Gzip)
        .send_compressed(CompressionEncoding::Zstd)
}

/// Recovers every topic, then serves on `listener` until `signal` completes; then stops
/// accepting, ends open streams with UNAVAILABLE, finishes in-flight publishes and syncs.
///
/// Every task the server spawns (maintenance, publish stream readers) is tracked, and
/// shutdown waits for all of them up to `shutdown_grace` after the signal.
pub async fn run(
    config: ServerConfig,
    listener: TcpListener,
    signal: impl Future<Output = ()>,
) -> Result<()> {
    let mut signal = std::pin::pin!(signal);
    let lock = DataDirLock::acquire(&config.data_dir)?;
    // Keys are read before recovery, so a wrong path fails at once.
    let auth = Authenticator::from_files(
        config.auth_jwt_secret_files.iter().map(PathBuf::as_path),
        config.auth_jwt_public_keys.iter().map(PathBuf::as_path),
    )
    .map_err(Error::InvalidArgument)?
    .map(|auth| auth.expecting(config.auth_expected.clone()));
    if auth.is_none() && config.auth_expected != Default::default() {
        return Err(Error::InvalidArgument(
            "--auth-issuer and --auth-audience need --auth-jwt-secret-file or \
             --auth-jwt-public-key"
                .to_string(),
        ));
    }
    // Certificates too: a bad file stops startup before recovery, with its name.
    let tls_offering = |alpn: &[&[u8]]| {
        config
            .tls
            .as_ref()
            .map(|files| super::tls::server_config(files, alpn))
            .transpose()
            .map_err(Error::InvalidArgument)
    };
    let tls = tls_offering(super::tls::ALPN_GRPC)?;
    // The HTTP door offers HTTP/2 and HTTP/1.1 over the same certificates.
    let http_tls = tls_offering(super::tls::ALPN_HTTP)?;
    let beyond_loopback = !config.listen.ip().is_loopback()
        || config.http_listen.is_some_and(|h| !h.ip().is_loopback());
    match &auth {
        Some(a) => info!(algorithms = %a.accepted(), "every call needs a bearer token"),
        None if beyond_loopback => warn!(
            listen = %config.listen,
            "listening beyond loopback with no authentication: anyone who can reach this \
             port can publish, read and delete every topic (give --auth-jwt-secret-file or \
             --auth-jwt-public-key)"
        ),
        None => {}
    }
    if tls.is_none() && beyond_loopback {
        warn!(
            listen = %config.listen,
            "listening beyond loopback without TLS: frames and tokens cross the network in \
             the clear (give --tls-cert and --tls-key)"
        );
    }
    let started = Instant::now();
    let metrics = Arc::new(Metrics::new(config.metrics_max_topics));
    let cors = crate::http::cors::layer(&config.cors_origins).map_err(Error::InvalidArgument)?;
    // The HTTP door listens before recovery, so that /healthz can say "starting".
    let door = HttpDoor::new(
        config.metrics_public,
        crate::http::origin::Origins::new(&config.cors_origins),
    );
    let (http_stop, http_stopped) = tokio::sync::oneshot::channel::<()>();
    // --max-connections counts the connections of both doors together.
    let connection_permits = super::connections::Permits::new(config.max_connections);
    let http = match config.http_listen {
        Some(at) => Some(
            start_http(
                HttpListener {
                    at,
                    tls: http_tls,
                    connections: connection_permits.clone(),
                    grace: config.shutdown_grace,
                    keepalive: config.keepalive_interval,
                    cors: cors.clone(),
                },
                &door,
                &metrics,
                http_stopped,
            )
            .await?,
        ),
        None => None,
    };
    let mut log_config = config.log.clone();
    let observed = Arc::clone(&metrics);
    log_config.sync_observer = Some(SyncObserver(Arc::new(move |d| observed.observe_fsync(d))));
    let (data_dir, auto) = (config.data_dir.clone(), config.auto_create_topics);
    let opened = Arc::clone(&metrics);
    let replicated = config.cluster.is_some();
    // A cluster node appends new frames only while it leads (see `Leader::start`).
    log_config.local_appends = crate::wal::Switch::new(!replicated);
    let topics = tokio::task::spawn_blocking(move || {
        Topics::open_with(&data_dir, log_config, auto, opened, replicated)
    })
    .await
    .map_err(|e| Error::Metadata {
        path: "topics".into(),
        reason: e.to_string(),
    })??;
    let topics = Arc::new(topics);
    // What recovery read back may still be only in the page cache (a crash between a write
    // and its sync): durable before anything is served (no subscriber is handed a frame a
    // power cut could take back; the commit syncs that follow cover only new ranges) and
    // before the policy below is recorded over the one the data was written under.
    let topics_dir = config.data_dir.join("topics");
    let dir = if topics_dir.is_dir() {
        topics_dir
    } else {
        config.data_dir.clone()
    };
    tokio::task::spawn_blocking(move || crate::wal::sync_filesystem(&dir))
        .await
        .map_err(|e| Error::Metadata {
            path: "topics".into(),
            reason: e.to_string(),
        })??;
    // From here on frames are written under this run's policy: remember it for the next
    // recovery (see `last_fsync`).
    super::last_fsync::record(&config.data_dir, config.log.fsync)?;
    let (held, limit) = (mappings::in_use(), mappings::limit());
    info!(
        topics = topics.list().len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        memory_mappings = held,
        max_map_count = limit,
        "recovery done"
    );
    if let (Some(n), Some(max)) = (held, limit) {
        // Files are what grows: half the limit held by them is half the topics a node
        // can take.
        if n.saturating_mul(2) >= max {
            warn!(
                memory_mappings = n,
                max_map_count = max,
                "half the kernel's limit on memory mappings is in use: every segment and \
                 run is one; raise vm.max_map_count (README, \"Limits of one node\")"
            );
        }
    }

    let (trigger, shutdown) = shutdown::channel();
    // The tasks the server spawns (publish stream readers, maintenance, readiness), which
    // shutdown waits for.
    let tasks = TaskTracker::new();
    let all_done = tasks.clone();
    let config = Arc::new(config);
    // Beside its payload a message carries its other fields: a Broadcast names up to
    // 10,000 topics of up to 128 bytes (3 more bytes of framing each), 1.3 MB.
    let fields = crate::broker::broadcast::MAX_TOPICS * (128 + 3) + (64 << 10);
    // Saturating: a config that skipped `LogConfig::validate` must not wrap to a tiny limit.
    let max_message = config
        .log
        .max_frame_bytes
        .saturating_add(fields.max(1 << 20))
        .max(8 << 20);
    let this = this_node(&config, &listener, &http)?;
    let cluster = match &config.cluster {
        None => ClusterView::single_node(Arc::clone(&topics), this),
        Some(_) => ClusterView::cluster_node(Arc::clone(&topics), this),
    };
    let broker = Broker::new(
        Arc::clone(&topics),
        shutdown.clone(),
        config.max_subscribers,
        auth,
        cluster,
    )
    .with_publish_budget(config.max_queued_publish_bytes);
    // A cluster node joins before it listens: it refuses writes until it leads. A signal
    // while it joins (etcd slow or out of reach) stops it there, cleanly.
    let (replication, mut node_life) = match &config.cluster {
        None => (None, None),
        Some(c) => {
            // The home it registers: this directory, whose lock it holds from here on.
            let c = crate::cluster::node::ClusterConfig {
                home: crate::cluster::node::home(&config.data_dir, &lock.identity()),
                ..c.clone()
            };
            tokio::select! {
                joined = crate::cluster::node::start(c, Arc::clone(&topics), broker.clone()) => {
                    let (service, life) = joined
                        .map_err(|e| Error::NotWritable(format!("cannot join the cluster: {e}")))?;
                    (Some(service), Some(life))
                }
                () = &mut signal => {
                    info!("shutdown requested while joining the cluster: closing without serving");
                    door.stopping();
                    if close_logs(&topics).await? {
                        record_clean_stop(&config);
                    }
                    stop_http(http, http_stop).await;
                    return Ok(());
                }
            }
        }
    };
    let mut upkeep = tasks.spawn(super::maintenance::run(
        Arc::clone(&topics),
        config.maintenance,
        shutdown.clone(),
    ));
    tasks.spawn(recount_mappings(shutdown.clone()));
    // A cluster node whose log failed for good has left the cluster: it exits at once, to
    // be restarted and recover from its disk (its streams end; nothing more is written).
    let node_left = async {
        match node_life.as_mut() {
            Some(life) => life.failed().await,
            None => std::future::pending().await,
        }
    };
    door.serving(broker.clone());
    let (mut reads, readiness_tasks) = (broker.cluster_view().out_of_sync(), tasks.clone());
    let refusals = broker.clone();
    // Before tonic reads a message: with auth on, the token; with it off, a web page's
    // origin, as the HTTP door checks it.
    let gate = match broker.requires_auth() {
        true => super::gate::Gate::tokens(broker.clone()),
        false => {
            super::gate::Gate::origins(crate::http::origin::Origins::new(&config.cors_origins))
        }
    };
    let service = BroadcastServer::new(BroadcastService::new(broker, tasks))
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message);
    let service = compressed(service);

    let (health_reporter, health) = tonic_health::server::health_reporter();
    let health = health
        .accept_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Zstd)
        .send_compressed(CompressionEncoding::Gzip)
        .send_compressed(CompressionEncoding::Zstd);
    health_reporter
        .set_serving::<BroadcastServer<BroadcastService>>()
        .await;
    // Whether this node serves reads (`framecast.reads`), kept up to date until shutdown.
    super::readiness::report(&health_reporter, &mut reads).await;
    readiness_tasks.spawn(super::readiness::follow(
        health_reporter.clone(),
        reads,
        shutdown.clone(),
    ));
    // A tracker left alive would keep the drain waiting.
    drop(readiness_tasks);
    // Reflection v1 and v1alpha: grpcurl and other tools work without the proto file,
    // whichever version they speak.
    let reflection_error = |e: tonic_reflection::server::Error| Error::Metadata {
        path: "reflection".into(),
        reason: e.to_string(),
    };
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(reflection_error)?;
    let reflection_alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(reflection_error)?;

    let addr = listener
        .local_addr()
        .map_err(|e| crate::wal::Error::io(&config.data_dir, e))?;
    let http_addr = match &http {
        Some((at, _)) => at.to_string(),
        None => "off".to_string(),
    };
    info!(
        %addr,
        %http_addr,
        data_dir = %config.data_dir.display(),
        fsync = %config.log.fsync,
        max_connections = config.max_connections,
        max_streams_per_connection = config.http2.max_streams_per_connection,
        tls = tls.is_some(),
        client_auth = config.tls.as_ref().is_some_and(|t| t.client_ca.is_some()),
        "listening"
    );

    let mut stop_accepting = shutdown.clone();
    let server = Server::builder()
        // gRPC-Web (browser grpc-web and Connect clients) over HTTP/1.1 and HTTP/2, beside
        // gRPC; CORS first, so a preflight is answered before the translation.
        .accept_http1(true)
        .layer(tower::util::option_layer(cors))
        .layer(tower::util::MapRequestLayer::new(mark_grpc_web))
        .layer(tonic_web::GrpcWebLayer::new())
        .layer(super::too_large::TooLargeLayer::new(refusals))
        .layer(gate)
        .layer(super::held_pages::HeldPagesLayer)
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(config.keepalive_interval))
        .http2_keepalive_timeout(Some(config.keepalive_interval))
        // What one connection can make the server buffer: its streams, and the bytes the
        // client may send ahead of the server reading them (the receive windows).
        .max_concurrent_streams(config.http2.max_streams_per_connection)
        .initial_stream_window_size(config.http2.stream_window)
        .initial_connection_window_size(config.http2.connection_window)
        .add_service(health)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(service)
        .add_optional_service(replication)
        // TcpIncoming, not a bare listener stream: with a caller-supplied incoming stream tonic
        // ignores `.tcp_nodelay(true)`, and Nagle's algorithm then holds small acks and frames
        // back for up to 40 ms (a delayed-ACK round): pipelined publishing ran 2-3x slower.
        // Then TLS handshakes (when configured), concurrently, off the accept path; then
        // wrapped so that at most --max-connections are open at once.
        .serve_with_incoming_shutdown(
            super::connections::limit(
                super::tls::accept(TcpIncoming::from(listener).with_nodelay(Some(true)), tls),
                &connection_permits,
                metrics.connections("grpc"),
            ),
            async move { stop_accepting.wait().await },
        );
    // Boxed, not pinned on the stack, so it can be dropped (with the service and its task
    // tracker) before waiting for the tasks.
    let mut server = Box::pin(server);
    let server_error = |e: tonic::transport::Error| Error::Metadata {
        path: "server".into(),
        reason: e.to_string(),
    };
    // A log that failed for good while the node was leaving: the exit says so.
    let mut left_after_failure = None;
    let deadline = tokio::select! {
        why = node_left => {
            error!(%why, "left the cluster: exiting so that a restart recovers from the disk");
            return Err(Error::NotWritable(format!("left the cluster: {why}")));
        }
        r = &mut server => {
            // The listener ended without a signal: everything else stops too, as at a
            // signal (the HTTP door's sessions, maintenance; a cluster node leaves).
            warn!(error = ?r.as_ref().err(), "the gRPC listener ended without a signal: shutting down");
            door.stopping();
            trigger.fire();
            if let Some(life) = node_life.take() {
                left_after_failure = life.leave().await;
            }
            r.map_err(server_error)?;
            Deadline::now() + config.shutdown_grace
        }
        () = &mut signal => {
            let open_subscriptions = door.broker().map_or(0, |b| b.open_subscriptions());
            let deadline = Deadline::now() + config.shutdown_grace;
            door.stopping();
            trigger.fire();
            // Logged once it holds: a call after this line is refused.
            info!(
                open_subscriptions,
                // Publish stream readers, and the maintenance task.
                running_tasks = all_done.len(),
                "shutdown requested: no new calls; ending streams"
            );
            health_reporter.set_not_serving::<BroadcastServer<BroadcastService>>().await;
            health_reporter
                .set_service_status(super::readiness::READS_SERVICE, tonic_health::ServingStatus::NotServing)
                .await;
            // A cluster node leaves first (within about a second), then drains: another
            // node takes over at once instead of after the grace period and the lease TTL.
            if let Some(life) = node_life.take() {
                left_after_failure = life.leave().await;
            }
            match tokio::time::timeout_at(deadline, &mut server).await {
                Ok(r) => r.map_err(server_error)?,
                Err(_) => warn!(grace_ms = config.shutdown_grace.as_millis() as u64, "connections still open after the grace period; closing anyway"),
            }
            deadline
        }
    };
    drop(server);
    // Every tracked task, up to the same deadline: publish stream readers finish queueing
    // what they read, maintenance stops at the signal.
    all_done.close();
    match tokio::time::timeout_at(deadline, all_done.wait()).await {
        Ok(()) => info!(
            open_subscriptions = door.broker().map_or(0, |b| b.open_subscriptions()),
            "every server task ended: publish streams finished, subscriptions ended"
        ),
        Err(_) => warn!(
            running = all_done.len(),
            "server tasks still running at the shutdown deadline; closing anyway"
        ),
    }
    let unfinished = match tokio::time::timeout_at(deadline, &mut upkeep).await {
        Ok(Ok(pass)) => pass,
        Ok(Err(e)) => {
            warn!(error = %e, "maintenance task failed");
            None
        }
        Err(_) => {
            warn!("maintenance still running at the shutdown deadline");
            None
        }
    };
    // Closing a log cancels a running compaction, so this is quick.
    let synced = close_logs(&topics).await?;
    // A retention or compaction pass that was running at the signal: closing its log
    // cancelled it, so it ends at its next record.
    if let Some(pass) = unfinished {
        if tokio::time::timeout(config.shutdown_grace, pass)
            .await
            .is_err()
        {
            warn!("a maintenance pass did not end after its log closed");
        }
    }
    info!("all logs synced and closed");
    stop_http(http, http_stop).await;
    if let Some(why) = left_after_failure {
        error!(%why, "a log failed while the node was leaving the cluster");
        return Err(Error::NotWritable(format!("left the cluster: {why}")));
    }
    if synced {
        record_clean_stop(&config);
    }
    Ok(())
}

/// Records in `LAST_FSYNC` that this run stopped cleanly, every log synced and closed (so
/// the next start knows no acknowledged frame can be missing). A failure is logged: the
/// next start then treats the stop as a crash, which is safe.
fn record_clean_stop(config: &ServerConfig) {
    if let Err(e) = super::last_fsync::record_clean_stop(&config.data_dir, config.log.fsync) {
        warn!(error = %e, "cannot record the clean stop");
    }
}

/// Syncs and closes every topic's log (off the async workers); true when every frame
/// written is synced.
async fn close_logs(topics: &Arc<Topics>) -> Result<bool> {
    let closing = Arc::clone(topics);
    tokio::task::spawn_blocking(move || closing.close_all())
        .await
        .map_err(|e| Error::Metadata {
            path: "close".into(),
            reason: e.to_string(),
        })
}

/// Stops the HTTP door, if there is one, and waits for it.
async fn stop_http(
    http: Option<(std::net::SocketAddr, tokio::task::JoinHandle<()>)>,
    stop: tokio::sync::oneshot::Sender<()>,
) {
    if let Some((_, task)) = http {
        let _ = stop.send(());
        let _ = task.await;
    }
}

/// Who this node is when it runs alone: [`STANDALONE_NODE_ID`], at the addresses it is
/// listening on (`--advertise` will name them for a cluster).
fn this_node(
    config: &ServerConfig,
    listener: &TcpListener,
    http: &Option<(std::net::SocketAddr, tokio::task::JoinHandle<()>)>,
) -> Result<ThisNode> {
    let address = listener
        .local_addr()
        .map_err(|e| crate::wal::Error::io(&config.data_dir, e))?;
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    if let Some(c) = &config.cluster {
        return Ok(ThisNode {
            id: c.node_id.clone(),
            address: c.advertise.clone(),
            http_address: c.advertise_http.clone(),
        });
    }
    Ok(ThisNode {
        id: STANDALONE_NODE_ID.to_string(),
        address: address.to_string(),
        http_address: http
            .as_ref()
            .map(|(at, _)| format!("{scheme}://{at}"))
            .unwrap_or_default(),
    })
}

/// Binds the HTTP door on `at` and serves it until `stop` fires. Returns the bound address
/// and the serving task.
/// How the HTTP door listens.
struct HttpListener {
    at: std::net::SocketAddr,
    tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    /// The `--max-connections` permits, shared with the gRPC listener.
    connections: super::connections::Permits,
    grace: std::time::Duration,
    /// How often HTTP/2 connections are pinged (`ServerConfig::keepalive_interval`).
    keepalive: std::time::Duration,
    cors: Option<tower_http::cors::CorsLayer>,
}

async fn start_http(
    listen: HttpListener,
    door: &Arc<HttpDoor>,
    metrics: &Metrics,
    stop: tokio::sync::oneshot::Receiver<()>,
) -> Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>)> {
    let HttpListener {
        at,
        tls,
        connections,
        grace,
        keepalive,
        cors,
    } = listen;
    let cannot = |e: std::io::Error| {
        Error::InvalidArgument(format!("cannot listen on --http-listen {at}: {e}"))
    };
    let listener = TcpListener::bind(at).await.map_err(cannot)?;
    let local = listener.local_addr().map_err(cannot)?;
    let accepted = TcpListenerStream::new(listener).map(|r| {
        r.inspect(|s| {
            let _ = s.set_nodelay(true);
        })
    });
    // TLS handshakes (when configured) run concurrently, off the accept path.
    let limited = Box::pin(super::connections::limit(
        super::tls::accept(Box::pin(accepted), tls),
        &connections,
        metrics.connections("http"),
    ));
    let incoming = crate::http::listener::Incoming::new(limited, local);
    let task = tokio::spawn(crate::http::serve(
        incoming,
        Arc::clone(door),
        cors,
        async move {
            let _ = stop.await;
        },
        crate::http::ServeTimes { grace, keepalive },
    ));
    Ok((local, task))
}

/// Marks a gRPC-Web request (one of the four content types tonic-web translates) with
/// [`super::service::GrpcWebCall`], so the service, which sees it translated to gRPC, counts
/// it under `transport="grpc_web"`; a client need not send the optional `x-grpc-web`.
fn mark_grpc_web(
    mut req: axum::http::Request<tonic::body::Body>,
) -> axum::http::Request<tonic::body::Body> {
    let web = matches!(
        req.headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
        Some(
            "application/grpc-web"
                | "application/grpc-web+proto"
                | "application/grpc-web-text"
                | "application/grpc-web-text+proto"
        )
    );
    if web {
        req.extensions_mut().insert(super::service::GrpcWebCall);
    }
    req
}

/// Counts the process's memory mappings again whenever the budget asks (refusals going on,
/// or near the limit; see `wal::mappings::due`), on a blocking thread (a reading takes up
/// to 100 ms), until shutdown: room given back shows within a second.
async fn recount_mappings(mut shutdown: shutdown::Shutdown) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(mappings::FRESH) => {}
            () = shutdown.wait() => return,
        }
        if mappings::due() {
            let _ = tokio::task::spawn_blocking(mappings::refresh).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_data_dirs_lock_has_one_identity_across_runs_and_another_dir_another() {
        let (a, b) = (tempfile::tempdir(), tempfile::tempdir());
        let (a, b) = (a.expect("a temp dir"), b.expect("a temp dir"));
        let first = DataDirLock::acquire(a.path()).expect("the lock");
        let id = first.identity();
        assert!(!id.is_empty());
        assert!(
            DataDirLock::acquire(a.path()).is_err(),
            "held by the first run"
        );
        drop(first);
        let again = DataDirLock::acquire(a.path()).expect("free again");
        assert_eq!(again.identity(), id);
        let other = DataDirLock::acquire(b.path()).expect("the other lock");
        assert_ne!(other.identity(), id);
        let home = crate::cluster::node::home(a.path(), &id);
        assert!(
            home.ends_with(&format!("{}:{id}", a.path().display())),
            "{home}"
        );
        assert_eq!(crate::cluster::node::home(a.path(), ""), "");
    }
}
