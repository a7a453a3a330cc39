//! The Rust client's history pages against a real server: a walk page by page (forward,
//! newest first, from a `seq_no`) yields exactly the stored frames below its snapshot, in
//! order-key order, each once, with frames published during the walk left out; a missing
//! topic is `NotFound` and stays missing; a token of another epoch is refused.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is the test failing

mod common;

use common::*;
use framecast::client::{Client, Error, Frame, HistoryQuery};
use futures::StreamExt;

/// `(seq_no, offset, payload digest)` of each frame.
fn keys(frames: &[Frame]) -> Vec<(u64, u64, u32)> {
    frames
        .iter()
        .map(|f| (f.seq_no, f.offset, crc32fast::hash(&f.payload)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_walk_one_snapshot_in_order_key_order_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--fsync", "always"]);
    let c = Client::connect(&server.addr).unwrap();
    // 250 frames whose seq_nos come out of order (and repeat), sizes from 0 B up.
    let mut stored = Vec::new();
    for i in 0..250u64 {
        let seq = (i * 97) % 120;
        let payload = vec![b'a' + (i % 26) as u8; (i as usize * 37) % 3000];
        let ack = c.publish("chat", seq, payload.clone()).await.unwrap();
        stored.push((seq, ack.timestamp, ack.offset, crc32fast::hash(&payload)));
    }
    stored.sort(); // the order key: (seq_no, timestamp, offset)
    let in_order: Vec<(u64, u64, u32)> = stored
        .iter()
        .map(|&(seq, _, offset, crc)| (seq, offset, crc))
        .collect();

    // Forward, 100 per page; frames published after the first page are not in the walk.
    let first = c
        .history("chat", &HistoryQuery::from(0).limit(100))
        .await
        .unwrap();
    assert_eq!(first.snapshot_offset, 250);
    assert!(first.more && !first.next.is_empty());
    assert!(first.frames.iter().all(|f| !f.live));
    c.publish("chat", 0, "after the snapshot").await.unwrap();
    let mut walked = first.frames.clone();
    let rest: Vec<_> = c
        .history_pages("chat", HistoryQuery::from(0).limit(100).after(first.next))
        .collect()
        .await;
    let rest: Vec<_> = rest.into_iter().map(Result::unwrap).collect();
    assert_eq!(rest.len(), 2);
    assert_eq!(
        rest.iter().map(|p| p.frames.len()).collect::<Vec<_>>(),
        [100, 50]
    );
    assert!(rest[0].more && !rest[1].more);
    for p in &rest {
        assert_eq!((p.snapshot_offset, p.epoch), (250, first.epoch));
        walked.extend(p.frames.iter().cloned());
    }
    assert_eq!(keys(&walked), in_order);

    // Newest first, from seq_no 100, in one stream of pages of 7.
    let pages: Vec<_> = c
        .history_pages("chat", HistoryQuery::from(100).limit(7).reverse())
        .collect()
        .await;
    let back: Vec<Frame> = pages.into_iter().flat_map(|p| p.unwrap().frames).collect();
    let mut want: Vec<_> = in_order
        .iter()
        .filter(|(seq, _, _)| *seq >= 100)
        .cloned()
        .collect();
    want.reverse(); // the frame published after the first walk's snapshot has seq_no 0
    assert_eq!(keys(&back), want);

    // A missing topic: NotFound, and reading its history did not create it.
    match c.history("nobody", &HistoryQuery::default()).await {
        Err(Error::NotFound(_)) => {}
        other => panic!("{other:?}"),
    }
    assert!(c
        .list_topics()
        .await
        .unwrap()
        .iter()
        .all(|t| t.name != "nobody"));

    // A token of the topic's old epoch, after it is deleted and created again: refused.
    let token = c
        .history("chat", &HistoryQuery::from(0).limit(10))
        .await
        .unwrap()
        .next;
    c.delete_topic("chat").await.unwrap();
    c.publish("chat", 1, "new epoch").await.unwrap();
    match c
        .history("chat", &HistoryQuery::from(0).limit(10).after(token))
        .await
    {
        Err(Error::EpochChanged(_)) => {}
        other => panic!("{other:?}"),
    }
}
