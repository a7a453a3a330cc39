//! Which node a client's calls go to: the addresses it was given, tried in turn when one
//! cannot be reached, and the leader a follower names when it refuses a write.
//!
//! A client made for `a:1,b:2,c:3` sends its calls to `a:1` first. When a call cannot reach
//! its node (or the node answers `UNAVAILABLE` without naming a leader), the next call goes
//! to the next address, round robin. When a follower refuses a write with
//! `UNAVAILABLE` and `framecast-leader: HOST:PORT`, calls go to that address from then on,
//! reached with the client's own scheme, TLS settings, token and compression. The route is
//! shared by a client's clones, so one call's discovery serves them all.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

use super::compression::Compression;
use super::credentials::{Bearer, ClientTls};
use super::error::{Error, Result};
use super::handle::Grpc;
use crate::proto::{broadcast_client::BroadcastClient, LEADER_HEADER};

/// The addresses as given: comma-separated lists are split, blanks around them trimmed.
/// An empty list, or an empty entry (`a:1,,b:2`), is an invalid address.
pub(crate) fn split_addrs<S: AsRef<str>>(given: &[S]) -> Result<Vec<Arc<str>>> {
    let mut out = Vec::new();
    for s in given {
        for a in s.as_ref().split(',') {
            let a = a.trim();
            if a.is_empty() {
                return Err(Error::InvalidAddress(
                    given
                        .iter()
                        .map(AsRef::as_ref)
                        .collect::<Vec<_>>()
                        .join(","),
                ));
            }
            out.push(Arc::from(a));
        }
    }
    if out.is_empty() {
        return Err(Error::InvalidAddress(String::new()));
    }
    Ok(out)
}

/// The leader a refusal names: the `framecast-leader` metadata of an `UNAVAILABLE`.
pub(crate) fn leader_hint(status: &tonic::Status) -> Option<&str> {
    if status.code() != Code::Unavailable {
        return None;
    }
    let hint = status.metadata().get(LEADER_HEADER)?.to_str().ok()?.trim();
    (!hint.is_empty()).then_some(hint)
}

/// A client's nodes: the configured addresses, the settings every connection is made with,
/// and the route its calls take now.
#[derive(Debug)]
pub(crate) struct Nodes {
    /// The configured addresses, in the order given, each with its checked endpoint.
    configured: Vec<(Arc<str>, Endpoint)>,
    tls: ClientTls,
    bearer: Bearer,
    compression: Compression,
    /// The scheme a leader hint (`HOST:PORT`) is reached with: the configured one.
    scheme: &'static str,
    /// A `parking_lot` mutex, not tokio's: it is held only to read or swap the route, never
    /// across an await.
    route: Mutex<Route>,
}

/// Where calls go now.
#[derive(Debug)]
struct Route {
    /// The node calls go to.
    addr: Arc<str>,
    /// Its connection's [`key`].
    key: String,
    /// Its generated client, made on first use.
    grpc: Option<Grpc>,
    /// Bumped at every switch, so that a failure several calls saw moves the route once.
    generation: u64,
    /// The configured address the next failure moves to.
    next: usize,
    /// One lazy connection per node URL, kept: a node named again (or tried again in turn)
    /// reuses its connection, and clones of the client share them.
    channels: HashMap<String, Channel>,
}

/// The node one attempt goes to.
#[derive(Debug, Clone)]
pub(crate) struct Conn {
    /// The node's address, as given or as named by a leader hint.
    pub(crate) addr: Arc<str>,
    /// The generated client on its connection.
    pub(crate) grpc: Grpc,
    /// The route's generation the attempt was made in; `None` for a node the route did not
    /// choose (a follower a subscription reads from), whose failure leaves the route alone.
    generation: Option<u64>,
}

impl Conn {
    /// False for a node the route did not choose (see [`Nodes::conn_at`]).
    pub(crate) fn routed(&self) -> bool {
        self.generation.is_some()
    }
}

impl Nodes {
    /// Nodes at `addrs` (already split, at least one). Every address and TLS setting is
    /// checked here, so that a bad one fails before any call. No I/O happens.
    pub(crate) fn new(
        addrs: &[Arc<str>],
        tls: ClientTls,
        bearer: Bearer,
        compression: Compression,
    ) -> Result<Nodes> {
        let configured = addrs
            .iter()
            .map(|a| endpoint(a, &tls).map(|e| (Arc::clone(a), e)))
            .collect::<Result<Vec<_>>>()?;
        if configured.is_empty() {
            return Err(Error::InvalidAddress(String::new()));
        }
        let scheme = if tls.wanted() || addrs.iter().any(|a| a.starts_with("https://")) {
            "https"
        } else {
            "http"
        };
        let route = Route::start(&configured, HashMap::new());
        Ok(Nodes {
            configured,
            tls,
            bearer,
            compression,
            scheme,
            route: Mutex::new(route),
        })
    }

