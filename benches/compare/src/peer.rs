//! The two peers behind one small interface: a publisher connection that sends a frame and
//! hands back the future of its ack (sends happen in call order), and a subscriber that
//! reads batches of `(position, payload)` from the start of the stream.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use async_nats::jetstream;
use bytes::Bytes;
use futures::StreamExt;
use redis::Value;

/// The future of one frame's ack.
pub type AckFut = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// Where the frames go.
#[derive(Clone)]
pub enum Peer {
    /// Redis Streams: XADD to `key`, XREAD from it.
    Redis { client: redis::Client, key: String },
    /// NATS JetStream: publish to `subject`, stored in `stream` (file storage).
    Nats {
        url: String,
        stream: String,
        subject: String,
    },
}

pub enum PubConn {
    Redis(redis::aio::MultiplexedConnection, String),
    Nats(jetstream::Context, String),
}

pub enum SubConn {
    /// A blocking XREAD needs its own connection: the reader opens it (raw RESP).
    Redis(String),
    Nats(async_nats::Client),
}

pub enum Reader {
    Redis {
        con: crate::resp::RespConn,
        key: String,
        last: String,
    },
    Nats(jetstream::consumer::push::Ordered),
}

/// A Redis connection without the client's default 500 ms response timeout: under load a
/// blocking XREAD or an `appendfsync always` XADD may legitimately take longer.
async fn redis_conn(
    client: &redis::Client,
) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

fn e(x: impl std::fmt::Display) -> String {
    x.to_string()
}

impl Peer {
    pub fn name(&self) -> &'static str {
        match self {
            Peer::Redis { .. } => "redis",
            Peer::Nats { .. } => "nats",
        }
    }

    /// Creates the stream (NATS) or makes sure the key is empty (Redis).
    pub async fn setup(&self) -> Result<(), String> {
        match self {
            Peer::Redis { client, key } => {
                let mut c = redis_conn(client).await.map_err(e)?;
                redis::cmd("DEL")
                    .arg(key)
                    .query_async::<Value>(&mut c)
                    .await
                    .map_err(e)?;
            }
            Peer::Nats {
                url,
                stream,
                subject,
            } => {
                let js = jetstream::new(async_nats::connect(url.as_str()).await.map_err(e)?);
                js.get_or_create_stream(jetstream::stream::Config {
                    name: stream.clone(),
                    subjects: vec![subject.clone()],
                    storage: jetstream::stream::StorageType::File,
                    ..Default::default()
                })
                .await
                .map_err(e)?;
            }
        }
        Ok(())
    }

    pub async fn publisher(&self) -> Result<PubConn, String> {
        Ok(match self {
            Peer::Redis { client, key } => {
                PubConn::Redis(redis_conn(client).await.map_err(e)?, key.clone())
            }
            Peer::Nats { url, subject, .. } => PubConn::Nats(
                jetstream::new(async_nats::connect(url.as_str()).await.map_err(e)?),
                subject.clone(),
            ),
        })
    }

    pub async fn sub_conn(&self) -> Result<SubConn, String> {
        Ok(match self {
            Peer::Redis { client, .. } => {
                SubConn::Redis(client.get_connection_info().addr().to_string())
            }
            Peer::Nats { url, .. } => {
                SubConn::Nats(async_nats::connect(url.as_str()).await.map_err(e)?)
            }
        })
    }

    /// A reader from the start of the stream. Redis: a blocking XREAD needs a connection of
    /// its own, so `conn` must not be shared; NATS: an ordered push consumer on `conn`.
    pub async fn reader(&self, conn: &SubConn) -> Result<Reader, String> {
        Ok(match (self, conn) {
            (Peer::Redis { key, .. }, SubConn::Redis(addr)) => Reader::Redis {
                con: crate::resp::RespConn::connect(addr).await?,
                key: key.clone(),
                last: "0-0".into(),
            },
            (Peer::Nats { stream, .. }, SubConn::Nats(client)) => {
                let js = jetstream::new(client.clone());
                let s = js.get_stream(stream).await.map_err(e)?;
                let consumer = s
                    .create_consumer(jetstream::consumer::push::OrderedConfig {
                        deliver_subject: client.new_inbox(),
                        deliver_policy: jetstream::consumer::DeliverPolicy::All,
                        ..Default::default()
                    })
                    .await
                    .map_err(e)?;
                Reader::Nats(consumer.messages().await.map_err(e)?)
            }
            _ => return Err("connection of the wrong peer".into()),
        })
    }
}

