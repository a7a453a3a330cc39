//! Readiness: whether this node serves reads, for load balancers and orchestrators that
//! should send subscribers only where they get every acknowledged frame. A node serves
//! reads while it runs, unless it is a cluster follower out of the in-sync set (see
//! [`crate::broker::cluster_view::OutOfSync`]). Liveness (`/healthz`, the gRPC health of
//! the whole server) stays `SERVING` then: the process is sound.
//!
//! gRPC: the health service's [`READS_SERVICE`] status, kept here. HTTP: `GET /readyz`,
//! in [`crate::http`], asks the same flag.

use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::broker::cluster_view::OutOfSync;
use crate::broker::shutdown::Shutdown;

/// The gRPC health service name whose status says whether this node serves reads.
pub const READS_SERVICE: &str = "framecast.reads";

/// Sets [`READS_SERVICE`]'s status as `flag` says now: before the server listens, so the
/// first health check already finds it.
pub async fn report(reporter: &HealthReporter, flag: &mut OutOfSync) {
    set(reporter, flag.refusal().is_some()).await;
}

/// Keeps [`READS_SERVICE`]'s status in step with `flag`'s changes until `shutdown` (whose
/// `NOT_SERVING` the server sets itself, with the rest of its health).
pub async fn follow(reporter: HealthReporter, mut flag: OutOfSync, mut shutdown: Shutdown) {
    loop {
        tokio::select! {
            biased;
            () = shutdown.wait() => return,
            out = flag.changed() => set(&reporter, out).await,
        }
    }
}

async fn set(reporter: &HealthReporter, out_of_sync: bool) {
    let status = if out_of_sync {
        ServingStatus::NotServing
    } else {
        ServingStatus::Serving
    };
    reporter.set_service_status(READS_SERVICE, status).await;
}
