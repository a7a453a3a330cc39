// Subscribe over Server-Sent Events: replay in order-key order then live in offset order,
// the `from` filter, resuming from a cursor token in a fresh call, and reconnecting by
// itself when the connection breaks mid-replay and mid-live.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { Framecast, FramecastError } from "../dist/index.js";
import { startServer, nextFrames, byOrderKey, within } from "../test-support/server.mjs";

let server;
before(async () => {
  server = await startServer();
});
after(async () => {
  await server?.cleanup();
});

/** Stored before subscribing: seq_nos out of order, ties broken by timestamp and then offset. */
const STORED = [
  { seqNo: 5n, timestamp: 100n },
  { seqNo: 3n, timestamp: 300n },
  { seqNo: 9n, timestamp: 50n },
  { seqNo: 1n, timestamp: 10n },
  { seqNo: 3n, timestamp: 200n },
  { seqNo: 3n, timestamp: 200n },
  { seqNo: 0n, timestamp: 999n },
  { seqNo: 7n, timestamp: 1n },
];

/** Publishes STORED to `topic`; the frames with their offsets, in offset order. */
async function store(fc, topic) {
  const frames = [];
  for (const [i, f] of STORED.entries()) {
    const ack = await fc.publish(topic, `stored-${i}`, { seqNo: f.seqNo, timestamp: f.timestamp });
    assert.equal(ack.offset, BigInt(i));
    frames.push({ ...f, offset: ack.offset, text: `stored-${i}` });
  }
  return frames;
}

const view = (f) => ({ seqNo: f.seqNo, timestamp: f.timestamp, offset: f.offset, text: f.text });

test("replay comes sorted by (seq_no, timestamp, offset), then live frames in offset order", async (t) => {
  const fc = new Framecast({ url: server.url });
  const stored = await store(fc, "order");
  const sub = fc.subscribe("order");
  t.after(() => sub.close());

  const replay = await nextFrames(sub, stored.length);
  assert.deepEqual(replay.map(view), [...stored].sort(byOrderKey).map(view));
  assert.ok(replay.every((f) => f.live === false), "replayed frames are not live");
  assert.equal(sub.snapshotOffset, BigInt(stored.length));
  assert.equal(typeof sub.epoch, "bigint");
  assert.notEqual(sub.epoch, 0n);
  for (const f of replay) {
    assert.ok(f.payload instanceof Uint8Array);
    assert.equal(new TextDecoder().decode(f.payload), f.text);
    assert.equal(typeof f.cursor, "string");
    assert.ok(f.cursor.length > 0);
  }

  // Live: seq_nos out of order again, but they come in offset order.
  const liveSeq = [4n, 2n, 8n, 0n, 6n];
  const acks = [];
  for (const [i, s] of liveSeq.entries()) acks.push(await fc.publish("order", `live-${i}`, { seqNo: s }));
  const live = await nextFrames(sub, liveSeq.length);
  assert.deepEqual(
    live.map((f) => f.offset),
    acks.map((a) => a.offset),
  );
  assert.deepEqual(
    live.map((f) => f.seqNo),
    liveSeq,
  );
  assert.deepEqual(
    live.map((f) => f.timestamp),
    acks.map((a) => a.timestamp),
  );
  assert.ok(live.every((f) => f.live === true), "frames past the snapshot are live");
  assert.deepEqual(
    live.map((f) => f.text),
    liveSeq.map((_, i) => `live-${i}`),
  );

  // Binary payloads come back byte for byte (no `text` when not UTF-8).
  const bytes = new Uint8Array([0xff, 0xfe, 0x00, 0x80, 0x41]);
  await fc.publish("order", bytes, { seqNo: 1 });
  const [bin] = await nextFrames(sub, 1);
  assert.deepEqual(bin.payload, bytes);
  assert.equal(bin.text, undefined);
});