    /// The same nodes and connections with another token or compression (neither changes
    /// how a connection is made). The route starts over at the first address.
    pub(crate) fn with_calls(&self, bearer: Bearer, compression: Compression) -> Nodes {
        let channels = self.route.lock().channels.clone();
        Nodes {
            configured: self.configured.clone(),
            tls: self.tls.clone(),
            bearer,
            compression,
            scheme: self.scheme,
            route: Mutex::new(Route::start(&self.configured, channels)),
        }
    }

    /// The configured addresses, in order.
    pub(crate) fn addrs(&self) -> impl Iterator<Item = &str> {
        self.configured.iter().map(|(a, _)| &**a)
    }

    /// The TLS settings connections are made with.
    pub(crate) fn tls(&self) -> &ClientTls {
        &self.tls
    }

    /// The token sent on every call.
    pub(crate) fn bearer(&self) -> &Bearer {
        &self.bearer
    }

    /// The compression of every call.
    pub(crate) fn compression(&self) -> Compression {
        self.compression
    }

    /// The node calls go to now.
    pub(crate) fn current_addr(&self) -> Arc<str> {
        Arc::clone(&self.route.lock().addr)
    }

    /// The node the next attempt goes to.
    pub(crate) fn conn(&self) -> Conn {
        let mut route = self.route.lock();
        let grpc = match &route.grpc {
            Some(g) => g.clone(),
            // Only the first address is routed to before its connection is made.
            None => {
                let g = self.grpc(&mut route, &self.configured[0].1);
                route.grpc = Some(g.clone());
                g
            }
        };
        Conn {
            addr: Arc::clone(&route.addr),
            grpc,
            generation: Some(route.generation),
        }
    }

    /// An attempt at the node `addr` (`HOST:PORT`, as a cluster advertises it), reached
    /// with the configured scheme and settings, outside the route: its failure moves
    /// nothing.
    pub(crate) fn conn_at(&self, addr: &str) -> Result<Conn> {
        let host_port = super::followers::host_port(addr);
        let endpoint = endpoint(&format!("{}://{host_port}", self.scheme), &self.tls)
            .map_err(|_| Error::InvalidAddress(format!("node address '{addr}'")))?;
        let mut route = self.route.lock();
        let grpc = self.grpc(&mut route, &endpoint);
        Ok(Conn {
            addr: Arc::from(host_port),
            grpc,
            generation: None,
        })
    }

    /// After an attempt on `conn` could not reach its node, or the node was unavailable
    /// without naming a leader: the next configured address, unless another call has
    /// already moved the route on. With one address, the same one again (its connection is
    /// remade on the next call).
    pub(crate) fn failed(&self, conn: &Conn) {
        let mut route = self.route.lock();
        if conn.generation != Some(route.generation) {
            return;
        }
        let n = self.configured.len();
        let mut pick = route.next;
        if n > 1 && key(&self.configured[pick].1) == route.key {
            pick = (pick + 1) % n;
        }
        route.next = (pick + 1) % n;
        let (addr, endpoint) = &self.configured[pick];
        if key(endpoint) == route.key {
            return;
        }
        tracing::debug!(from = %conn.addr, to = %addr, "node unavailable; trying the next address");
        let grpc = self.grpc(&mut route, endpoint);
        switch(&mut route, Arc::clone(addr), endpoint, grpc);
    }

    /// A node refused a write naming `leader` (`HOST:PORT`): calls go there from now on,
    /// reached with the configured scheme and settings. The leader's address, or an error
    /// when the hint is not an address.
    pub(crate) fn follow(&self, leader: &str) -> Result<Arc<str>> {
        let host_port = leader.split_once("://").map_or(leader, |(_, rest)| rest);
        let endpoint = endpoint(&format!("{}://{host_port}", self.scheme), &self.tls)
            .map_err(|_| Error::InvalidAddress(format!("leader hint '{leader}'")))?;
        let addr: Arc<str> = Arc::from(host_port);
        let mut route = self.route.lock();
        if key(&endpoint) != route.key {
            tracing::debug!(leader = %addr, "following the leader hint");
            let grpc = self.grpc(&mut route, &endpoint);
            switch(&mut route, Arc::clone(&addr), &endpoint, grpc);
        }
        Ok(addr)
    }

    /// The generated client on the kept connection to `endpoint`, made if there is none.
    fn grpc(&self, route: &mut Route, endpoint: &Endpoint) -> Grpc {
        let channel = route
            .channels
            .entry(key(endpoint))
            .or_insert_with(|| endpoint.connect_lazy())
            .clone();
        generated(channel, self.compression, self.bearer.clone())
    }
}

/// The identity of a node's connection: its URL (`host:port` and `http://host:port` are one).
fn key(endpoint: &Endpoint) -> String {
    endpoint.uri().to_string()
}

impl Route {
    /// The route of a new client: the first configured address (there is one), with the
    /// connections already made.
    fn start(configured: &[(Arc<str>, Endpoint)], channels: HashMap<String, Channel>) -> Route {
        let (addr, endpoint) = &configured[0];
        Route {
            addr: Arc::clone(addr),
            key: key(endpoint),
            grpc: None,
            generation: 0,
            next: 1 % configured.len(),
            channels,
        }
    }
}

