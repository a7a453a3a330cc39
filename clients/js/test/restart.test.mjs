// A server killed (SIGKILL) while a subscriber iterates and a publisher publishes, then
// restarted on the same ports and data dir: the subscriber reconnects by itself and
// receives every frame exactly once, in order; the publisher's retries store nothing twice.

import { test } from "node:test";
import assert from "node:assert/strict";
import { Framecast } from "../dist/index.js";
import { freePort, startServer, until, within, byOrderKey, sleep, nextFrames } from "../test-support/server.mjs";

const STORED = 20;
const TOTAL = 120;

test("SIGKILL and restart mid-stream: every frame exactly once, in order", async (t) => {
  // Ports that no outgoing connection can take while the server is down.
  const [listen, httpListen] = [`127.0.0.1:${await freePort()}`, `127.0.0.1:${await freePort()}`];
  let server = await startServer({ listen, httpListen });
  t.after(() => server.cleanup());
  const { dataDir } = server;

  const fc = new Framecast({ url: server.url, backoff: { initialMs: 20, maxMs: 300 } });
  // Stored before subscribing, seq_nos descending: the replay reverses them.
  const acks = new Map(); // seq_no → ack
  for (let i = 0; i < STORED; i++) {
    acks.set(1000 - i, await fc.publish("restart", `m${1000 - i}`, { seqNo: 1000 - i }));
  }

  const got = [];
  const sub = fc.subscribe("restart");
  t.after(() => sub.close());
  const reading = (async () => {
    for await (const f of sub) {
      got.push(f);
      if (got.length === TOTAL) break;
    }
  })();
  reading.catch(() => {}); // awaited below; a rejection before then must not be unhandled

  let killedAt = -1;
  let publishedAtKill = -1;
  let restarts = 0;
  let published = 0;
  const publishing = (async () => {
    for (let seq = 0; seq < TOTAL - STORED; seq++) {
      acks.set(seq, await fc.publish("restart", `m${seq}`, { seqNo: seq, retries: 60 }));
      published++;
      await sleep(3);
    }
  })();
  publishing.catch(() => {});

  // Kill once the subscriber is well into the live part and the publisher is mid-way.
  await within(30_000, "the subscriber to reach 50 frames", until(() => got.length >= 50, 30_000, "50 frames"));
  killedAt = got.length;
  publishedAtKill = published;
  const { signal } = await server.kill("SIGKILL");
  assert.equal(signal, "SIGKILL");
  await sleep(200); // publishes and the stream fail meanwhile, and retry
  server = await startServer({ dataDir, listen, httpListen });
  restarts++;

  await within(60_000, "the publisher to finish", publishing);
  await within(60_000, `the subscriber to receive ${TOTAL} frames (has ${got.length})`, reading);

  const duplicates = [...acks.values()].filter((a) => a.duplicate).length;
  t.diagnostic(
    `killed after ${killedAt} frames received and ${publishedAtKill} live publishes acked; ` +
      `subscriber reconnects ${sub.reconnects}; acks with duplicate=true ${duplicates}`,
  );
  assert.equal(restarts, 1);
  assert.ok(killedAt < TOTAL, "the server died mid-stream");
  assert.ok(publishedAtKill < TOTAL - STORED, `the server died while the publisher was publishing (${publishedAtKill})`);
  assert.ok(sub.reconnects >= 1, `the subscriber reconnected (${sub.reconnects})`);
  assert.equal(got.length, TOTAL);

  // Exactly once: every offset 0..TOTAL-1 once, each frame the one its publish was acked with.
  const offsets = got.map((f) => f.offset).sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  assert.deepEqual(
    offsets,
    Array.from({ length: TOTAL }, (_, i) => BigInt(i)),
  );
  assert.equal(acks.size, TOTAL);
  for (const f of got) {
    const ack = acks.get(Number(f.seqNo));
    assert.ok(ack, `a frame with seq_no ${f.seqNo} that was never published`);
    assert.equal(f.offset, ack.offset, `seq_no ${f.seqNo}: delivered at the acked offset`);
    assert.equal(f.timestamp, ack.timestamp);
    assert.equal(f.text, `m${f.seqNo}`);
  }

  // In order: the replay (offset < S) in order-key order, then live frames in offset order.
  const replay = got.filter((f) => !f.live);
  const live = got.filter((f) => f.live);
  assert.equal(replay.length, STORED);
  assert.deepEqual(got.slice(0, STORED), replay, "replay first");
  assert.deepEqual(replay, [...replay].sort(byOrderKey));
  for (let i = 1; i < live.length; i++) {
    assert.ok(live[i].offset === live[i - 1].offset + 1n, `live offsets consecutive at ${i}: ${live[i - 1].offset} then ${live[i].offset}`);
  }

  // And the log holds each publish once, though some were retried across the crash.
  const fresh = new Framecast({ url: server.url });
  let stored = 0;
  for await (const page of fresh.historyPages("restart", { limit: 1000 })) stored += page.frames.length;
  assert.equal(stored, TOTAL);
});

test("graceful shutdown (SIGTERM) ends the stream with event: error UNAVAILABLE; the subscriber comes back after a restart", async (t) => {
  // Ports that no outgoing connection can take while the server is down.
  const [listen, httpListen] = [`127.0.0.1:${await freePort()}`, `127.0.0.1:${await freePort()}`];
  let server = await startServer({ listen, httpListen });
  t.after(() => server.cleanup());
  const { dataDir } = server;

  // Keeps the raw text of every event stream, to see how each one ended.
  const streams = [];
  const teeing = async (input, init) => {
    const resp = await fetch(input, init);
    if (!String(input).includes("/events") || !resp.ok) return resp;
    const decoder = new TextDecoder();
    const i = streams.push("") - 1;
    const body = resp.body.pipeThrough(
      new TransformStream({
        transform(chunk, controller) {
          streams[i] += decoder.decode(chunk, { stream: true });
          controller.enqueue(chunk);
        },
      }),
    );
    return new Response(body, { status: resp.status, headers: resp.headers });
  };
  const fc = new Framecast({ url: server.url, fetch: teeing, backoff: { initialMs: 20, maxMs: 300 } });
  const first = [];
  for (let i = 0; i < 5; i++) first.push(await fc.publish("graceful", `g${i}`, { seqNo: i }));
  const sub = fc.subscribe("graceful");
  t.after(() => sub.close());
  const head = await nextFrames(sub, 5);
  assert.deepEqual(
    head.map((f) => f.offset),
    first.map((a) => a.offset),
  );

  // The next frames are asked for while the server stops: the iterator waits through it.
  const pending = nextFrames(sub, 5, 60_000);
  pending.catch(() => {});
  const { code } = await server.kill("SIGTERM");
  assert.equal(code, 0, `graceful shutdown exits 0:\n${server.log().split("\n").slice(-15).join("\n")}`);
  assert.match(streams[0], /event: ?error\r?\nid: ?[^\r\n]+\r?\ndata: ?\{[^\n]*"code":"UNAVAILABLE"/, `the stream's end:\n${streams[0].slice(-400)}`);

  server = await startServer({ dataDir, listen, httpListen });
  const more = [];
  for (let i = 5; i < 10; i++) more.push(await fc.publish("graceful", `g${i}`, { seqNo: i }));
  const tail = await within(60_000, "frames after the restart", pending);
  assert.deepEqual(
    tail.map((f) => [f.offset, f.text, f.live]),
    more.map((a, i) => [a.offset, `g${i + 5}`, true]),
  );
  assert.ok(sub.reconnects >= 1);
});