impl PubConn {
    /// Sends frames, in order; one ack future per frame. Redis gets them as one pipeline
    /// (how a Redis client publishes fast); NATS as consecutive publishes on the connection.
    pub async fn send_many(&mut self, payloads: Vec<Bytes>) -> Result<Vec<AckFut>, String> {
        match self {
            PubConn::Redis(con, key) => {
                let n = payloads.len();
                let mut pipe = redis::pipe();
                for p in &payloads {
                    pipe.cmd("XADD")
                        .arg(key.as_str())
                        .arg("*")
                        .arg("d")
                        .arg(p.as_ref());
                }
                let mut c = con.clone();
                let fut = futures::FutureExt::shared(Box::pin(async move {
                    pipe.query_async::<Vec<Value>>(&mut c)
                        .await
                        .map(|_| ())
                        .map_err(e)
                }));
                // Poll once so the pipeline is queued on the connection now, in call order.
                let _ = futures::poll!(fut.clone());
                Ok((0..n).map(|_| Box::pin(fut.clone()) as AckFut).collect())
            }
            PubConn::Nats(js, subject) => {
                let mut out = Vec::with_capacity(payloads.len());
                for p in payloads {
                    let ack = js.publish(subject.clone(), p).await.map_err(e)?;
                    out.push(Box::pin(async move { ack.await.map(|_| ()).map_err(e) }) as AckFut);
                }
                Ok(out)
            }
        }
    }
}

/// A Redis stream id `ms-seq` as one ordered number.
fn redis_pos(id: &[u8]) -> u128 {
    let s = std::str::from_utf8(id).unwrap_or("0-0");
    let (ms, seq) = s.split_once('-').unwrap_or((s, "0"));
    (ms.parse::<u128>().unwrap_or(0) << 64) | seq.parse::<u128>().unwrap_or(0)
}

impl Reader {
    /// Appends what arrives within `wait` (up to `max` frames) to `out`.
    pub async fn next_batch(
        &mut self,
        wait: Duration,
        max: usize,
        out: &mut Vec<(u128, Bytes)>,
    ) -> Result<(), String> {
        match self {
            Reader::Redis { con, key, last } => {
                use crate::resp::Resp;
                let (count, block) = (max.to_string(), wait.as_millis().to_string());
                let (v, bytes) = con
                    .call(&[
                        b"XREAD",
                        b"COUNT",
                        count.as_bytes(),
                        b"BLOCK",
                        block.as_bytes(),
                        b"STREAMS",
                        key.as_bytes(),
                        last.as_bytes(),
                    ])
                    .await?;
                // [[key, [[id, [field, value]], ...]]] or nil on timeout.
                let Resp::Array(streams) = v else {
                    return Ok(());
                };
                for s in streams {
                    let Resp::Array(mut kv) = s else { continue };
                    let Some(Resp::Array(entries)) = kv.pop() else {
                        continue;
                    };
                    for entry in entries {
                        let Resp::Array(mut parts) = entry else {
                            continue;
                        };
                        let fields = parts.pop();
                        let Some(Resp::Bulk(id)) = parts.pop() else {
                            continue;
                        };
                        let payload = match fields {
                            Some(Resp::Array(mut f)) => match f.pop() {
                                Some(Resp::Bulk(p)) => bytes.slice(p),
                                _ => Bytes::new(),
                            },
                            _ => Bytes::new(),
                        };
                        let id = &bytes[id];
                        out.push((redis_pos(id), payload));
                        *last = String::from_utf8_lossy(id).into_owned();
                    }
                }
                Ok(())
            }
            Reader::Nats(messages) => {
                let deadline = tokio::time::Instant::now() + wait;
                while out.len() < max {
                    let next = if out.is_empty() {
                        match tokio::time::timeout_at(deadline, messages.next()).await {
                            Ok(n) => n,
                            Err(_) => return Ok(()),
                        }
                    } else {
                        // Take what is already here without waiting.
                        match futures::FutureExt::now_or_never(messages.next()) {
                            Some(n) => n,
                            None => return Ok(()),
                        }
                    };
                    match next {
                        Some(Ok(m)) => {
                            let pos = m.info().map(|i| i.stream_sequence as u128).map_err(e)?;
                            out.push((pos, m.payload.clone()));
                        }
                        Some(Err(x)) => return Err(e(x)),
                        None => return Err("consumer ended".into()),
                    }
                }
                Ok(())
            }
        }
    }
}
