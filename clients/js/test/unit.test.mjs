// The pieces that need no server: the event-stream parser, base64, argument checks, keys.

import { test } from "node:test";
import assert from "node:assert/strict";
import { Framecast, newIdempotencyKey } from "../dist/index.js";
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