test("from filters replay and live by seq_no", async (t) => {
  const fc = new Framecast({ url: server.url });
  const stored = await store(fc, "from");
  const sub = fc.subscribe("from", { from: 5 });
  t.after(() => sub.close());
  const want = stored.filter((f) => f.seqNo >= 5n).sort(byOrderKey);
  const replay = await nextFrames(sub, want.length);
  assert.deepEqual(replay.map(view), want.map(view));

  // 2 is below `from`: it must not come; 8 comes (after 2 in offset order, so a leak of 2 would show first).
  await fc.publish("from", "below", { seqNo: 2 });
  const ack8 = await fc.publish("from", "above", { seqNo: 8 });
  await fc.publish("from", "edge", { seqNo: 5 });
  const live = await nextFrames(sub, 2);
  assert.deepEqual(
    live.map((f) => [f.seqNo, f.text, f.live]),
    [
      [8n, "above", true],
      [5n, "edge", true],
    ],
  );
  assert.equal(live[0].offset, ack8.offset);
});

test("a fresh subscribe with resume: cursor continues exactly (mid-replay and mid-live)", async (t) => {
  const fc = new Framecast({ url: server.url });
  const stored = await store(fc, "resume");
  const sorted = [...stored].sort(byOrderKey);

  // Take three replayed frames, then leave.
  const first = fc.subscribe("resume");
  const head = await nextFrames(first, 3);
  await first.return();
  assert.deepEqual(head.map(view), sorted.slice(0, 3).map(view));
  const cursor = head[2].cursor;
  assert.equal(first.cursor, cursor);

  // Frames published while away are past the first subscription's snapshot: live after the replay's rest.
  const away = [];
  for (const s of [2n, 1n]) away.push(await fc.publish("resume", `away-${s}`, { seqNo: s }));

  const second = fc.subscribe("resume", { resume: cursor });
  t.after(() => second.close());
  const rest = await nextFrames(second, sorted.length - 3 + away.length);
  assert.deepEqual(
    rest.slice(0, sorted.length - 3).map(view),
    sorted.slice(3).map(view),
    "the rest of the replay, in order-key order",
  );
  assert.ok(rest.slice(0, sorted.length - 3).every((f) => !f.live));
  assert.deepEqual(
    rest.slice(sorted.length - 3).map((f) => [f.offset, f.text, f.live]),
    away.map((a, i) => [a.offset, `away-${[2, 1][i]}`, true]),
  );
  assert.equal(second.snapshotOffset, BigInt(stored.length), "the resumed stream keeps the first snapshot");

  // Resume from a live frame's cursor.
  const liveCursor = rest.at(-1).cursor;
  await second.return();
  const more = await fc.publish("resume", "after", { seqNo: 0 });
  const third = fc.subscribe("resume", { resume: liveCursor });
  t.after(() => third.close());
  const [next] = await nextFrames(third, 1);
  assert.equal(next.offset, more.offset);
  assert.equal(next.text, "after");
});

test("a resume cursor from another epoch is refused with FAILED_PRECONDITION (412)", async () => {
  const fc = new Framecast({ url: server.url });
  await fc.publish("epoch", "a", { seqNo: 1 });
  const sub = fc.subscribe("epoch");
  const [f] = await nextFrames(sub, 1);
  await sub.return();
  await fc.deleteTopic("epoch");
  await fc.publish("epoch", "b", { seqNo: 1 });
  const again = fc.subscribe("epoch", { resume: f.cursor });
  await within(
    10_000,
    "the stale resume to be refused",
    assert.rejects(again.next(), (e) => {
      assert.ok(e instanceof FramecastError, String(e));
      assert.equal(e.code, "FAILED_PRECONDITION");
      assert.equal(e.status, 412);
      return true;
    }),
  );
});

