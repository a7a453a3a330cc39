// Topics (list, create with settings, delete) and broadcast to several topics.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { Framecast, FramecastError } from "../dist/index.js";
import { startServer, nextFrames } from "../test-support/server.mjs";

let server;
let fc;
before(async () => {
  server = await startServer();
  fc = new Framecast({ url: server.url });
});
after(async () => {
  await server?.cleanup();
});

const rejectsWith = (code, status) => (e) => {
  assert.ok(e instanceof FramecastError, String(e));
  assert.equal(e.code, code);
  assert.equal(e.status, status);
  assert.equal(typeof e.message, "string");
  return true;
};

test("createTopic, topics, deleteTopic", async () => {
  const info = await fc.createTopic("orders", { retentionMaxAgeSeconds: 3600, retentionMaxBytes: 1n << 30n });
  assert.equal(info.name, "orders");
  assert.equal(typeof info.epoch, "bigint");
  assert.notEqual(info.epoch, 0n);
  assert.equal(info.frames, 0n);
  assert.equal(info.nextOffset, 0n);
  await assert.rejects(fc.createTopic("orders"), rejectsWith("ALREADY_EXISTS", 409));

  await fc.publish("orders", "o1", { seqNo: 1 });
  await fc.publish("orders", "o2", { seqNo: 2 });
  const listed = (await fc.topics()).find((t) => t.name === "orders");
  assert.ok(listed, "orders is listed");
  assert.equal(listed.epoch, info.epoch);
  assert.equal(listed.frames, 2n);
  assert.equal(listed.nextOffset, 2n);
  assert.equal(listed.minSeqNo, 1n);
  assert.equal(listed.maxSeqNo, 2n);
  assert.ok(listed.bytes > 0n);
  assert.equal(typeof listed.subscribers, "number");
  assert.equal(typeof listed.segments, "number");

  await fc.deleteTopic("orders");
  assert.equal((await fc.topics()).find((t) => t.name === "orders"), undefined);
  await assert.rejects(fc.deleteTopic("orders"), rejectsWith("NOT_FOUND", 404));

  // Re-created: empty, at offset 0, with a new epoch.
  const again = await fc.createTopic("orders");
  assert.notEqual(again.epoch, info.epoch);
  const ack = await fc.publish("orders", "o1", { seqNo: 1 });
  assert.equal(ack.offset, 0n);

  await assert.rejects(fc.createTopic("no spaces"), rejectsWith("INVALID_ARGUMENT", 400));
  // "" is "default".
  await fc.publish("", "to default", { seqNo: 1 });
  assert.ok((await fc.topics()).some((t) => t.name === "default"));
});

test("broadcast writes one frame to each topic; a retry with the same key duplicates nothing", async (t) => {
  await fc.createTopic("room.a");
  await fc.publish("room.b", "earlier", { seqNo: 1 });
  const subA = fc.subscribe("room.a");
  const subB = fc.subscribe("room.b", { from: 5 });
  t.after(() => {
    subA.close();
    subB.close();
  });

  const ack = await fc.broadcast(["room.a", "room.b"], "hello rooms", { seqNo: 5, idempotencyKey: "bc-1" });
  const byTopic = Object.fromEntries(ack.acks.map((a) => [a.topic, a]));
  assert.deepEqual(Object.keys(byTopic).sort(), ["room.a", "room.b"]);
  assert.equal(byTopic["room.a"].offset, 0n);
  assert.equal(byTopic["room.b"].offset, 1n);
  assert.ok(ack.acks.every((a) => a.duplicate === false && typeof a.timestamp === "bigint"));

  const [fa] = await nextFrames(subA, 1);
  const [fb] = await nextFrames(subB, 1);
  assert.deepEqual([fa.text, fa.seqNo, fa.offset], ["hello rooms", 5n, 0n]);
  assert.deepEqual([fb.text, fb.seqNo, fb.offset], ["hello rooms", 5n, 1n]);

  const again = await fc.broadcast(["room.a", "room.b"], "hello rooms", { seqNo: 5, idempotencyKey: "bc-1" });
  for (const a of again.acks) {
    assert.equal(a.duplicate, true, a.topic);
    assert.equal(a.offset, byTopic[a.topic].offset);
    assert.equal(a.timestamp, byTopic[a.topic].timestamp);
  }
  assert.equal((await fc.history("room.a")).frames.length, 1);
  assert.equal((await fc.history("room.b")).frames.length, 2);

  // A pattern reaches the existing topics it matches; binary payloads go as bytes.
  const bytes = new Uint8Array([1, 2, 3, 250]);
  const wild = await fc.broadcast(["room.*"], bytes, { seqNo: 6 });
  assert.deepEqual(wild.acks.map((a) => a.topic).sort(), ["room.a", "room.b"]);
  const [wa] = await nextFrames(subA, 1);
  assert.deepEqual(wa.payload, bytes);

  // Validated before anything is written.
  await assert.rejects(fc.broadcast(["room.a", "bad name"], "x", { seqNo: 7 }), rejectsWith("INVALID_ARGUMENT", 400));
  assert.equal((await fc.history("room.a")).frames.length, 2);
});
