//! History: pages over a fixed snapshot of a topic, forward (order-key order) or newest
//! first, read from the index and segments (no copy of the topic). The first page fixes
//! the snapshot S; each page's `next` token names it and the page's last frame, so pages
//! never overlap and never skip, whatever is published meanwhile.

use std::sync::Arc;

use super::core::{cursor_ahead, epoch_elsewhere, topic_name, Broker};
use super::cursor::CursorToken;
use super::error::{Error, Result};
use super::principal::Principal;
use crate::index::OrderKey;
use crate::proto;
use crate::wal::StoredFrame;

/// Frames per page when the request names no limit.
pub const DEFAULT_LIMIT: u32 = 100;
/// The most frames a page may ask for.
pub const MAX_LIMIT: u32 = 10_000;
/// Bytes of frames, as protobuf, a page stays under (at least one frame): a page of 10,000
/// frames of 4 MiB would otherwise be 40 GB in one answer. Under gRPC's default message
/// limit (4 MiB), less room for the page's other fields, so that any gRPC client reads it.
/// A shortened page says `more`.
const PAGE_BYTES: usize = (4 << 20) - (4 << 10);
/// The most bytes a `Frame` takes around its payload in a page: its tag and length, and
/// the tags and varints of seq_no, timestamp, offset and the payload's length.
const FRAME_OVERHEAD: usize = 48;

/// The most bytes of History pages, as their doors write them, the server holds at once,
/// built and not yet written to their clients, across every door.
pub const PAGES_HELD: usize = 128 << 20;

/// How long a History request waits for room among the pages being written before it is
/// refused `RESOURCE_EXHAUSTED`.
const PAGE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// A History page and its room among the pages the server holds ([`PAGES_HELD`]).
#[derive(Debug)]
pub struct Page {
    /// The page.
    pub page: proto::HistoryPage,
    /// Held by the door until the page is written (or its client is gone).
    pub room: PageRoom,
}

/// A page's room among the pages being written, given back when the last clone is dropped
/// (a clone may sit in a response's extensions, which must be `Clone`).
#[derive(Debug, Clone)]
pub struct PageRoom {
    _permit: Arc<tokio::sync::OwnedSemaphorePermit>,
}

/// The budget of History pages held, shared by every door ([`PAGES_HELD`]).
#[derive(Debug, Clone)]
pub struct PageBudget(Arc<tokio::sync::Semaphore>);

impl Default for PageBudget {
    fn default() -> Self {
        PageBudget(Arc::new(tokio::sync::Semaphore::new(PAGES_HELD)))
    }
}

impl PageBudget {
    /// Room for a page of `bytes` (a page larger than the whole budget takes all of it):
    /// waits up to [`PAGE_WAIT`], then `Busy`.
    async fn room(&self, bytes: usize) -> Result<PageRoom> {
        let want = u32::try_from(bytes.clamp(1, PAGES_HELD)).unwrap_or(u32::MAX);
        let room = Arc::clone(&self.0).acquire_many_owned(want);
        match tokio::time::timeout(PAGE_WAIT, room).await {
            Ok(Ok(permit)) => Ok(PageRoom {
                _permit: Arc::new(permit),
            }),
            _ => Err(Error::Busy(format!(
                "{} MiB of History pages are waiting for their clients to read them; {}",
                PAGES_HELD >> 20,
                crate::proto::ASK_AGAIN_LATER
            ))),
        }
    }
}

impl Broker {
    /// One History page, with its room among the pages the server holds: `written` tells
    /// how many bytes the page takes as the door writes it (at most). A client that asks
    /// for pages and never reads them holds that budget, not a page each; past it, a request
    /// waits a few seconds, then gets `Busy`.
    pub async fn history(
        &self,
        who: &Principal,
        r: &proto::HistoryRequest,
        written: fn(&proto::HistoryPage) -> usize,
    ) -> Result<Page> {
        let page = match self.history_page(who, r) {
            Ok(page) => page,
            Err(e) => return self.counted(Err(e)),
        };
        let room = self.page_budget().room(written(&page)).await;
        self.counted(room.map(|room| Page { page, room }))
    }