test('resume: null, undefined or "" (nothing saved yet) starts from the beginning, or from `from`', async (t) => {
  const fc = new Framecast({ url: server.url });
  for (let i = 1; i <= 3; i++) await fc.publish("resume-none", `n${i}`, { seqNo: i });
  // The README's first run: localStorage.getItem answers null for a key never saved.
  const saved = new Map();
  const getItem = (key) => saved.get(key) ?? null;
  for (const resume of [getItem("resume-none-cursor"), undefined, ""]) {
    const sub = fc.subscribe("resume-none", { resume });
    t.after(() => sub.close());
    const frames = await nextFrames(sub, 3);
    assert.deepEqual(
      frames.map((f) => f.text),
      ["n1", "n2", "n3"],
      `resume: ${JSON.stringify(resume)}`,
    );
    await sub.return();
  }
  const from = fc.subscribe("resume-none", { resume: null, from: 2 });
  t.after(() => from.close());
  assert.deepEqual(
    (await nextFrames(from, 2)).map((f) => f.text),
    ["n2", "n3"],
  );
  // Anything else that is not a string is the caller's mistake, refused before a request.
  for (const bad of [42, true, {}, ["c1"]]) {
    assert.throws(() => fc.subscribe("resume-none", { resume: bad }), TypeError, JSON.stringify(bad));
  }
});

test("breaking out of for-await ends the stream; abort signal ends the iterator quietly", async () => {
  const fc = new Framecast({ url: server.url });
  await fc.publish("quit", "a", { seqNo: 1 });
  await fc.publish("quit", "b", { seqNo: 2 });
  const seen = [];
  for await (const f of fc.subscribe("quit")) {
    seen.push(f.text);
    if (seen.length === 2) break;
  }
  assert.deepEqual(seen, ["a", "b"]);

  const ac = new AbortController();
  const sub = fc.subscribe("quit", { signal: ac.signal });
  const got = [];
  const done = (async () => {
    for await (const f of sub) got.push(f.text);
  })();
  await within(10_000, "two frames", (async () => {
    while (got.length < 2) await new Promise((r) => setTimeout(r, 10));
  })());
  ac.abort();
  await within(5_000, "the iterator to end after abort", done);
  assert.deepEqual(got, ["a", "b"]);
});

/**
 * A fetch whose event streams break on demand: while `state.breaksLeft > 0`, a connection
 * is cut once it has passed `state.cutAt` bytes, in the middle of a chunk (so mid-event,
 * as a dropped connection leaves it). Records each request's `Last-Event-ID`.
 */
function breakingFetch() {
  const state = { connections: 0, lastEventIds: [], breaksLeft: 0, cutAt: Infinity, breaks: 0 };
  const f = async (input, init) => {
    const resp = await fetch(input, init);
    if (!String(input).includes("/events") || !resp.ok) return resp;
    state.lastEventIds.push(new Headers(init?.headers).get("last-event-id"));
    state.connections++;
    const reader = resp.body.getReader();
    let passed = 0;
    const body = new ReadableStream({
      async pull(controller) {
        const { done, value } = await reader.read();
        if (done) return controller.close();
        if (state.breaksLeft > 0 && passed + value.length > state.cutAt) {
          state.breaksLeft--;
          state.breaks++;
          const keep = passed < state.cutAt ? state.cutAt - passed : Math.floor(value.length / 2);
          controller.enqueue(value.subarray(0, keep));
          await reader.cancel();
          controller.error(new TypeError("test: connection reset"));
          return;
        }
        passed += value.length;
        controller.enqueue(value);
      },
      cancel(reason) {
        return reader.cancel(reason);
      },
    });
    return new Response(body, { status: resp.status, headers: resp.headers });
  };
  return { fetch: f, state };
}

