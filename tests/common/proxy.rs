//! An in-process gRPC proxy in front of a real `framecast serve`, for the client tests: each
//! call of a method is forwarded, or broken or refused as the test's script says (the Rust
//! twin of the review's `proxy.py`). Loopback only; stopped when dropped.
#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is the test failing
#![allow(dead_code)]

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use framecast::proto::{self, broadcast_client::BroadcastClient, broadcast_server::Broadcast};
use futures::Stream;
use parking_lot::Mutex;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};

/// What the proxy does with one call.
#[derive(Debug, Clone)]
pub enum Act {
    /// Forwards the call and everything it streams.
    Forward,
    /// Forwards the call; after `n` answers of the stream, it waits for the next answer from
    /// the server (so that one more request was surely handled there) and breaks the
    /// client's stream with `UNAVAILABLE`. A unary call (whatever `n`) is answered by the
    /// server and then broken so. With `leak`, the stream to the server is kept open
    /// (a connection that died half-open: the server still counts it) until
    /// [`Proxy::release`].
    BreakAfter { n: usize, leak: bool },
    /// Refuses the call at once with this status, forwarding nothing.
    Refuse(Code, String),
    /// Accepts a `PublishStream`, reads its first request, forwards nothing and refuses it
    /// with this status: a server that refuses in the stream (a token that expired).
    RefuseInStream(Code, String),
}

type Boxed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[derive(Clone)]
struct Inner {
    upstream: BroadcastClient<Channel>,
    /// Per method name (`"PublishStream"`), the acts of its 1st, 2nd, … call; past the end,
    /// [`Act::Forward`].
    script: Arc<HashMap<&'static str, Vec<Act>>>,
    calls: Arc<Mutex<HashMap<&'static str, usize>>>,
    /// Statuses the server answered, per method: what the client was told.
    answered: Arc<Mutex<Vec<(&'static str, Code)>>>,
    /// Server streams kept open by [`Act::BreakAfter`] with `leak`.
    leaked: Arc<Mutex<Vec<Box<dyn std::any::Any + Send>>>>,
}

impl Inner {
    fn act(&self, method: &'static str) -> Act {
        let mut calls = self.calls.lock();
        let n = calls.entry(method).or_default();
        *n += 1;
        self.script
            .get(method)
            .and_then(|acts| acts.get(*n - 1))
            .cloned()
            .unwrap_or(Act::Forward)
    }

    /// `status` as the server answered it to `method`, noted.
    fn answered(&self, method: &'static str, status: Status) -> Status {
        self.answered.lock().push((method, status.code()));
        status
    }

    async fn unary<Q, A, F, Fut>(
        &self,
        method: &'static str,
        req: Request<Q>,
        call: F,
    ) -> Result<Response<A>, Status>
    where
        F: FnOnce(BroadcastClient<Channel>, Q) -> Fut,
        Fut: std::future::Future<Output = Result<Response<A>, Status>>,
    {
        match self.act(method) {
            Act::Refuse(code, msg) | Act::RefuseInStream(code, msg) => Err(Status::new(code, msg)),
            // A unary call breaks after the server answered (a publish is stored): the
            // answer is lost.
            Act::BreakAfter { .. } => {
                let answer = call(self.upstream.clone(), req.into_inner()).await;
                let answer = answer.map_err(|s| self.answered(method, s))?;
                drop(answer);
                Err(Status::unavailable("broken by the proxy"))
            }
            Act::Forward => call(self.upstream.clone(), req.into_inner())
                .await
                .map_err(|s| self.answered(method, s)),
        }
    }

    /// Forwards a server stream, breaking it as `act` says.
    fn relay<T: Send + 'static>(
        &self,
        method: &'static str,
        upstream: tonic::Streaming<T>,
        act: Act,
    ) -> Boxed<T> {
        let (n, leak) = match act {
            Act::BreakAfter { n, leak } => (Some(n), leak),
            _ => (None, false),
        };
        let this = self.clone();
        let state = (upstream, 0usize);
        Box::pin(futures::stream::unfold(Some(state), move |state| {
            let this = this.clone();
            async move {
                let (mut upstream, k) = state?;
                let next = upstream.message().await;
                match next {
                    Ok(Some(_)) if n.is_some_and(|n| k >= n) => {
                        if leak {
                            this.leaked.lock().push(Box::new(upstream));
                        }
                        let broken = Status::unavailable("injected break");
                        Some((Err(broken), None))
                    }
                    Ok(Some(item)) => Some((Ok(item), Some((upstream, k + 1)))),
                    Ok(None) => None,
                    Err(s) => Some((Err(this.answered(method, s)), None)),
                }
            }
        }))
    }
}

#[tonic::async_trait]
impl Broadcast for Inner {
    async fn publish(
        &self,
        req: Request<proto::PublishRequest>,
    ) -> Result<Response<proto::PublishAck>, Status> {
        self.unary("Publish", req, |mut g, r| async move { g.publish(r).await })
            .await
    }

    type PublishStreamStream = Boxed<proto::PublishAck>;

