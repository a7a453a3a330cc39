// A slow token function (an auth service that takes 20 s) holds up neither close(), nor
// the caller's signal, nor callTimeoutMs: the token is raced against them.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { Framecast, FramecastError } from "../dist/index.js";
import { startServer, within } from "../test-support/server.mjs";

let server;
before(async () => {
  server = await startServer();
});
after(async () => {
  await server?.cleanup();
});

let asked = 0;
/** A token that comes after 20 s (the timer does not keep the test alive). */
const slowToken = () => {
  asked++;
  return new Promise((r) => setTimeout(() => r("tok"), 20_000).unref());
};

const after300 = (f) => setTimeout(f, 300);

test("a slow token function: sub.close() ends the subscription at once", async () => {
  const fc = new Framecast({ url: server.url, token: slowToken });
  const sub = fc.subscribe("t");
  const t0 = Date.now();
  const next = sub.next();
  after300(() => sub.close());
  const r = await within(1_500, "next() to settle after close()", next);
  assert.equal(r.done, true);
  assert.ok(Date.now() - t0 < 1_500);
  await within(500, "return() after close()", sub.return());
});

test("a slow token function: an aborted signal ends the subscription at once", async () => {
  const fc = new Framecast({ url: server.url, token: slowToken });
  const ac = new AbortController();
  const sub = fc.subscribe("t", { signal: ac.signal });
  const next = sub.next();
  after300(() => ac.abort());
  const r = await within(1_500, "next() to settle after the abort", next);
  assert.equal(r.done, true);
});

test("a slow token function: publish and history settle when their signal aborts", async () => {
  const fc = new Framecast({ url: server.url, token: slowToken });
  const ac = new AbortController();
  const reason = new Error("caller gave up");
  after300(() => ac.abort(reason));
  const calls = [
    fc.publish("t", "x", { seqNo: 1, signal: ac.signal }),
    fc.publish("t", "x", { seqNo: 1, idempotencyKey: "", signal: ac.signal }),
    fc.history("t", { signal: ac.signal }),
  ];
  for (const p of calls) {
    await within(1_500, "the call to settle after its signal aborted", assert.rejects(p, (e) => e === reason));
  }
});

test("a slow token function: a call ends with callTimeoutMs, and is not sent", async () => {
  const fc = new Framecast({ url: server.url, token: slowToken, callTimeoutMs: 400 });
  const before = asked;
  const t0 = Date.now();
  await within(
    2_000,
    "publish to settle after callTimeoutMs",
    assert.rejects(fc.publish("t", "x", { seqNo: 1 }), (e) => {
      assert.ok(e instanceof FramecastError, String(e));
      assert.deepEqual([e.code, e.status], ["UNAVAILABLE", 0]);
      assert.match(e.message, /token function/);
      return true;
    }),
  );
  assert.ok(Date.now() - t0 < 1_500);
  assert.equal(asked - before, 1, "the token function is not piled up with retries");
  // Nothing was sent: not even the topic exists.
  await assert.rejects(new Framecast({ url: server.url }).history("t"), (e) => e.code === "NOT_FOUND");
});
