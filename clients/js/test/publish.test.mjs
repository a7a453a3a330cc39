// Publish over HTTP: the ack's shape, idempotent retries (explicit key, and the client's
// own key reused when an answer is lost or the server answers 503), retries bounded in time
// below the server's dedup window, writes without a key sent once, refusals.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { Framecast, FramecastError } from "../dist/index.js";
import { freePort, sleep, startServer, within } from "../test-support/server.mjs";

/** The error `fetch` throws for a connection refused: nothing reached a server. */
function connectionRefused() {
  return new TypeError("fetch failed", { cause: Object.assign(new Error("connect ECONNREFUSED (test)"), { code: "ECONNREFUSED" }) });
}

let server;
before(async () => {
  server = await startServer();
});
after(async () => {
  await server?.cleanup();
});

test("publish acks with bigint offset and timestamp, offsets count up from 0", async () => {
  const fc = new Framecast({ url: server.url });
  const before = BigInt(Date.now()) * 1_000_000n;
  const a0 = await fc.publish("acks", "hello", { seqNo: 1 });
  const a1 = await fc.publish("acks", new Uint8Array([0, 255, 1]), { seqNo: 2n });
  const after = BigInt(Date.now()) * 1_000_000n;
  assert.deepEqual(Object.keys(a0).sort(), ["duplicate", "offset", "timestamp"]);
  assert.equal(typeof a0.offset, "bigint");
  assert.equal(typeof a0.timestamp, "bigint");
  assert.equal(a0.offset, 0n);
  assert.equal(a1.offset, 1n);
  assert.equal(a0.duplicate, false);
  assert.equal(a1.duplicate, false);
  // No timestamp given: the server's receive time, in nanoseconds.
  assert.ok(a0.timestamp >= before - 5_000_000_000n && a0.timestamp <= after + 5_000_000_000n, `${a0.timestamp}`);

  // An explicit timestamp is stored as given; a 64-bit seq_no survives the trip.
  const ts = 1_700_000_000_123_456_789n;
  const a2 = await fc.publish("acks", "t", { seqNo: (1n << 64n) - 1n, timestamp: ts });
  assert.equal(a2.timestamp, ts);
  const page = await fc.history("acks", { from: (1n << 64n) - 1n });
  assert.equal(page.frames.length, 1);
  assert.equal(page.frames[0].seqNo, (1n << 64n) - 1n);
  assert.equal(page.frames[0].timestamp, ts);
  assert.equal(page.frames[0].text, "t");
});

test("a retry with the same idempotency key answers the first ack with duplicate: true", async () => {
  const fc = new Framecast({ url: server.url });
  await fc.publish("dedup", "first", { seqNo: 1 });
  const a = await fc.publish("dedup", "keyed", { seqNo: 2, idempotencyKey: "order-42" });
  const b = await fc.publish("dedup", "keyed", { seqNo: 2, idempotencyKey: "order-42" });
  assert.equal(a.duplicate, false);
  assert.equal(b.duplicate, true);
  assert.equal(b.offset, a.offset);
  assert.equal(b.timestamp, a.timestamp);
  const c = await fc.publish("dedup", "other", { seqNo: 3, idempotencyKey: "order-43" });
  assert.equal(c.duplicate, false);
  assert.equal(c.offset, a.offset + 1n);
  const page = await fc.history("dedup");
  assert.deepEqual(
    page.frames.map((f) => f.text),
    ["first", "keyed", "other"],
  );
});

