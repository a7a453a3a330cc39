// A refusal whose body stalls (a proxy or server that sends the headers of a 4xx/5xx, then
// nothing): the body is read within the attempt's bound, so publish and history settle
// within callTimeoutMs and retryBudgetMs, and at once when the caller's signal aborts.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import { Framecast, FramecastError } from "../dist/index.js";
import { within } from "../test-support/server.mjs";

let stand;
let url;
let status = 503;
before(async () => {
  stand = http.createServer((req, res) => {
    req.resume();
    res.writeHead(status, { "content-type": "application/json", "content-length": "100" });
    res.write('{"code":'); // never finished
  });
  await new Promise((r) => stand.listen(0, "127.0.0.1", r));
  url = `http://127.0.0.1:${stand.address().port}`;
});
after(() => {
  stand.closeAllConnections();
  stand.close();
});

/** How long `p` takes to reject (it must, within `ms`), and its error. */
async function rejection(what, ms, p) {
  const t0 = Date.now();
  const e = await within(ms, what, p.then(() => assert.fail(`${what}: resolved`), (err) => err));
  return { e, ms: Date.now() - t0 };
}

for (const s of [503, 400, 404]) {
  test(`a ${s} whose body stalls: publish (keyed, keyless) and history settle within callTimeoutMs and retryBudgetMs`, async () => {
    status = s;
    const fc = new Framecast({ url, callTimeoutMs: 500, retryBudgetMs: 1500, backoff: { initialMs: 20, maxMs: 50 } });
    const results = await Promise.all([
      rejection("keyed publish", 5_000, fc.publish("t", "x", { seqNo: 1 })),
      rejection("keyless publish", 5_000, fc.publish("t", "x", { seqNo: 1, idempotencyKey: "" })),
      rejection("history", 5_000, fc.history("t")),
    ]);
    for (const [i, { e, ms }] of results.entries()) {
      assert.ok(e instanceof FramecastError, `${i}: ${e}`);
      // One attempt (a final refusal, or a keyless 503), or retries within the budget.
      assert.ok(ms < 1500 + 700, `${i}: settled after ${ms} ms`);
      if (s !== 503) assert.equal(e.status, s, `${i}: the status says what happened`);
      else assert.equal(e.code, "UNAVAILABLE");
    }
  });

  test(`a ${s} whose body stalls: an aborted signal settles publish and history at once`, async () => {
    status = s;
    const fc = new Framecast({ url }); // the defaults: 30 s per attempt, 60 s in all
    const ac = new AbortController();
    const reason = new Error("caller gave up");
    setTimeout(() => ac.abort(reason), 300);
    const results = await Promise.all([
      rejection("keyed publish", 3_000, fc.publish("t", "x", { seqNo: 1, signal: ac.signal })),
      rejection("keyless publish", 3_000, fc.publish("t", "x", { seqNo: 1, idempotencyKey: "", signal: ac.signal })),
      rejection("history", 3_000, fc.history("t", { signal: ac.signal })),
    ]);
    for (const [i, { e, ms }] of results.entries()) {
      assert.equal(e, reason, `${i}: rejects with the signal's reason`);
      assert.ok(ms < 1_300, `${i}: settled after ${ms} ms`);
    }
  });
}