/// Points `route` at `addr`.
fn switch(route: &mut Route, addr: Arc<str>, endpoint: &Endpoint, grpc: Grpc) {
    route.addr = addr;
    route.key = key(endpoint);
    route.grpc = Some(grpc);
    route.generation += 1;
}

/// The endpoint of `addr` with framecast's transport settings.
fn endpoint(addr: &str, tls: &ClientTls) -> Result<Endpoint> {
    Ok(tls
        .endpoint(addr)?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true))
}

/// The largest message the client sends.
pub(crate) const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// The largest message the client takes: whatever a server may send. A server stores
/// frames up to its `--max-frame-bytes`, which may be as large as a segment (up to 4 GiB),
/// and sends a frame with its other fields under a limit of its own a little above that; a
/// gRPC message's length is 32 bits, so this is every message gRPC can carry. The limit
/// only refuses: nothing is set aside for it.
pub(crate) const MAX_RECEIVED_BYTES: usize = u32::MAX as usize;

/// The generated client on `channel`, with framecast's message size limits, `compression`
/// and the token of `bearer`.
fn generated(channel: Channel, compression: Compression, bearer: Bearer) -> Grpc {
    let grpc = BroadcastClient::with_interceptor(channel, bearer)
        .max_decoding_message_size(MAX_RECEIVED_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    match compression.encoding() {
        Some(e) => grpc.send_compressed(e).accept_compressed(e),
        None => grpc,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use tonic::metadata::MetadataMap;

    fn nodes(addrs: &str, tls: ClientTls) -> Nodes {
        let addrs = split_addrs(&[addrs]).unwrap();
        Nodes::new(&addrs, tls, Bearer::default(), Compression::None).unwrap()
    }

    fn refusal(code: Code, leader: &str) -> tonic::Status {
        let mut md = MetadataMap::new();
        md.insert(LEADER_HEADER, leader.parse().unwrap());
        tonic::Status::with_metadata(code, "not the leader", md)
    }

    #[test]
    fn address_lists_are_split_and_checked() {
        let got = split_addrs(&["a:1, b:2", "http://c:3"]).unwrap();
        let got: Vec<&str> = got.iter().map(|a| &**a).collect();
        assert_eq!(got, ["a:1", "b:2", "http://c:3"]);
        assert!(matches!(
            split_addrs(&["a:1,,b:2"]),
            Err(Error::InvalidAddress(_))
        ));
        assert!(split_addrs::<&str>(&[]).is_err());
        assert!(split_addrs(&[""]).is_err());
    }

    #[test]
    fn only_an_unavailable_names_a_leader() {
        assert_eq!(leader_hint(&refusal(Code::Unavailable, "h:1")), Some("h:1"));
        assert_eq!(leader_hint(&refusal(Code::Unavailable, " ")), None);
        assert_eq!(leader_hint(&refusal(Code::Internal, "h:1")), None);
        assert_eq!(leader_hint(&tonic::Status::unavailable("down")), None);
    }

    #[tokio::test]
    async fn failures_go_round_robin_and_move_the_route_once() {
        let n = nodes("a:1,b:2,c:3", ClientTls::default());
        let first = n.conn();
        assert_eq!(&*first.addr, "a:1");
        n.failed(&first);
        // A second call that saw the same failure does not skip b.
        n.failed(&first);
        let second = n.conn();
        assert_eq!(&*second.addr, "b:2");
        n.failed(&second);
        assert_eq!(&*n.conn().addr, "c:3");
        n.failed(&n.conn());
        assert_eq!(&*n.conn().addr, "a:1");
    }

    #[tokio::test]
    async fn a_leader_hint_moves_the_route_and_a_failure_there_goes_on_in_turn() {
        let n = nodes("a:1,b:2", ClientTls::default());
        assert_eq!(&*n.follow("http://l:9").unwrap(), "l:9");
        let at_leader = n.conn();
        assert_eq!(&*at_leader.addr, "l:9");
        // Naming the current node again changes nothing.
        n.follow("l:9").unwrap();
        assert_eq!(n.conn().generation, at_leader.generation);
        // A node outside the route: its failure moves nothing.
        let aside = n.conn_at("f:5").unwrap();
        assert_eq!(&*aside.addr, "f:5");
        n.failed(&aside);
        assert_eq!(n.conn().generation, at_leader.generation);
        n.failed(&at_leader);
        assert_eq!(&*n.conn().addr, "b:2");
        // One configured address: a failure at a leader goes back to it.
        let one = nodes("a:1", ClientTls::default());
        one.follow("l:9").unwrap();
        one.failed(&one.conn());
        assert_eq!(&*one.conn().addr, "a:1");
        one.failed(&one.conn());
        assert_eq!(&*one.conn().addr, "a:1");
        assert!(one.follow("not an address").is_err());
    }

    #[tokio::test]
    async fn a_hint_is_reached_with_the_configured_scheme() {
        let n = nodes("https://a:1", ClientTls::default());
        n.follow("l:9").unwrap();
        assert_eq!(n.route.lock().key, "https://l:9/");
        let n = nodes("a:1", ClientTls::default());
        n.follow("l:9").unwrap();
        assert_eq!(n.route.lock().key, "http://l:9/");
    }
}