test("a lost answer is retried with the client's own key: stored once, duplicate: true", async () => {
  const keys = [];
  let calls = 0;
  // Delivers the first publish to the server, then loses its answer, as a dropped connection would.
  const lossy = async (input, init) => {
    if (String(input).includes("/frames")) {
      keys.push(new Headers(init.headers).get("idempotency-key"));
      calls++;
      const resp = await fetch(input, init);
      if (calls === 1) {
        await resp.arrayBuffer();
        throw new TypeError("fetch failed (test: answer lost)");
      }
      return resp;
    }
    return fetch(input, init);
  };
  const fc = new Framecast({ url: server.url, fetch: lossy, backoff: { initialMs: 10, maxMs: 50 } });
  const ack = await fc.publish("lost-ack", "once", { seqNo: 7 });
  assert.equal(calls, 2);
  assert.equal(keys.length, 2);
  assert.ok(keys[0] && keys[0].length > 0, "the client sends a key of its own");
  assert.equal(keys[1], keys[0], "the retry reuses the key");
  assert.equal(ack.duplicate, true);
  assert.equal(ack.offset, 0n);
  const page = await fc.history("lost-ack");
  assert.equal(page.frames.length, 1, "stored once");

  // Two separate publishes get two different keys.
  keys.length = 0;
  await fc.publish("lost-ack", "again", { seqNo: 8 });
  await fc.publish("lost-ack", "again", { seqNo: 8 });
  assert.equal(keys.length, 2);
  assert.notEqual(keys[0], keys[1]);
  assert.equal((await fc.history("lost-ack")).frames.length, 3);
});

test("a 503 is retried; a 4xx is not", async () => {
  let calls = 0;
  const flaky = async (input, init) => {
    calls++;
    if (calls <= 2) {
      return new Response(JSON.stringify({ code: "UNAVAILABLE", message: "test: shutting down" }), {
        status: 503,
        headers: { "content-type": "application/json" },
      });
    }
    return fetch(input, init);
  };
  const fc = new Framecast({ url: server.url, fetch: flaky, backoff: { initialMs: 5, maxMs: 20 } });
  const ack = await fc.publish("flaky", "x", { seqNo: 1 });
  assert.equal(calls, 3);
  assert.equal(ack.offset, 0n);

  // Out of retries: the 503 itself is the error.
  calls = 0;
  await assert.rejects(fc.publish("flaky", "y", { seqNo: 2, retries: 1 }), (e) => {
    assert.ok(e instanceof FramecastError);
    assert.equal(e.code, "UNAVAILABLE");
    assert.equal(e.status, 503);
    return true;
  });
  assert.equal(calls, 2);

  // Refusals are final: asked once.
  const direct = new Framecast({ url: server.url });
  let asked = 0;
  const counting = new Framecast({
    url: server.url,
    fetch: (i, o) => {
      asked++;
      return fetch(i, o);
    },
  });
  await assert.rejects(counting.publish("bad name!", "x", { seqNo: 1 }), (e) => {
    assert.ok(e instanceof FramecastError);
    assert.equal(e.code, "INVALID_ARGUMENT");
    assert.equal(e.status, 400);
    return true;
  });
  assert.equal(asked, 1);
  await assert.rejects(direct.publish("x", "y", { seqNo: 1, idempotencyKey: "k".repeat(129) }), (e) => {
    assert.equal(e.code, "INVALID_ARGUMENT");
    assert.equal(e.status, 400);
    return true;
  });
});

test("an unreachable server is retried, then reported as UNAVAILABLE with status 0", async () => {
  // A port nothing listens on: the server's own gRPC port speaks HTTP/2 only, so take a closed one.
  const fc = new Framecast({ url: "http://127.0.0.1:9", backoff: { initialMs: 1, maxMs: 2 } });
  await assert.rejects(fc.publish("x", "y", { seqNo: 1, retries: 2 }), (e) => {
    assert.ok(e instanceof FramecastError);
    assert.equal(e.code, "UNAVAILABLE");
    assert.equal(e.status, 0);
    return true;
  });
});

// The server reads (and drops) a refused body before answering, so a fetch client that is
// still sending sees the 413, not a reset (RFC 9112 9.6, the "TCP reset problem").
test(
  "a payload over --max-frame-bytes is refused with 413 INVALID_ARGUMENT (10 tries, no retries)",
  async () => {
    const fc = new Framecast({ url: server.url });
    const seen = {};
    for (let i = 0; i < 10; i++) {
      try {
        await fc.publish("too-big", new Uint8Array(4 << 20), { seqNo: 1, retries: 0 });
        seen.stored = (seen.stored ?? 0) + 1;
      } catch (e) {
        const k = `${e.code} ${e.status}`;
        seen[k] = (seen[k] ?? 0) + 1;
      }
    }
    assert.deepEqual(seen, { "INVALID_ARGUMENT 413": 10 });
  },
);