test("reconnects by itself with Last-Event-ID when the connection breaks: no gap, no duplicate", async (t) => {
  const plain = new Framecast({ url: server.url });
  // 30 stored frames, seq_nos reversed so the replay order differs from the offset order.
  const stored = [];
  for (let i = 0; i < 30; i++) {
    const ack = await plain.publish("flaky-net", `r${i}`, { seqNo: 100 - i });
    stored.push({ seqNo: BigInt(100 - i), timestamp: ack.timestamp, offset: ack.offset, text: `r${i}` });
  }
  const { fetch: breaking, state } = breakingFetch();
  const fc = new Framecast({ url: server.url, fetch: breaking, backoff: { initialMs: 5, maxMs: 20 } });
  // Mid-replay: three connections in a row cut after 900 bytes.
  Object.assign(state, { breaksLeft: 3, cutAt: 900 });
  const sub = fc.subscribe("flaky-net");
  t.after(() => sub.close());

  const replay = await nextFrames(sub, stored.length);
  assert.deepEqual(replay.map(view), [...stored].sort(byOrderKey).map(view));
  assert.equal(state.breaks, 3, "the replay was cut three times");
  assert.equal(sub.reconnects, 3);

  // Mid-live: the open connection, and the next one, are cut inside a live frame.
  Object.assign(state, { breaksLeft: 2, cutAt: 0 });
  const liveAcks = [];
  for (let i = 0; i < 30; i++) liveAcks.push(await plain.publish("flaky-net", `l${i}`, { seqNo: i }));
  const live = await nextFrames(sub, liveAcks.length);
  assert.equal(state.breaks, 5, "the live part was cut twice");
  assert.equal(sub.reconnects, 5);
  assert.deepEqual(
    live.map((f) => f.offset),
    liveAcks.map((a) => a.offset),
  );
  assert.deepEqual(
    live.map((f) => f.text),
    liveAcks.map((_, i) => `l${i}`),
  );
  assert.ok(live.every((f) => f.live));
  assert.equal(state.connections, 6);
  assert.equal(state.lastEventIds[0], null, "the first request resumes nothing");
  assert.ok(
    state.lastEventIds.slice(1).every((id) => typeof id === "string" && id.length > 0),
    "every reconnect sends Last-Event-ID",
  );
});

test("a refused subscription ends the iterator with the server's code (404 with --no-auto-create-topics)", async (t) => {
  const strict = await startServer({ args: ["--no-auto-create-topics"] });
  t.after(() => strict.cleanup());
  const fc = new Framecast({ url: strict.url });
  const sub = fc.subscribe("missing");
  await within(
    10_000,
    "the refusal",
    assert.rejects(sub.next(), (e) => {
      assert.ok(e instanceof FramecastError, String(e));
      assert.equal(e.code, "NOT_FOUND");
      assert.equal(e.status, 404);
      return true;
    }),
  );
  assert.equal(sub.reconnects, 0);
});

test("deleting the topic ends an open stream with NOT_FOUND (event: error)", async (t) => {
  const fc = new Framecast({ url: server.url });
  await fc.publish("doomed", "a", { seqNo: 1 });
  const sub = fc.subscribe("doomed");
  t.after(() => sub.close());
  await nextFrames(sub, 1);
  await fc.deleteTopic("doomed");
  await within(
    10_000,
    "the stream to end",
    assert.rejects(sub.next(), (e) => {
      assert.ok(e instanceof FramecastError, String(e));
      assert.equal(e.code, "NOT_FOUND");
      return true;
    }),
  );
});

test("a consumer slower than idleTimeoutMs does not make the subscription reconnect", async (t) => {
  const fc = new Framecast({ url: server.url });
  for (let i = 1; i <= 3; i++) await fc.publish("slow-consumer", `s${i}`, { seqNo: i });
  const sub = fc.subscribe("slow-consumer", { idleTimeoutMs: 300 });
  t.after(() => sub.close());
  const got = [];
  for (let i = 0; i < 3; i++) {
    const r = await within(10_000, `frame ${i + 1}`, sub.next());
    got.push(r.value.text);
    // Holding each frame past the idle timeout, with the next ones already received.
    await new Promise((r) => setTimeout(r, 700));
  }
  await fc.publish("slow-consumer", "s4", { seqNo: 4 });
  got.push((await within(10_000, "frame 4", sub.next())).value.text);
  assert.deepEqual(got, ["s1", "s2", "s3", "s4"]);
  assert.equal(sub.reconnects, 0, "the consumer's pace was taken for the server's silence");
  assert.equal(fc.url, server.url, "the client moved off its node");
});
