//! Loopback ports for servers that listen on the same port again after a restart (cluster
//! nodes, etcd): chosen below the kernel's ephemeral range (32768 and up here), so that no
//! outgoing connection (a client's, etcd's) can take one while its server is down, as one
//! did in a test run (`Address already in use` at the restart). Shared by `mod.rs` and
//! `etcd.rs`, each of which a test binary may hold its own copy of: each copy walks the
//! range from its own `lane`, so two copies do not hand out the same ports.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Ports handed out: 20000..32000.
const FIRST: usize = 20_000;
const COUNT: usize = 12_000;

/// A loopback port in 20000..32000 that binds now, from `lane`'s part of the range (0 or
/// 6000), spread by process.
pub fn fixed_port(lane: usize) -> u16 {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let start = (std::process::id() as usize).wrapping_mul(7919) + lane;
    for _ in 0..COUNT {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (FIRST + (start + n * 13) % COUNT) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {FIRST}..{}", FIRST + COUNT);
}