test("a node that takes the connection but never answers costs one callTimeoutMs per attempt", async (t) => {
  const paused = await startServer();
  t.after(() => paused.cleanup());
  const fc = new Framecast({ url: paused.url, callTimeoutMs: 300, backoff: { initialMs: 10, maxMs: 20 } });
  await fc.publish("paused", "before", { seqNo: 1 });
  paused.proc.kill("SIGSTOP");
  let resumed = false;
  t.after(() => {
    if (!resumed) paused.proc.kill("SIGCONT");
  });
  const started = Date.now();
  await assert.rejects(fc.publish("paused", "during", { seqNo: 2, retries: 2 }), (e) => {
    assert.ok(e instanceof FramecastError, String(e));
    assert.equal(e.code, "UNAVAILABLE");
    assert.match(e.message, /no answer within 300 ms/, e.message);
    return true;
  });
  const took = Date.now() - started;
  // Three attempts of 300 ms and two short backoffs: well under the 30 s default's one.
  assert.ok(took < 10_000, `gave up after ${took} ms`);
  paused.proc.kill("SIGCONT");
  resumed = true;
  // The same key went with every attempt: a frame stored once, whatever the paused node did.
  const ack = await fc.publish("paused", "after", { seqNo: 3 });
  assert.ok(ack.offset >= 1n);
  const texts = (await fc.history("paused")).frames.map((f) => f.text);
  assert.ok(texts.filter((x) => x === "during").length <= 1, `stored twice: ${texts}`);
  assert.deepEqual(
    texts.filter((x) => x !== "during"),
    ["before", "after"],
  );
  for (const bad of [0, 1500.5, 2 ** 31, Infinity]) {
    assert.throws(() => new Framecast({ url: paused.url, callTimeoutMs: bad }), TypeError, String(bad));
  }
});

test("retries stop at retryBudgetMs, before the server's --dedup-window forgets the key: stored once", async (t) => {
  const DEDUP_WINDOW_MS = 1000;
  const short = await startServer({ args: ["--dedup-window", `${DEDUP_WINDOW_MS}ms`] });
  t.after(() => short.cleanup());
  let firstSentAt;
  let posts = 0;
  // The first attempt reaches the server and its answer is lost; then the node refuses
  // connections until the server's window for that key has passed, and takes them again.
  const flaky = async (input, init) => {
    if (!String(input).includes("/frames")) return fetch(input, init);
    posts++;
    if (firstSentAt === undefined) {
      firstSentAt = Date.now();
      await (await fetch(input, init)).arrayBuffer();
      throw new TypeError("fetch failed (test: answer lost)");
    }
    if (Date.now() < firstSentAt + DEDUP_WINDOW_MS + 200) throw connectionRefused();
    return fetch(input, init);
  };
  // Eight retries 200 to 400 ms apart would outlast the window; the budget ends them first.
  const fc = new Framecast({ url: short.url, fetch: flaky, retryBudgetMs: 700, backoff: { initialMs: 400, maxMs: 400 } });
  await assert.rejects(fc.publish("budget", "once", { seqNo: 1 }), (e) => {
    assert.ok(e instanceof FramecastError, String(e));
    assert.deepEqual([e.code, e.status], ["UNAVAILABLE", 0]);
    assert.match(e.message, /ECONNREFUSED/);
    return true;
  });
  assert.ok(posts >= 2, `${posts} attempts`);
  const page = await new Framecast({ url: short.url }).history("budget");
  assert.deepEqual(
    page.frames.map((f) => f.text),
    ["once"],
    "stored once: no retry went out after the server forgot the key",
  );
});