    fn history_page(
        &self,
        who: &Principal,
        r: &proto::HistoryRequest,
    ) -> Result<proto::HistoryPage> {
        self.check_running()?;
        let name = topic_name(&r.topic)?;
        if !who.may_subscribe(&name) {
            return Err(Error::PermissionDenied(format!(
                "'{}' may not read the history of topic '{name}'",
                who.subject()
            )));
        }
        let limit = match r.limit {
            0 => DEFAULT_LIMIT,
            n if n > MAX_LIMIT => {
                return Err(Error::InvalidArgument(format!(
                    "limit {n} is over the most a page may hold, {MAX_LIMIT}"
                )))
            }
            n => n,
        } as usize;
        let after = match r.after.as_str() {
            "" => None,
            text => Some(checked_token(CursorToken::decode(text)?, r)?),
        };
        if let Some(refusal) = self.cluster_view().out_of_sync().refusal() {
            return Err(refusal);
        }
        // History reads: it never creates a topic. A follower that lacks it (not copied yet,
        // or never created) names the leader, whose answer is final.
        let Some(topic) = self.topics().get(&name) else {
            return Err(self
                .cluster_view()
                .leader_elsewhere(format!("topic '{name}'"))
                .unwrap_or(Error::TopicNotFound(name)));
        };
        let epoch = topic.meta().epoch;
        let log = topic.log();
        let walk = match after {
            None => CursorToken {
                start_seq_no: r.from_seq_no,
                snapshot: topic.visible_offset(),
                epoch,
                last: None,
                reverse: r.reverse,
                floor: Some(log.first_offset()),
            },
            Some(t) => {
                if t.epoch != epoch {
                    return Err(epoch_elsewhere(self.cluster_view(), &name, t.epoch, epoch));
                }
                let visible = topic.visible_offset();
                if t.snapshot > visible {
                    // A token from a node ahead of this one.
                    return Err(cursor_ahead(
                        self.cluster_view(),
                        &topic,
                        t.snapshot,
                        format!(
                            "cursor snapshot_offset {} is beyond the topic's next offset {visible}",
                            t.snapshot
                        ),
                    ));
                }
                t
            }
        };
        let first = OrderKey::first_of_seq(walk.start_seq_no);
        if !walk.reverse && walk.last.is_some_and(|last| last.offset >= walk.snapshot) {
            // A subscription's token past its snapshot (a live frame's): its holder has every
            // frame below the snapshot, so the walk is over; reading on would repeat them.
            return Ok(proto::HistoryPage {
                frames: Vec::new(),
                next: walk.encode(),
                more: false,
                snapshot_offset: walk.snapshot,
                epoch,
            });
        }
        let mut got: Vec<StoredFrame> = Vec::new();
        let done = if walk.reverse {
            log.read_ordered_rev(walk.last.as_ref(), &first, walk.snapshot, limit, &mut got)?
        } else {
            let from = match walk.last {
                None => Some(first),
                Some(last) => last.successor().map(|k| k.max(first)),
            };
            match from {
                Some(from) => log.read_ordered(&from, walk.snapshot, limit, &mut got)?,
                None => true,
            }
        };
        if !r.after.is_empty() {
            // A first page's snapshot is what is retained now.
            check_retention(&topic, &walk, &first)?;
        }
        let mut bytes = 0;
        let keep = got
            .iter()
            .position(|f| {
                bytes += f.payload.len() + FRAME_OVERHEAD;
                bytes > PAGE_BYTES
            })
            .map_or(got.len(), |at| at.max(1));
        let more = !done || keep < got.len();
        got.truncate(keep);
        let next = got.last().map_or(walk, |f| CursorToken {
            last: Some(f.key()),
            ..walk
        });
        Ok(proto::HistoryPage {
            frames: got
                .into_iter()
                .map(|f| proto::Frame::new(f.seq_no, f.payload, f.timestamp, f.offset))
                .collect(),
            next: next.encode(),
            more,
            snapshot_offset: walk.snapshot,
            epoch,
        })
    }
}

/// The walk a later page continues: the token's, once it is checked against the request
/// (its epoch and its snapshot against what this node holds are the caller's).
fn checked_token(t: CursorToken, r: &proto::HistoryRequest) -> Result<CursorToken> {
    if t.reverse != r.reverse {
        return Err(Error::InvalidArgument(format!(
            "the 'after' token continues a {} walk; the request asks for reverse={}",
            if t.reverse { "reverse" } else { "forward" },
            r.reverse
        )));
    }
    // `from` may be left out of a later page's request; if given it must be the walk's.
    if r.from_seq_no != 0 && r.from_seq_no != t.start_seq_no {
        return Err(Error::InvalidArgument(format!(
            "from_seq_no {} differs from the walk's start {} named by the 'after' token",
            r.from_seq_no, t.start_seq_no
        )));
    }
    Ok(t)
}

/// Refuses a page whose walk needs frames that retention removed since the walk began:
/// `OUT_OF_RANGE`, never a silent gap. Conservative when the walk's start is unknown.
fn check_retention(topic: &super::Topic, walk: &CursorToken, first: &OrderKey) -> Result<()> {
    let floor = walk.floor.unwrap_or(0);
    let (oldest, removed) = topic.log().removed_since(floor);
    // Keys the rest of the walk needs: above the last frame going forward, at least the
    // start seq_no going backwards.
    let needed_min = match (walk.reverse, walk.last) {
        (false, Some(last)) => last,
        _ => *first,
    };
    if floor < walk.snapshot && removed.is_some_and(|k| k >= needed_min) {
        return Err(Error::OutOfRange(format!(
            "frames this history walk needs were removed by retention; the oldest retained offset is {oldest}"
        )));
    }
    Ok(())
}
