//! Connections to the server. A tonic `Channel` made with `Endpoint::connect` is one HTTP/2
//! connection; many streams share it. Fan-out spreads its subscribers over C of them.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;

use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use super::error::{Error, Result};
use super::wire::{CountingConnector, WireBytes};
use framecast::client::{Bearer, ClientTls, Compression};
use framecast::proto::broadcast_client::BroadcastClient;

/// The largest gRPC message the bench's connections send or take.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// The generated client over one connection; every call carries the run's token.
pub type Grpc = BroadcastClient<InterceptedService<Channel, Bearer>>;

/// Flow-control windows of a connection.
#[derive(Debug, Clone, Copy)]
pub enum Windows {
    /// hyper's defaults (2 MiB per stream, 5 MiB per connection): best for a few fast streams.
    Default,
    /// Small windows for many streams per connection, so that the bytes in flight, and the
    /// memory they take on both sides, stay bounded however many streams there are.
    Many,
}

/// How the bench's connections talk: message compression, and where their bytes are counted.
#[derive(Debug, Clone, Default)]
pub struct Wire {
    /// Requests compressed with it, and responses asked for with it.
    pub compression: Compression,
    /// Every byte written and read by the connections.
    pub bytes: Arc<WireBytes>,
    /// `--token`, sent with every call.
    pub bearer: Bearer,
    /// `--ca-cert` (and client certificate): TLS settings of the connections.
    pub tls: ClientTls,
}

/// Opens `n` connections to `addr` (at most 64 handshakes at a time).
pub async fn connect(addr: &str, n: usize, windows: Windows, wire: &Wire) -> Result<Vec<Grpc>> {
    let mut endpoint = wire
        .tls
        .endpoint(addr)
        .map_err(|e| Error::Args(format!("address '{addr}': {e}")))?
        .connect_timeout(Duration::from_secs(10))
        .tcp_nodelay(true);
    if let Windows::Many = windows {
        endpoint = endpoint
            .initial_stream_window_size(64 * 1024)
            .initial_connection_window_size(1024 * 1024);
    }
    let mut out = Vec::with_capacity(n);
    let mut pending = futures::stream::iter((0..n).map(|_| {
        let e = endpoint.clone();
        let connector = CountingConnector::new(Arc::clone(&wire.bytes));
        async move { e.connect_with_connector(connector).await }
    }))
    .buffered(64);
    while let Some(ch) = pending.next().await {
        let ch = ch.map_err(|source| Error::Connect {
            addr: addr.to_string(),
            source,
        })?;
        let grpc = BroadcastClient::with_interceptor(ch, wire.bearer.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        out.push(match wire.compression.encoding() {
            Some(e) => grpc.send_compressed(e).accept_compressed(e),
            None => grpc,
        });
    }
    Ok(out)
}

/// Every topic the node behind `c` holds.
pub async fn list_topics(c: &mut Grpc) -> Result<Vec<framecast::proto::TopicInfo>> {
    Ok(c.list_topics(framecast::proto::ListTopicsRequest {})
        .await
        .map_err(|status| Error::Rpc {
            what: "ListTopics",
            status,
        })?
        .into_inner()
        .topics)
}
