// History pages: forward and reverse over 250 frames with limit 100 — no overlap, no
// skip, order-key order (reverse: newest first), a snapshot fixed by the first page.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { Framecast } from "../dist/index.js";
import { startServer, byOrderKey } from "../test-support/server.mjs";

const N = 250;
let server;
let fc;
/** The stored frames, as acked. */
const stored = [];

before(async () => {
  server = await startServer();
  fc = new Framecast({ url: server.url });
  // seq_no = i*37 mod 250: every seq_no once, in an order unrelated to the offsets.
  const seqs = Array.from({ length: N }, (_, i) => (i * 37) % N);
  for (let i = 0; i < N; i += 25) {
    const batch = seqs.slice(i, i + 25);
    const acks = await Promise.all(batch.map((s) => fc.publish("hist", `h${s}`, { seqNo: s })));
    batch.forEach((s, j) => stored.push({ seqNo: BigInt(s), timestamp: acks[j].timestamp, offset: acks[j].offset }));
  }
});
after(async () => {
  await server?.cleanup();
});

const key = (f) => ({ seqNo: f.seqNo, timestamp: f.timestamp, offset: f.offset });

test("forward pages of 100: 100, 100, 50, sorted by order key, no overlap, no skip", async () => {
  const p1 = await fc.history("hist", { limit: 100 });
  assert.equal(p1.frames.length, 100);
  assert.equal(p1.more, true);
  assert.equal(typeof p1.next, "string");
  assert.ok(p1.next.length > 0);
  assert.equal(p1.snapshotOffset, BigInt(N));
  assert.notEqual(p1.epoch, 0n);

  // Frames published after the first page are past its snapshot: no later page shows them.
  await fc.publish("hist", "late", { seqNo: 125 });

  const p2 = await fc.history("hist", { limit: 100, after: p1.next });
  const p3 = await fc.history("hist", { limit: 100, after: p2.next });
  assert.equal(p2.frames.length, 100);
  assert.equal(p2.more, true);
  assert.equal(p3.frames.length, 50);
  assert.equal(p3.more, false);
  assert.equal(p2.snapshotOffset, p1.snapshotOffset);
  assert.equal(p3.snapshotOffset, p1.snapshotOffset);
  assert.equal(p3.epoch, p1.epoch);

  const all = [...p1.frames, ...p2.frames, ...p3.frames];
  assert.deepEqual(all.map(key), [...stored].sort(byOrderKey).map(key));
  assert.deepEqual(
    all.map((f) => f.seqNo),
    Array.from({ length: N }, (_, i) => BigInt(i)),
  );
  assert.deepEqual(
    all.map((f) => f.text),
    Array.from({ length: N }, (_, i) => `h${i}`),
  );
  assert.ok(all.every((f) => f.offset < BigInt(N)));
});

test("reverse pages: newest first (descending order key), no overlap, no skip", async () => {
  const pages = [];
  for await (const page of fc.historyPages("hist", { limit: 100, reverse: true })) pages.push(page);
  assert.equal(pages.length, 3);
  assert.deepEqual(
    pages.map((p) => p.more),
    [true, true, false],
  );
  assert.equal(pages[0].frames.length, 100);
  assert.equal(pages[1].frames.length, 100);
  const all = pages.flatMap((p) => p.frames);
  const snapshot = pages[0].snapshotOffset;
  const expected = (await allStored()).filter((f) => f.offset < snapshot).sort(byOrderKey).reverse();
  assert.ok(expected.length >= N);
  assert.deepEqual(all.map(key), expected.map(key));
  assert.equal(all[0].seqNo, BigInt(N - 1), "the newest (largest order key) first");
  assert.equal(all.at(-1).seqNo, 0n);
  assert.equal(new Set(all.map((f) => f.offset)).size, all.length, "no frame twice");
});

test("from filters the pages by seq_no; historyPages walks forward", async () => {
  const pages = [];
  for await (const page of fc.historyPages("hist", { from: 200, limit: 20 })) pages.push(page);
  assert.deepEqual(
    pages.map((p) => p.frames.length),
    [20, 20, 10],
  );
  const all = pages.flatMap((p) => p.frames);
  assert.deepEqual(
    all.map((f) => f.seqNo),
    Array.from({ length: 50 }, (_, i) => BigInt(200 + i)),
  );
});

test("an empty topic has one empty page", async () => {
  await fc.createTopic("hist-empty");
  const page = await fc.history("hist-empty");
  assert.deepEqual(page.frames, []);
  assert.equal(page.more, false);
  assert.equal(page.snapshotOffset, 0n);
});

/** Every frame of "hist" now, read in one page. */
async function allStored() {
  const page = await fc.history("hist", { limit: 10_000 });
  assert.equal(page.more, false);
  return page.frames;
}