    async fn publish_stream(
        &self,
        req: Request<tonic::Streaming<proto::PublishRequest>>,
    ) -> Result<Response<Self::PublishStreamStream>, Status> {
        let act = self.act("PublishStream");
        let mut requests = req.into_inner();
        match act {
            Act::Refuse(code, msg) => return Err(Status::new(code, msg)),
            Act::RefuseInStream(code, msg) => {
                let refusal = async move {
                    let _ = requests.message().await;
                    Err(Status::new(code, msg))
                };
                return Ok(Response::new(Box::pin(futures::stream::once(refusal))));
            }
            _ => {}
        }
        // Relayed by a task of its own: the requests end when the client's do.
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            while let Ok(Some(m)) = requests.message().await {
                if tx.send(m).await.is_err() {
                    break;
                }
            }
        });
        let forwarded = tokio_stream::wrappers::ReceiverStream::new(rx);
        let acks = self
            .upstream
            .clone()
            .publish_stream(forwarded)
            .await
            .map_err(|s| self.answered("PublishStream", s))?
            .into_inner();
        Ok(Response::new(self.relay("PublishStream", acks, act)))
    }

    type SubscribeStream = Boxed<proto::Frame>;

    async fn subscribe(
        &self,
        req: Request<proto::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let act = self.act("Subscribe");
        if let Act::Refuse(code, msg) = act {
            return Err(Status::new(code, msg));
        }
        let opened = self
            .upstream
            .clone()
            .subscribe(req.into_inner())
            .await
            .map_err(|s| self.answered("Subscribe", s))?;
        // The snapshot and epoch headers, as the server sent them.
        let md = opened.metadata().clone();
        let frames = self.relay("Subscribe", opened.into_inner(), act);
        let mut resp = Response::new(frames);
        *resp.metadata_mut() = md;
        Ok(resp)
    }

    async fn create_topic(
        &self,
        req: Request<proto::CreateTopicRequest>,
    ) -> Result<Response<proto::TopicInfo>, Status> {
        self.unary("CreateTopic", req, |mut g, r| async move {
            g.create_topic(r).await
        })
        .await
    }

    async fn delete_topic(
        &self,
        req: Request<proto::DeleteTopicRequest>,
    ) -> Result<Response<proto::DeleteTopicResponse>, Status> {
        self.unary("DeleteTopic", req, |mut g, r| async move {
            g.delete_topic(r).await
        })
        .await
    }

    async fn list_topics(
        &self,
        req: Request<proto::ListTopicsRequest>,
    ) -> Result<Response<proto::ListTopicsResponse>, Status> {
        self.unary("ListTopics", req, |mut g, r| async move {
            g.list_topics(r).await
        })
        .await
    }

    async fn history(
        &self,
        req: Request<proto::HistoryRequest>,
    ) -> Result<Response<proto::HistoryPage>, Status> {
        self.unary("History", req, |mut g, r| async move { g.history(r).await })
            .await
    }

    async fn broadcast(
        &self,
        req: Request<proto::BroadcastRequest>,
    ) -> Result<Response<proto::BroadcastAck>, Status> {
        self.unary(
            "Broadcast",
            req,
            |mut g, r| async move { g.broadcast(r).await },
        )
        .await
    }

    async fn cluster(
        &self,
        req: Request<proto::ClusterRequest>,
    ) -> Result<Response<proto::ClusterInfo>, Status> {
        self.unary("Cluster", req, |mut g, r| async move { g.cluster(r).await })
            .await
    }

    type WatchClusterStream = Boxed<proto::ClusterEvent>;

    async fn watch_cluster(
        &self,
        req: Request<proto::ClusterRequest>,
    ) -> Result<Response<Self::WatchClusterStream>, Status> {
        let act = self.act("WatchCluster");
        if let Act::Refuse(code, msg) = act {
            return Err(Status::new(code, msg));
        }
        let events = self
            .upstream
            .clone()
            .watch_cluster(req.into_inner())
            .await
            .map_err(|s| self.answered("WatchCluster", s))?
            .into_inner();
        Ok(Response::new(self.relay("WatchCluster", events, act)))
    }
}

/// A running proxy; stopped when dropped.
pub struct Proxy {
    /// `http://HOST:PORT`, for clients.
    pub addr: String,
    inner: Inner,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// A proxy on a loopback port in front of `upstream` (`http://HOST:PORT`), acting on
    /// each call as `script` says.
    pub async fn start(upstream: &str, script: &[(&'static str, Vec<Act>)]) -> Proxy {
        let upstream = super::connect(upstream).await;
        let inner = Inner {
            upstream,
            script: Arc::new(script.iter().cloned().collect()),
            calls: Arc::default(),
            answered: Arc::default(),
            leaked: Arc::default(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        let service = proto::broadcast_server::BroadcastServer::new(inner.clone())
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX);
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await;
        });
        Proxy { addr, inner, task }
    }

    /// How many calls of `method` the proxy took.
    pub fn calls(&self, method: &'static str) -> usize {
        self.inner.calls.lock().get(method).copied().unwrap_or(0)
    }

    /// How many times the server answered `method` with `code` (through the proxy).
    pub fn answered(&self, method: &'static str, code: Code) -> usize {
        let answered = self.inner.answered.lock();
        answered
            .iter()
            .filter(|(m, c)| *m == method && *c == code)
            .count()
    }

    /// Closes the server streams kept open by [`Act::BreakAfter`] with `leak`.
    pub fn release(&self) {
        self.inner.leaked.lock().clear();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