test("a write without a key is sent once when a 503 may have followed its append; with a key, retried harmlessly", async () => {
  let writes = 0;
  let replaceLeft = Infinity;
  // Passes the write to the server, then answers a plain 503 in its place, as a leader that
  // lost its lease after appending would.
  const appliedThen503 = async (input, init) => {
    const resp = await fetch(input, init);
    if (init?.method !== "POST" || replaceLeft <= 0) return resp;
    writes++;
    replaceLeft--;
    await resp.arrayBuffer();
    return new Response(JSON.stringify({ code: "UNAVAILABLE", message: "test: appended, then unavailable" }), {
      status: 503,
      headers: { "content-type": "application/json" },
    });
  };
  const fc = new Framecast({ url: server.url, fetch: appliedThen503, backoff: { initialMs: 5, maxMs: 20 } });
  const unavailable = (e) => e instanceof FramecastError && e.code === "UNAVAILABLE" && e.status === 503;
  await assert.rejects(fc.publish("keyless-503", "x", { seqNo: 1, idempotencyKey: "" }), unavailable);
  await assert.rejects(fc.broadcast(["keyless-503.b"], "y", { seqNo: 1, idempotencyKey: "" }), unavailable);
  assert.equal(writes, 2, "each sent once");
  const plain = new Framecast({ url: server.url });
  assert.equal((await plain.history("keyless-503")).frames.length, 1);
  assert.equal((await plain.history("keyless-503.b")).frames.length, 1);

  // With a key the 503 is retried, and the retry is answered with the first ack.
  writes = 0;
  replaceLeft = 1;
  const ack = await fc.publish("keyed-503", "z", { seqNo: 1 });
  assert.equal(writes, 1);
  assert.deepEqual([ack.offset, ack.duplicate], [0n, true]);
  assert.equal((await plain.history("keyed-503")).frames.length, 1);
});

test("a write without a key is sent again after a 503 that says it wrote nothing (Framecast-Unwritten: a server still starting)", async () => {
  let refusedLeft = 2;
  let posts = 0;
  // The first two writes are answered as a server still recovering its topics answers them,
  // without reaching it.
  const starting = async (input, init) => {
    if (init?.method === "POST") {
      posts++;
      if (refusedLeft > 0) {
        refusedLeft--;
        return new Response(JSON.stringify({ code: "UNAVAILABLE", message: "server starting: recovering topics" }), {
          status: 503,
          headers: { "content-type": "application/json", "framecast-unwritten": "starting", "retry-after": "1" },
        });
      }
    }
    return fetch(input, init);
  };
  const fc = new Framecast({ url: server.url, fetch: starting, backoff: { initialMs: 5, maxMs: 20 } });
  const ack = await fc.publish("keyless-starting", "once", { seqNo: 1, idempotencyKey: "" });
  assert.equal(ack.offset, 0n);
  assert.equal(posts, 3, "two refused while starting, then stored");
  const page = await new Framecast({ url: server.url }).history("keyless-starting");
  assert.deepEqual(page.frames.map((f) => f.text), ["once"], "stored exactly once");
});

test("a write without a key is sent again after a connection refused, on a single node: a server still starting stores it once", async (t) => {
  const port = await freePort();
  // Nothing listens on the port for the first second: every attempt until then is refused.
  let late;
  const starting = sleep(1000).then(async () => {
    late = await startServer({ httpListen: `127.0.0.1:${port}` });
  });
  t.after(async () => {
    await starting.catch(() => {});
    await late?.cleanup();
  });
  let posts = 0;
  const counting = (input, init) => {
    if (init?.method === "POST") posts++;
    return fetch(input, init);
  };
  const fc = new Framecast({ url: `http://127.0.0.1:${port}`, fetch: counting, backoff: { initialMs: 50, maxMs: 250 } });
  const ack = await within(
    30_000,
    "the keyless publish",
    fc.publish("keyless-refused", "once", { seqNo: 1, idempotencyKey: "", retries: 40 }),
  );
  await starting;
  assert.equal(ack.offset, 0n);
  assert.ok(posts >= 2, `${posts} attempts: the first ones were refused`);
  const page = await new Framecast({ url: late.url }).history("keyless-refused");
  assert.deepEqual(
    page.frames.map((f) => f.text),
    ["once"],
    "stored exactly once",
  );
});

test("createTopic is retried after a lost answer: the server answers the topic it made", async () => {
  let puts = 0;
  const lossy = async (input, init) => {
    const resp = await fetch(input, init);
    if (init?.method === "PUT" && ++puts === 1) {
      await resp.arrayBuffer();
      throw new TypeError("fetch failed (test: answer lost)");
    }
    return resp;
  };
  const fc = new Framecast({ url: server.url, fetch: lossy, backoff: { initialMs: 5, maxMs: 20 } });
  const info = await fc.createTopic("created-once", { retentionMaxBytes: 1 << 20 });
  assert.equal(puts, 2);
  assert.equal(info.name, "created-once");
  assert.equal(info.frames, 0n);
});
