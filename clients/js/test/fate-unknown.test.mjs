// A keyed publish (or broadcast) whose attempt broke after it may have been stored, then whose
// retry was refused for good, must not report the refusal: that says "not stored", and an
// app that believes it publishes again under a new key, storing the frame twice. It fails
// with FATE_UNKNOWN (stored or not, never twice), the refusal attached. A refusal after
// attempts that surely wrote nothing (a 503 with Framecast-Unwritten, a follower's 503
// naming the leader, a connection refused), or a 400 (the same request is refused alike on every attempt), stays
// the refusal.
//
// Shape: an HTTP proxy in front of the real server. The scripted steps answer the POSTs in
// turn: "break" forwards the request, waits for the server's answer (the frame is stored),
// then destroys the client's socket without answering; "stall" does the same but keeps the
// socket open, answering nothing; "refuse" answers with that status
// itself, forwarding nothing; anything past the script is forwarded.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import { Framecast, FramecastError } from "../dist/index.js";
import { freePort, startServer, within } from "../test-support/server.mjs";

let server;
before(async () => {
  server = await startServer();
});
after(async () => {
  await server?.cleanup();
});

const CODE = { 400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND", 503: "UNAVAILABLE" };

/** The proxy; `steps` answer the POSTs in turn (see the file's comment); `posts` counts them. */
async function proxy(steps) {
  const target = new URL(server.url);
  const state = { posts: 0 };
  const srv = http.createServer((req, res) => {
    const chunks = [];
    req.on("data", (d) => chunks.push(d));
    req.on("end", () => {
      const step = req.method === "POST" ? steps[state.posts++] : undefined;
      if (step?.refuse !== undefined) {
        const headers = { "content-type": "application/json", ...(step.headers ?? {}) };
        res.writeHead(step.refuse, headers);
        res.end(JSON.stringify({ code: CODE[step.refuse], message: `the proxy refuses (${step.refuse})` }));
        return;
      }
      const headers = { ...req.headers };
      delete headers.host;
      const out = http.request(
        { host: target.hostname, port: Number(target.port), method: req.method, path: req.url, headers },
        (answer) => {
          const body = [];
          answer.on("data", (d) => body.push(d));
          answer.on("end", () => {
            if (step?.break) {
              req.socket.destroy(); // the server answered (stored); the client hears nothing
              return;
            }
            if (step?.stall) return; // stored, and the client waits out its callTimeoutMs
            res.writeHead(answer.statusCode, answer.headers);
            res.end(Buffer.concat(body));
          });
        },
      );
      out.on("error", () => req.socket.destroy());
      out.end(Buffer.concat(chunks));
    });
  });
  await new Promise((r) => srv.listen(0, "127.0.0.1", r));
  const addr = `127.0.0.1:${srv.address().port}`;
  return {
    url: `http://${addr}`,
    addr,
    state,
    close() {
      srv.closeAllConnections();
      srv.close();
    },
  };
}

/** The rejection of `p` (it must reject within 10 s). */
async function rejection(what, p) {
  return within(10_000, what, p.then((v) => assert.fail(`${what}: resolved ${JSON.stringify(v, (_, x) => (typeof x === "bigint" ? String(x) : x))}`), (e) => e));
}

/** The payloads stored in `topic`, read from the server directly. */
async function stored(topic) {
  const fc = new Framecast({ url: server.url });
  try {
    const page = await fc.history(topic);
    return page.frames.map((f) => new TextDecoder().decode(f.payload));
  } catch (e) {
    if (e instanceof FramecastError && e.code === "NOT_FOUND") return [];
    throw e;
  }
}

const quick = { backoff: { initialMs: 20, maxMs: 50 }, callTimeoutMs: 3_000, retryBudgetMs: 8_000 };

for (const status of [403, 401, 404]) {
  test(`publish: the attempt broke after the frame was stored, the retry was refused ${status}: FATE_UNKNOWN, not ${CODE[status]}`, async (t) => {
    const p = await proxy([{ break: true }, { refuse: status }]);
    t.after(() => p.close());
    const topic = `fate-publish-${status}`;
    const fc = new Framecast({ url: p.url, token: "static-token", ...quick });
    const e = await rejection("publish", fc.publish(topic, "once", { seqNo: 1, idempotencyKey: `k-${status}` }));
    assert.equal(p.state.posts, 2, "one attempt broke, one was refused");
    assert.deepEqual(await stored(topic), ["once"], "the broken attempt stored the frame");
    assert.ok(e instanceof FramecastError, String(e));
    assert.notEqual(e.code, CODE[status], `a stored frame reported as refused: ${e.message}`);
    assert.equal(e.code, "FATE_UNKNOWN", e.message);
    assert.equal(e.status, status, "the status is the refusal's");
    assert.ok(e.refusal instanceof FramecastError, "the refusal is attached");
    assert.equal(e.refusal.code, CODE[status]);
    assert.equal(e.cause, e.refusal);
    assert.equal(e.idempotencyKey, `k-${status}`);
  });
}

test("publish with a token function: broke, then 401 twice (asked the function again): FATE_UNKNOWN, with the key the client made", async (t) => {
  const p = await proxy([{ break: true }, { refuse: 401 }, { refuse: 401 }]);
  t.after(() => p.close());
  const topic = "fate-publish-token-fn";
  const fc = new Framecast({ url: p.url, token: async () => "from-a-function", ...quick });
  const e = await rejection("publish", fc.publish(topic, "once", { seqNo: 1 }));
  assert.equal(p.state.posts, 3);
  assert.deepEqual(await stored(topic), ["once"]);
  assert.equal(e.code, "FATE_UNKNOWN", e.message);
  assert.equal(e.refusal.code, "UNAUTHENTICATED");
  assert.equal(typeof e.idempotencyKey, "string");
  assert.ok(e.idempotencyKey.length > 0, "the key the client made is given, to send it again at most once");
  // Sent again through the server with that key: answered as the first store, not stored twice.
  const again = await new Framecast({ url: server.url }).publish(topic, "once", { seqNo: 1, idempotencyKey: e.idempotencyKey });
  assert.equal(again.duplicate, true);
  assert.deepEqual(await stored(topic), ["once"]);
});

test("publish with a token function that throws on the retry after a break: FATE_UNKNOWN, its error attached", async (t) => {
  const p = await proxy([{ break: true }]);
  t.after(() => p.close());
  const topic = "fate-token-throws";
  let asked = 0;
  const token = async () => {
    if (asked++ > 0) throw new Error("the token source is down");
    return "from-a-function";
  };
  const fc = new Framecast({ url: p.url, token, ...quick });
  const e = await rejection("publish", fc.publish(topic, "once", { seqNo: 1, idempotencyKey: "k-token-throws" }));
  assert.equal(p.state.posts, 1, "the retry was never sent");
  assert.equal(asked, 2);
  assert.deepEqual(await stored(topic), ["once"], "the broken attempt stored the frame");
  assert.equal(e.code, "FATE_UNKNOWN", e.message);
  assert.equal(e.refusal.code, "UNAUTHENTICATED");
  assert.match(e.refusal.message, /the token source is down/);
  assert.equal(e.idempotencyKey, "k-token-throws");
  // A token the client cannot send (blanks inside) after a break: FATE_UNKNOWN too, not
  // INVALID_ARGUMENT (which says "not stored").
  const p2 = await proxy([{ break: true }]);
  t.after(() => p2.close());
  let asked2 = 0;
  const bad = new Framecast({ url: p2.url, token: async () => (asked2++ > 0 ? "not a token" : "from-a-function"), ...quick });
  const e2 = await rejection("publish", bad.publish("fate-token-bad", "once", { seqNo: 1, idempotencyKey: "k-token-bad" }));
  assert.equal(e2.code, "FATE_UNKNOWN", e2.message);
  assert.equal(e2.refusal.code, "UNAUTHENTICATED");
  assert.deepEqual(await stored("fate-token-bad"), ["once"]);
  // Without a break, the token function's error is the caller's, as before.
  const direct = new Framecast({ url: server.url, token: async () => { throw new Error("no token"); }, ...quick });
  const plain = await rejection("publish", direct.publish(topic, "never", { seqNo: 2, idempotencyKey: "k-none" }));
  assert.equal(plain.message, "no token");
});

test("publish: no answer within callTimeoutMs (stored meanwhile), then 403: FATE_UNKNOWN", async (t) => {
  const p = await proxy([{ stall: true }, { refuse: 403 }]);
  t.after(() => p.close());
  const topic = "fate-stall";
  const fc = new Framecast({ url: p.url, ...quick, callTimeoutMs: 500 });
  const e = await rejection("publish", fc.publish(topic, "once", { seqNo: 1, idempotencyKey: "k-stall" }));
  assert.equal(p.state.posts, 2);
  assert.deepEqual(await stored(topic), ["once"]);
  assert.equal(e.code, "FATE_UNKNOWN", e.message);
  assert.equal(e.refusal.code, "PERMISSION_DENIED");
});

test("publish: a 503 naming no leader and without Framecast-Unwritten, then 403: FATE_UNKNOWN (a 503 may come after the write)", async (t) => {
  const p = await proxy([{ refuse: 503 }, { refuse: 403 }]);
  t.after(() => p.close());
  const fc = new Framecast({ url: p.url, ...quick });
  const e = await rejection("publish", fc.publish("fate-503", "x", { seqNo: 1, idempotencyKey: "k-503" }));
  assert.equal(p.state.posts, 2);
  assert.equal(e.code, "FATE_UNKNOWN", e.message);
  assert.equal(e.refusal.code, "PERMISSION_DENIED");
});

test("broadcast: the attempt broke after it was stored, the retry was refused 403: FATE_UNKNOWN", async (t) => {
  const p = await proxy([{ break: true }, { refuse: 403 }]);
  t.after(() => p.close());
  const fc = new Framecast({ url: p.url, ...quick });
  const topics = ["fate-bc-a", "fate-bc-b"];
  const e = await rejection("broadcast", fc.broadcast(topics, "once", { seqNo: 1, idempotencyKey: "k-bc" }));
  assert.equal(p.state.posts, 2);
  for (const topic of topics) assert.deepEqual(await stored(topic), ["once"], topic);
  assert.equal(e.code, "FATE_UNKNOWN", e.message);
  assert.equal(e.refusal.code, "PERMISSION_DENIED");
  assert.equal(e.idempotencyKey, "k-bc");
});

// What surely wrote nothing is no break: the refusal stays the refusal.
// ("SELF": the proxy's own address, so the hint sends the retry to the same proxy.)
const NOT_A_BREAK = [
  ["no earlier attempt", "fate-none", []],
  ["a 503 with Framecast-Unwritten first", "fate-none-unwritten", [{ refuse: 503, headers: { "framecast-unwritten": "starting" } }]],
  ["a follower's 503 naming the leader first", "fate-none-leader", [{ refuse: 503, headers: { "framecast-leader": "SELF" } }]],
];
for (const [what, topic, first] of NOT_A_BREAK) {
  test(`publish: ${what}, then 403: PERMISSION_DENIED, nothing stored`, async (t) => {
    const steps = [...first, { refuse: 403 }];
    const p = await proxy(steps);
    t.after(() => p.close());
    for (const s of steps) if (s.headers?.["framecast-leader"] === "SELF") s.headers["framecast-leader"] = p.addr;
    const fc = new Framecast({ url: p.url, ...quick });
    const e = await rejection("publish", fc.publish(topic, "x", { seqNo: 1, idempotencyKey: "k" }));
    assert.equal(p.state.posts, steps.length);
    assert.equal(e.code, "PERMISSION_DENIED", e.message);
    assert.equal(e.refusal, undefined);
    assert.deepEqual(await stored(topic), []);
  });
}

test("publish: a connection refused first (a node down), then 403 from the next node: PERMISSION_DENIED", async (t) => {
  const p = await proxy([{ refuse: 403 }]);
  t.after(() => p.close());
  const down = `http://127.0.0.1:${await freePort()}`;
  const fc = new Framecast({ urls: [down, p.url], ...quick });
  const e = await rejection("publish", fc.publish("fate-none-refused", "x", { seqNo: 1, idempotencyKey: "k" }));
  assert.equal(p.state.posts, 1);
  assert.equal(e.code, "PERMISSION_DENIED", e.message);
});

test("publish: broke, then 400: INVALID_ARGUMENT (the same request is refused alike on every attempt)", async (t) => {
  const p = await proxy([{ break: true }, { refuse: 400 }]);
  t.after(() => p.close());
  const fc = new Framecast({ url: p.url, ...quick });
  const e = await rejection("publish", fc.publish("fate-400", "x", { seqNo: 1, idempotencyKey: "k-400" }));
  assert.equal(p.state.posts, 2);
  assert.equal(e.code, "INVALID_ARGUMENT", e.message);
});

test("a read is no write: history broken once, then refused 403, stays PERMISSION_DENIED", async (t) => {
  let gets = 0;
  const stand = http.createServer((req, res) => {
    req.resume();
    if (gets++ === 0) return req.socket.destroy();
    res.writeHead(403, { "content-type": "application/json" });
    res.end(JSON.stringify({ code: "PERMISSION_DENIED", message: "no" }));
  });
  await new Promise((r) => stand.listen(0, "127.0.0.1", r));
  t.after(() => {
    stand.closeAllConnections();
    stand.close();
  });
  const fc = new Framecast({ url: `http://127.0.0.1:${stand.address().port}`, ...quick });
  const e = await rejection("history", fc.history("t"));
  assert.equal(gets, 2);
  assert.equal(e.code, "PERMISSION_DENIED", e.message);
});
