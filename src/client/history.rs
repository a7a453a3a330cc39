//! History pages: a topic's stored frames read page by page, in order-key order or newest
//! first (API.md "History"), as a chat scrolls back, without a subscription.

use futures::Stream;

use super::error::{Error, Result};
use super::handle::Client;
use super::subscription::Frame;
use crate::proto;

/// Which page of a topic's history to read: the frames with `seq_no >= from_seq_no`, at
/// most `limit` of them (0: the server's default, 100; at most 10,000), descending when
/// `reverse`, after the page whose `next` is `after` (`None`: the first page, which fixes
/// the snapshot every later page reads).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistoryQuery {
    /// The smallest `seq_no` read.
    pub from_seq_no: u64,
    /// Frames per page; 0 for the server's default.
    pub limit: u32,
    /// Newest first.
    pub reverse: bool,
    /// The previous page's [`HistoryPage::next`]; `None` for the first page.
    pub after: Option<String>,
}

impl HistoryQuery {
    /// The first page of the frames with `seq_no >= from_seq_no`, in order-key order.
    pub fn from(from_seq_no: u64) -> HistoryQuery {
        HistoryQuery {
            from_seq_no,
            ..HistoryQuery::default()
        }
    }

    /// At most `limit` frames per page.
    pub fn limit(mut self, limit: u32) -> HistoryQuery {
        self.limit = limit;
        self
    }

    /// Newest first.
    pub fn reverse(mut self) -> HistoryQuery {
        self.reverse = true;
        self
    }

    /// The page after the one whose `next` token this is.
    pub fn after(mut self, next: impl Into<String>) -> HistoryQuery {
        self.after = Some(next.into());
        self
    }
}

/// One page of a topic's history. Pages of one walk never overlap and never skip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryPage {
    /// The frames of the page (`live` is false: all are below the snapshot point).
    pub frames: Vec<Frame>,
    /// The token for the next page ([`HistoryQuery::after`]); the server always sets it, and
    /// it leads somewhere only while [`HistoryPage::more`].
    pub next: String,
    /// Whether more frames follow this page.
    pub more: bool,
    /// The snapshot point the walk reads below (fixed by its first page).
    pub snapshot_offset: u64,
    /// The topic's epoch.
    pub epoch: u64,
}

impl From<proto::HistoryPage> for HistoryPage {
    fn from(p: proto::HistoryPage) -> HistoryPage {
        HistoryPage {
            // Every frame of a page is below its snapshot point: not live.
            frames: p.frames.into_iter().map(|f| Frame::of(f, false)).collect(),
            next: p.next,
            more: p.more,
            snapshot_offset: p.snapshot_offset,
            epoch: p.epoch,
        }
    }
}

impl Client {
    /// One page of `topic`'s history. A read, so it is retried on transient failures and
    /// follows the nodes as every call does; a token from a page of one node is read the
    /// same on every node of a cluster (a follower that has not copied the topic, or the
    /// frames below the token's snapshot, names the leader, and the call goes there).
    /// `NOT_FOUND` for a topic that does not exist (a history read creates nothing),
    /// `FAILED_PRECONDITION` for a token of another epoch.
    ///
    /// ```no_run
    /// # async fn scroll_back() -> framecast::client::Result<()> {
    /// use framecast::client::{Client, HistoryQuery};
    /// let client = Client::connect("http://127.0.0.1:7070")?;
    /// // The 50 newest frames of "chat", then the 50 before them.
    /// let page = client.history("chat", &HistoryQuery::from(0).limit(50).reverse()).await?;
    /// let older = HistoryQuery::from(0).limit(50).reverse().after(page.next.clone());
    /// let before = client.history("chat", &older).await?;
    /// println!("{} + {} frames", page.frames.len(), before.frames.len());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn history(&self, topic: &str, query: &HistoryQuery) -> Result<HistoryPage> {
        let request = proto::HistoryRequest {
            topic: topic.to_string(),
            from_seq_no: query.from_seq_no,
            limit: query.limit,
            reverse: query.reverse,
            after: query.after.clone().unwrap_or_default(),
        };
        self.retrying(|mut g| {
            let request = request.clone();
            async move { g.history(request).await.map(|r| r.into_inner()) }
        })
        .await
        .map(HistoryPage::from)
    }

    /// Every page of `topic`'s history from `query` on, until a page says there is no more:
    /// one snapshot, read page by page as the stream is polled.
    pub fn history_pages(
        &self,
        topic: &str,
        query: HistoryQuery,
    ) -> impl Stream<Item = Result<HistoryPage>> + Send + 'static {
        let client = self.clone();
        let topic = topic.to_string();
        futures::stream::unfold(Some(query), move |next| {
            let client = client.clone();
            let topic = topic.clone();
            async move {
                let query = next?;
                let page = match client.history(&topic, &query).await {
                    Ok(page) => page,
                    Err(e) => return Some((Err(e), None)),
                };
                let after = match (page.more, page.next.is_empty()) {
                    (false, _) => None,
                    (true, false) => Some(query.after(page.next.clone())),
                    (true, true) => {
                        let e = Error::Server {
                            code: tonic::Code::Internal,
                            message: "a history page with more frames and no next token".into(),
                        };
                        return Some((Err(e), None));
                    }
                };
                Some((Ok(page), after))
            }
        })
    }
}
