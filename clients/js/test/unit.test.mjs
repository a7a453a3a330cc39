// The pieces that need no server: the event-stream parser, base64, argument checks, keys,
// and what the client does with each kind of answer, against fake `fetch` functions.

import { test } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { getEventListeners } from "node:events";
import { rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";
import { Framecast, FramecastError, newIdempotencyKey } from "../dist/index.js";
import { PACKAGE_DIR, tempDir, within } from "../test-support/server.mjs";
import { SseParser } from "../dist/sse.js";
import { base64Decode, base64Encode, integerText } from "../dist/wire.js";

test("SSE: fields, comments, multi-line data, ids that persist, every line ending", () => {
  const stream =
    ": ping\n" +
    "event: snapshot\nid: t0\ndata: {\"a\":1}\n\n" +
    "event: frame\r\nid: t1\r\ndata: line one\r\ndata: line two\r\n\r\n" +
    "event:frame\rid:t2\rdata:x\r\r" +
    "data: no type, no id\n\n" +
    "id: t3\n\n" + // an id alone dispatches nothing
    "event: error\ndata: {\"code\":\"UNAVAILABLE\"}\n\n";
  const want = [
    { event: "snapshot", data: '{"a":1}', id: "t0" },
    { event: "frame", data: "line one\nline two", id: "t1" },
    { event: "frame", data: "x", id: "t2" },
    { event: "message", data: "no type, no id", id: "t2" },
    { event: "error", data: '{"code":"UNAVAILABLE"}', id: "t3" },
  ];
  // Whole, and cut at every position (a "\r\n" split across chunks is one line end).
  assert.deepEqual(new SseParser().push(stream), want);
  for (let cut = 1; cut < stream.length; cut++) {
    const p = new SseParser();
    const got = [...p.push(stream.slice(0, cut)), ...p.push(stream.slice(cut))];
    assert.deepEqual(got, want, `cut at ${cut}`);
  }
  // One character at a time.
  const p = new SseParser();
  assert.deepEqual(
    [...stream].flatMap((c) => p.push(c)),
    want,
  );
  // Empty chunks (a decoder holding half a character) change nothing, even after a "\r".
  const q = new SseParser();
  assert.deepEqual([...q.push("data: a\r"), ...q.push(""), ...q.push("\n\r\n")], [{ event: "message", data: "a", id: undefined }]);
  // An incomplete event is not dispatched.
  assert.deepEqual(new SseParser().push("event: frame\ndata: half"), []);
  // A line of 6 MB (a frame at the default --max-frame-bytes, in base64 and as text) in
  // 16 KiB chunks, then a burst of small events in one chunk: whole, in order.
  const big = "x".repeat(6_000_000);
  const r = new SseParser();
  const long = `event: frame\nid: big\ndata: ${big}\n\n`;
  const gotBig = [];
  for (let i = 0; i < long.length; i += 16_384) gotBig.push(...r.push(long.slice(i, i + 16_384)));
  assert.equal(gotBig.length, 1);
  assert.equal(gotBig[0].data.length, big.length);
  const burst = Array.from({ length: 5000 }, (_, i) => `id: s${i}\ndata: ${i}\n\n`).join("");
  const small = r.push(burst);
  assert.deepEqual(
    small.map((e) => e.data),
    Array.from({ length: 5000 }, (_, i) => String(i)),
  );
  // The id given at construction (a resume cursor) is the last id until the stream names one.
  assert.deepEqual(new SseParser("c9").push("data: d\n\n"), [{ event: "message", data: "d", id: "c9" }]);
});

test("base64: round trips against Buffer, both alphabets, with and without padding", () => {
  for (let n = 0; n < 70; n++) {
    const bytes = Uint8Array.from({ length: n }, (_, i) => (i * 97 + n * 13) & 0xff);
    const b64 = base64Encode(bytes);
    assert.equal(b64, Buffer.from(bytes).toString("base64"));
    assert.deepEqual(base64Decode(b64), bytes);
    assert.deepEqual(base64Decode(Buffer.from(bytes).toString("base64url")), bytes);
  }
  assert.throws(() => base64Decode("ab$d"), SyntaxError);
});

test("argument checks: 64-bit integers, URLs, retries", async () => {
  assert.equal(integerText("seqNo", 0), "0");
  assert.equal(integerText("seqNo", (1n << 64n) - 1n), "18446744073709551615");
  assert.throws(() => integerText("seqNo", 1n << 64n), RangeError);
  assert.throws(() => integerText("seqNo", -1), RangeError);
  assert.throws(() => integerText("seqNo", 1.5), TypeError);
  assert.throws(() => integerText("seqNo", 2 ** 60), TypeError, "unsafe numbers must be bigints");
  assert.throws(() => integerText("timestamp", 1n << 63n, true), RangeError);
  assert.throws(() => new Framecast({ url: "127.0.0.1:7071" }), TypeError);
  assert.throws(() => new Framecast({ url: [] }), TypeError);
  assert.deepEqual(new Framecast({ url: "http://h:1/" }).urls, ["http://h:1"]);
  const fc = new Framecast({ url: "http://127.0.0.1:9", fetch: () => assert.fail("no request expected") });
  await assert.rejects(fc.publish("t", "x", { seqNo: 1, retries: -1 }), RangeError);
  await assert.rejects(fc.publish("t", 5, { seqNo: 1 }), TypeError);
  await assert.rejects(fc.publish("..", "x", { seqNo: 1 }), (e) => e.code === "INVALID_ARGUMENT");
});

test("idempotency keys: random UUIDs, or getRandomValues hex where randomUUID is missing", (t) => {
  const a = newIdempotencyKey();
  const b = newIdempotencyKey();
  assert.match(a, /^[0-9a-f-]{36}$/);
  assert.notEqual(a, b);
  // An insecure browser context has crypto.getRandomValues but no crypto.randomUUID.
  const own = Object.getOwnPropertyDescriptor(crypto, "randomUUID");
  Object.defineProperty(crypto, "randomUUID", { value: undefined, configurable: true, writable: true });
  t.after(() => {
    if (own) Object.defineProperty(crypto, "randomUUID", own);
    else delete crypto.randomUUID;
  });
  const c = newIdempotencyKey();
  assert.match(c, /^[0-9a-f]{32}$/);
  assert.notEqual(c, newIdempotencyKey());
});

test("the token is sent as a bearer header, asked anew each request; the leader header is followed", async () => {
  const seen = [];
  let n = 0;
  const fake = async (url, init) => {
    seen.push({ url: String(url), auth: new Headers(init.headers).get("authorization") });
    if (seen.length === 1) {
      return new Response('{"code":"UNAVAILABLE","message":"not the leader"}', {
        status: 503,
        headers: { "framecast-leader": "b.example:7071" },
      });
    }
    return new Response('{"offset":"3","timestamp":"9","duplicate":false}', { status: 200 });
  };
  const fc = new Framecast({
    url: ["http://a.example:7071", "http://b.example:7071"],
    token: () => `tok${++n}`,
    fetch: fake,
    backoff: { initialMs: 1, maxMs: 2 },
  });
  const ack = await fc.publish("t", "x", { seqNo: 1 });
  assert.deepEqual(ack, { offset: 3n, timestamp: 9n, duplicate: false });
  assert.deepEqual(
    seen.map((s) => [new URL(s.url).host, s.auth]),
    [
      ["a.example:7071", "Bearer tok1"],
      ["b.example:7071", "Bearer tok2"],
    ],
  );
});

test("a leader hint from an https node is followed over https, never plain http with the token", async () => {
  const seen = [];
  const fake = async (url, init) => {
    seen.push({ url: String(url), auth: new Headers(init.headers).get("authorization") });
    if (seen.length === 1) {
      return new Response('{"code":"UNAVAILABLE","message":"not the leader"}', {
        status: 503,
        headers: { "framecast-leader": "http://b.example:7071" },
      });
    }
    return new Response('{"offset":"0","timestamp":"9","duplicate":false}', { status: 200 });
  };
  const fc = new Framecast({
    url: "https://a.example:7071",
    token: "secret-token",
    fetch: fake,
    backoff: { initialMs: 1, maxMs: 2 },
  });
  await fc.publish("t", "x", { seqNo: 1 });
  assert.deepEqual(
    seen.map((s) => [new URL(s.url).origin, s.auth]),
    [
      ["https://a.example:7071", "Bearer secret-token"],
      ["https://b.example:7071", "Bearer secret-token"],
    ],
  );
});

test("a failing token function ends a subscription with its error instead of reconnecting forever", async () => {
  let fetched = 0;
  const fc = new Framecast({
    url: "http://127.0.0.1:9",
    token: () => {
      throw new Error("no session");
    },
    fetch: () => {
      fetched++;
      throw new TypeError("unreachable");
    },
  });
  await assert.rejects(fc.subscribe("t").next(), /no session/);
  await assert.rejects(fc.publish("t", "x", { seqNo: 1 }), /no session/);
  assert.equal(fetched, 0);
});

test("an empty idempotency key sends no header and is not retried after a network error", async () => {
  const keys = [];
  const fc = new Framecast({
    url: "http://127.0.0.1:9",
    backoff: { initialMs: 1, maxMs: 2 },
    fetch: async (_url, init) => {
      keys.push(new Headers(init.headers).get("idempotency-key"));
      throw new TypeError("connection reset");
    },
  });
  await assert.rejects(fc.publish("t", "x", { seqNo: 1, idempotencyKey: "" }), (e) => e.code === "UNAVAILABLE" && e.status === 0);
  assert.deepEqual(keys, [null]);
  keys.length = 0;
  await assert.rejects(fc.publish("t", "x", { seqNo: 1, retries: 3 }), (e) => e.code === "UNAVAILABLE");
  assert.equal(keys.length, 4);
  assert.equal(new Set(keys).size, 1);
});

test("a write without a key is retried after a connection refused, on one node, within its retries", async () => {
  let attempts = 0;
  const refusing = async () => {
    attempts++;
    throw new TypeError("fetch failed", { cause: Object.assign(new Error("connect ECONNREFUSED (test)"), { code: "ECONNREFUSED" }) });
  };
  const fc = new Framecast({ url: "http://127.0.0.1:9", fetch: refusing, backoff: { initialMs: 1, maxMs: 2 } });
  const refused = (e) => e instanceof FramecastError && e.code === "UNAVAILABLE" && e.status === 0 && /ECONNREFUSED/.test(e.message);
  await assert.rejects(fc.publish("t", "x", { seqNo: 1, idempotencyKey: "", retries: 3 }), refused);
  assert.equal(attempts, 4, "the first attempt and 3 retries");
  attempts = 0;
  await assert.rejects(fc.broadcast(["t"], "x", { seqNo: 1, idempotencyKey: "", retries: 2 }), refused);
  assert.equal(attempts, 3);
  attempts = 0;
  await assert.rejects(fc.deleteTopic("t"), refused);
  assert.equal(attempts, 9, "deleteTopic: 8 retries");
});

// ------------------------------------------------------------------ answers, faked

const FAST = { initialMs: 1, maxMs: 2 };

/** A JSON error answer, as the server (or a proxy, with `body` text) gives it. */
function refusal(status, code, { headers = {}, body } = {}) {
  return new Response(body ?? JSON.stringify({ code, message: `test: ${status}` }), {
    status,
    headers: { "content-type": "application/json", ...headers },
  });
}

/** A publish ack. */
const ackAnswer = () => new Response('{"offset":"0","timestamp":"9","duplicate":false}', { status: 200 });

/**
 * A 200 event stream holding `events` ([type, id, data]), ended after them, or kept open
 * (`open`) until the request's signal aborts.
 */
function eventStream(events, { open = false, signal } = {}) {
  const text = events.map(([type, id, data]) => `event: ${type}\nid: ${id}\ndata: ${JSON.stringify(data)}\n\n`).join("");
  const body = new ReadableStream({
    start(controller) {
      controller.enqueue(new TextEncoder().encode(text));
      if (!open) controller.close();
      else signal?.addEventListener("abort", () => controller.error(signal.reason), { once: true });
    },
  });
  return new Response(body, { status: 200, headers: { "content-type": "text/event-stream" } });
}

const SNAPSHOT = ["snapshot", "c0", { snapshot_offset: "0", epoch: "7" }];
const frameEvent = (offset) => ["frame", `c${offset + 1}`, { seq_no: "1", timestamp: "5", offset: String(offset), live: true, payload: "eA==" }];

test("statuses: 502 and 504 are retried like 503 for reads and keyed writes, final for a keyless write", async () => {
  const answers = [];
  let calls = 0;
  const fake = async () => {
    calls++;
    return answers.shift()?.() ?? ackAnswer();
  };
  const fc = new Framecast({ url: "http://a.example:7071", fetch: fake, backoff: FAST });
  // A proxy in front of the node answers with its own page, not framecast's JSON.
  const proxy = (status) => () => refusal(status, "", { body: `<html>${status}</html>` });
  answers.push(proxy(502), proxy(504), () => new Response('{"frames":[],"more":false,"snapshot_offset":"0","epoch":"1"}'));
  const page = await fc.history("t");
  assert.equal(page.frames.length, 0);
  assert.equal(calls, 3, "a read goes on after a 502 and a 504");

  calls = 0;
  answers.push(proxy(504));
  assert.equal((await fc.publish("t", "x", { seqNo: 1 })).offset, 0n);
  assert.equal(calls, 2, "a keyed publish goes on after a 504");

  for (const status of [502, 504]) {
    calls = 0;
    answers.push(proxy(status));
    await assert.rejects(fc.publish("t", "x", { seqNo: 1, idempotencyKey: "" }), (e) => {
      assert.ok(e instanceof FramecastError, String(e));
      assert.deepEqual([e.code, e.status], ["UNAVAILABLE", status]);
      return true;
    });
    assert.equal(calls, 1, `a keyless publish is not sent again after a ${status}: the proxy may have passed it on`);
  }

  // Retries spent: the proxy's status is the error, read as UNAVAILABLE.
  calls = 0;
  answers.push(proxy(502), proxy(502));
  await assert.rejects(fc.publish("t", "x", { seqNo: 1, retries: 1 }), (e) => {
    assert.deepEqual([e.code, e.status, e.message], ["UNAVAILABLE", 502, "<html>502</html>"]);
    return true;
  });
  assert.equal(calls, 2);
});

test("writes without a key, and deleteTopic, are not sent again after a plain 503; a follower's refusal is followed", async () => {
  const seen = [];
  let answer = () => refusal(503, "UNAVAILABLE");
  const fake = async (url, init) => {
    seen.push(`${init.method} ${new URL(url).host}${new URL(url).pathname}`);
    return answer(new URL(url));
  };
  const fc = new Framecast({ url: ["http://a.example:7071", "http://b.example:7071"], fetch: fake, backoff: FAST });
  const unavailable = (e) => e instanceof FramecastError && e.code === "UNAVAILABLE" && e.status === 503;
  await assert.rejects(fc.publish("t", "x", { seqNo: 1, idempotencyKey: "" }), unavailable);
  await assert.rejects(fc.broadcast(["t"], "x", { seqNo: 1, idempotencyKey: "" }), unavailable);
  await assert.rejects(fc.deleteTopic("t"), unavailable);
  assert.deepEqual(seen, ["POST a.example:7071/v1/topics/t/frames", "POST a.example:7071/v1/broadcast", "DELETE a.example:7071/v1/topics/t"]);

  // A follower's 503 naming the leader wrote nothing: followed, even without a key.
  seen.length = 0;
  answer = (u) =>
    u.host === "a.example:7071"
      ? refusal(503, "UNAVAILABLE", { headers: { "framecast-leader": "http://b.example:7071" } })
      : u.pathname.endsWith("/frames")
        ? ackAnswer()
        : new Response(null, { status: 204 });
  const again = new Framecast({ url: ["http://a.example:7071", "http://b.example:7071"], fetch: fake, backoff: FAST });
  await again.publish("t", "x", { seqNo: 1, idempotencyKey: "" });
  const other = new Framecast({ url: ["http://a.example:7071", "http://b.example:7071"], fetch: fake, backoff: FAST });
  await other.deleteTopic("t");
  assert.deepEqual(seen, [
    "POST a.example:7071/v1/topics/t/frames",
    "POST b.example:7071/v1/topics/t/frames",
    "DELETE a.example:7071/v1/topics/t",
    "DELETE b.example:7071/v1/topics/t",
  ]);
});

test("a call gives up once retryBudgetMs is spent, its last attempt cut to what is left", async () => {
  // A node that takes the request and never answers: only the attempt's own bound ends it.
  let calls = 0;
  const silent = (_url, init) =>
    new Promise((_, reject) => {
      calls++;
      init.signal.addEventListener("abort", () => reject(init.signal.reason), { once: true });
    });
  const fc = new Framecast({ url: "http://a.example:7071", fetch: silent, backoff: FAST, retryBudgetMs: 300 });
  const started = Date.now();
  await within(
    10_000,
    "the publish to give up",
    assert.rejects(fc.publish("t", "x", { seqNo: 1 }), (e) => {
      assert.ok(e instanceof FramecastError, String(e));
      assert.deepEqual([e.code, e.status], ["UNAVAILABLE", 0]);
      assert.match(e.message, /no answer within \d+ ms \(the end of the call's retry budget\)/);
      return true;
    }),
  );
  const took = Date.now() - started;
  assert.ok(took >= 280 && took < 2_000, `gave up after ${took} ms (callTimeoutMs is 30000)`);
  assert.equal(calls, 1);
  for (const bad of [0, -1, 1.5, 2 ** 31, Infinity, "60000"]) {
    assert.throws(() => new Framecast({ url: "http://a:1", retryBudgetMs: bad }), TypeError, String(bad));
  }
});

test("a bad idempotency key or token is refused at once, before any request", async () => {
  let requests = 0;
  // The real fetch, counted: it would throw a TypeError on some of these headers, and send the others.
  const counting = (url, init) => {
    requests++;
    return fetch(url, init);
  };
  const fc = new Framecast({ url: "http://127.0.0.1:9", fetch: counting });
  const invalid = (e) => {
    assert.ok(e instanceof FramecastError, String(e));
    assert.equal(e.code, "INVALID_ARGUMENT");
    return true;
  };
  const started = Date.now();
  for (const key of ["ключ", "café", "two words", "line\nbreak", "k".repeat(129)]) {
    await assert.rejects(fc.publish("t", "x", { seqNo: 1, idempotencyKey: key }), invalid, JSON.stringify(key));
    await assert.rejects(fc.broadcast(["t"], "x", { seqNo: 1, idempotencyKey: key }), invalid, JSON.stringify(key));
  }
  for (const token of ["tök€n", "tok en", () => "tok\nen", async () => "токен"]) {
    const bad = new Framecast({ url: "http://127.0.0.1:9", fetch: counting, token });
    await assert.rejects(bad.publish("t", "x", { seqNo: 1 }), invalid, String(token));
    await assert.rejects(bad.history("t"), invalid, String(token));
    await assert.rejects(within(5_000, "the subscription to be refused", bad.subscribe("t").next()), invalid, String(token));
  }
  assert.throws(() => fc.subscribe("t", { resume: "ключ" }), invalid);
  assert.equal(requests, 0);
  assert.ok(Date.now() - started < 2_000, "refused at once, not retried");

  // A key of 128 visible characters, and a token with blanks around it, are fine.
  const seen = [];
  const fake = async (_url, init) => {
    const h = new Headers(init.headers);
    seen.push([h.get("idempotency-key"), h.get("authorization")]);
    return ackAnswer();
  };
  const ok = new Framecast({ url: "http://a.example:7071", fetch: fake, token: " tok.en-1_~ \n" });
  await ok.publish("t", "x", { seqNo: 1, idempotencyKey: "!".repeat(64) + "~".repeat(64) });
  assert.deepEqual(seen, [["!".repeat(64) + "~".repeat(64), "Bearer tok.en-1_~"]]);
});

test("maxReconnects counts reconnects without a frame: a stream accepted and dropped at once gives up", async (t) => {
  let connects = 0;
  const dropping = async (_url, init) => {
    connects++;
    return eventStream([SNAPSHOT], { signal: init.signal });
  };
  const fc = new Framecast({ url: "http://a.example:7071", fetch: dropping, backoff: FAST });
  const sub = fc.subscribe("t", { maxReconnects: 3 });
  t.after(() => sub.close());
  await within(
    5_000,
    "the subscription to give up",
    assert.rejects(sub.next(), (e) => {
      assert.ok(e instanceof FramecastError, String(e));
      assert.equal(e.code, "UNAVAILABLE");
      assert.match(e.message, /after 3 reconnects: the event stream ended/);
      return true;
    }),
  );
  assert.equal(sub.reconnects, 3);
  assert.equal(connects, 4);

  // A frame is progress: a stream that delivers one frame per connection never gives up.
  let offset = 0;
  const oneFrameEach = async (_url, init) => eventStream([SNAPSHOT, frameEvent(offset++)], { signal: init.signal });
  const steady = new Framecast({ url: "http://a.example:7071", fetch: oneFrameEach, backoff: FAST }).subscribe("t", { maxReconnects: 1 });
  t.after(() => steady.close());
  for (let i = 0; i < 5; i++) {
    const r = await within(5_000, `frame ${i}`, steady.next());
    assert.equal(r.value.offset, BigInt(i));
  }
  assert.equal(steady.reconnects, 4);
});

test("429 and 500 end a subscription at once; 502, 503 and 504 reconnect", async (t) => {
  for (const [status, code] of [
    [429, "RESOURCE_EXHAUSTED"],
    [500, "INTERNAL"],
  ]) {
    let connects = 0;
    const fake = async () => {
      connects++;
      return refusal(status, code);
    };
    const sub = new Framecast({ url: "http://a.example:7071", fetch: fake, backoff: FAST }).subscribe("t");
    t.after(() => sub.close());
    await within(
      5_000,
      `the ${status} to end the subscription`,
      assert.rejects(sub.next(), (e) => {
        assert.ok(e instanceof FramecastError, String(e));
        assert.deepEqual([e.code, e.status], [code, status]);
        return true;
      }),
    );
    assert.equal(connects, 1);
    assert.equal(sub.reconnects, 0);
  }
  const answers = [502, 503, 504].map((status) => () => refusal(status, "UNAVAILABLE"));
  const fake = async (_url, init) => answers.shift()?.() ?? eventStream([SNAPSHOT, frameEvent(0)], { open: true, signal: init.signal });
  const sub = new Framecast({ url: "http://a.example:7071", fetch: fake, backoff: FAST }).subscribe("t");
  t.after(() => sub.close());
  const r = await within(5_000, "the frame after three refusals", sub.next());
  assert.equal(r.value.offset, 0n);
  assert.equal(sub.reconnects, 3);
});

test("close() lets go of the caller's signal, also while the consumer holds a frame or before it iterates", async () => {
  const ac = new AbortController();
  const listeners = () => getEventListeners(ac.signal, "abort").length;
  const connections = [];
  const fake = async (_url, init) => {
    connections.push(init.signal);
    return eventStream([SNAPSHOT, frameEvent(0), frameEvent(1)], { open: true, signal: init.signal });
  };
  const fc = new Framecast({ url: "http://a.example:7071", fetch: fake, backoff: FAST });

  const never = fc.subscribe("t", { signal: ac.signal });
  assert.equal(listeners(), 1);
  never.close();
  assert.equal(listeners(), 0, "a subscription never iterated");

  const holding = fc.subscribe("t", { signal: ac.signal });
  const r = await within(5_000, "a frame", holding.next());
  assert.equal(r.value.offset, 0n);
  assert.equal(listeners(), 1);
  holding.close(); // and next() is never called again
  assert.equal(listeners(), 0, "a subscription closed while its consumer holds a frame");
  assert.equal(connections.length, 1);
  assert.equal(connections[0].aborted, true, "its connection is cancelled");
});

test("options that would break a subscription, or retry without waiting, are refused: idleTimeoutMs, maxReconnects, backoff", async (t) => {
  const fc = new Framecast({ url: "http://a.example:7071", fetch: () => assert.fail("no request expected") });
  // A timer past 2^31-1 ms (or Infinity) fires at once: every connection would be cut as it opens.
  for (const bad of [0, -1, 1.5, 2 ** 31, Infinity, NaN, "45000"]) {
    assert.throws(() => fc.subscribe("t", { idleTimeoutMs: bad }), TypeError, `idleTimeoutMs ${String(bad)}`);
  }
  for (const bad of [-1, 1.5, NaN, -Infinity]) {
    assert.throws(() => fc.subscribe("t", { maxReconnects: bad }), RangeError, `maxReconnects ${String(bad)}`);
  }
  assert.throws(() => fc.subscribe("t", { maxReconnects: "3" }), TypeError);
  for (const good of [{ maxReconnects: 0 }, { maxReconnects: 3 }, { maxReconnects: Infinity }, { idleTimeoutMs: 1 }]) {
    fc.subscribe("t", good).close();
  }
  // A first delay of 0 made every delay 0: a subscription to a dead node reconnected in a busy loop.
  for (const bad of [{ initialMs: 0 }, { initialMs: 0.5 }, { initialMs: -1 }, { initialMs: NaN }, { maxMs: 2 ** 31 }, { maxMs: Infinity }, { initialMs: 10, maxMs: 5 }]) {
    assert.throws(() => new Framecast({ url: "http://a:1", backoff: bad }), RangeError, JSON.stringify(bad));
  }
  assert.throws(() => new Framecast({ url: "http://a:1", backoff: { initialMs: "100" } }), TypeError);
  new Framecast({ url: "http://a:1", backoff: { initialMs: 1, maxMs: 2 ** 31 - 1 } });

  // The longest idle timeout a timer can wait really waits: the open stream is not cut.
  const connections = [];
  const open = async (_url, init) => {
    connections.push(init.signal);
    return eventStream([SNAPSHOT, frameEvent(0)], { open: true, signal: init.signal });
  };
  const sub = new Framecast({ url: "http://a.example:7071", fetch: open, backoff: FAST }).subscribe("t", { idleTimeoutMs: 2 ** 31 - 1 });
  t.after(() => sub.close());
  assert.equal((await within(5_000, "a frame", sub.next())).value.offset, 0n);
  await new Promise((r) => setTimeout(r, 200));
  assert.equal(connections.length, 1);
  assert.equal(connections[0].aborted, false, "the idle timer cut the stream");
  assert.equal(sub.reconnects, 0);
});

test("the README's resume example type-checks: resume takes string | null | undefined", async (t) => {
  const dir = tempDir("framecast-js-types-");
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const index = JSON.stringify(join(PACKAGE_DIR, "dist", "index.js"));
  writeFileSync(
    join(dir, "resume.ts"),
    `import { Framecast } from ${index};
declare const localStorage: { getItem(key: string): string | null };
const fc = new Framecast({ url: "http://127.0.0.1:7071" });
fc.subscribe("prices", { resume: localStorage.getItem("prices-cursor") });
fc.subscribe("prices", { resume: undefined });
// @ts-expect-error a cursor is text: the checker must still refuse a number
fc.subscribe("prices", { resume: 42 });
`,
  );
  const tsc = join(PACKAGE_DIR, "node_modules", "typescript", "bin", "tsc");
  const args = ["--noEmit", "--strict", "--exactOptionalPropertyTypes", "--module", "nodenext", "--target", "es2022"];
  args.push("--lib", "es2022,dom", "--skipLibCheck", join(dir, "resume.ts"));
  const run = promisify(execFile)(process.execPath, [tsc, ...args], { cwd: dir });
  await within(60_000, "tsc", run).catch((e) => assert.fail(`tsc refused the README's example:\n${e.stdout}${e.stderr}`));
});
