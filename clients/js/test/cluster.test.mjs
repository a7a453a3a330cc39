// Several nodes and the leader hint (API.md, "Cluster (v1.1)", "Clients (v1.1)").
//
// A follower is stood in for by a small node:http server in the test: it answers every
// write with 503, `Framecast-Leader: <the leader's URL>` and the usual error body, as a
// follower does, and every other request with a plain 503. The leader is the real server
// binary. A dead node is a loopback port with nothing listening. A node that fails under a
// subscription is the real server killed with SIGKILL and started again on other ports of
// the client's list, over the same data dir (so the other "node" holds the same frames,
// offsets and epoch, as a follower would). Every wait is bounded.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { Framecast, FramecastError } from "../dist/index.js";
import { Hops, MAX_LEADER_HOPS, neverSent, Transport } from "../dist/transport.js";
import { freePort, startServer, nextFrames, byOrderKey, within, sleep } from "../test-support/server.mjs";

/** `http://127.0.0.1:<port>` with nothing listening. */
async function deadUrl() {
  return `http://127.0.0.1:${await freePort()}`;
}

const isWrite = (method, path) =>
  (method === "POST" && /^\/v1\/topics\/[^/]+\/frames$/.test(path)) ||
  (method === "POST" && path === "/v1/broadcast") ||
  ((method === "PUT" || method === "DELETE") && /^\/v1\/topics\/[^/]+$/.test(path));

/**
 * A stand-in for a follower: 503 to everything, with `Framecast-Leader: leader` on writes
 * when `leader` is set. Records every request (in `requests`, and in `journal` if given).
 */
async function fakeFollower(name, leader, journal) {
  const fake = {
    name,
    leader,
    requests: [],
    url: "",
    server: undefined,
    close: () => new Promise((r) => fake.server.close(r)),
  };
  fake.server = createServer((req, res) => {
    const path = new URL(req.url, "http://x").pathname;
    const seen = {
      method: req.method,
      path,
      key: req.headers["idempotency-key"],
      auth: req.headers["authorization"],
      lastEventId: req.headers["last-event-id"],
    };
    fake.requests.push(seen);
    journal?.push(name);
    req.resume(); // drain the body
    req.on("end", () => {
      const headers = { "Content-Type": "application/json", Connection: "close" };
      let message = "node unavailable";
      if (fake.leader && isWrite(req.method, path)) {
        headers["Framecast-Leader"] = fake.leader;
        message = "not the leader";
      }
      res.writeHead(503, headers);
      res.end(JSON.stringify({ code: "UNAVAILABLE", message }));
    });
  });
  await new Promise((r) => fake.server.listen(0, "127.0.0.1", r));
  fake.url = `http://127.0.0.1:${fake.server.address().port}`;
  return fake;
}

/** Every frame `topic` holds on the node at `url` (history pages), as [offset, text]. */
async function stored(url, topic) {
  const fc = new Framecast({ url });
  const out = [];
  for await (const page of fc.historyPages(topic, { limit: 1000 })) {
    for (const f of page.frames) out.push([f.offset, f.text]);
  }
  return out.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
}

const FAST = { initialMs: 5, maxMs: 50 };

let server;
const fakes = [];
before(async () => {
  server = await startServer();
});
after(async () => {
  await Promise.all(fakes.map((f) => f.close()));
  await server?.cleanup();
});
async function fake(name, leader, journal) {
  const f = await fakeFollower(name, leader, journal);
  fakes.push(f);
  return f;
}

// ------------------------------------------------------------------ no server needed

test("nodes: a url, several separated by commas, a list, or urls", () => {
  assert.deepEqual(new Framecast({ url: "http://a:1" }).urls, ["http://a:1"]);
  assert.deepEqual(new Framecast({ url: "http://a:1/, http://b:2 ,http://a:1" }).urls, ["http://a:1", "http://b:2"]);
  assert.deepEqual(new Framecast({ url: ["http://a:1", "http://b:2,http://c:3"] }).urls, ["http://a:1", "http://b:2", "http://c:3"]);
  assert.deepEqual(new Framecast({ urls: ["http://a:1", "https://b:2"] }).urls, ["http://a:1", "https://b:2"]);
  assert.equal(new Framecast({ urls: ["http://a:1", "http://b:2"] }).url, "http://a:1");
  assert.throws(() => new Framecast({}), TypeError);
  assert.throws(() => new Framecast({ urls: [] }), TypeError);
  assert.throws(() => new Framecast({ url: "http://a:1,,http://b:2" }), TypeError);
  assert.throws(() => new Framecast({ url: "http://a:1", urls: ["http://b:2"] }), TypeError);
  assert.throws(() => new Framecast({ url: "http://a:1,b:2" }), TypeError); // not a URL
});

test("hops: a hint is followed at once, a loop or a long chain is cut; never-sent errors", () => {
  const h = new Hops();
  assert.equal(h.follow("http://a", "http://b"), true);
  assert.equal(h.follow("http://b", "http://a"), false);
  assert.deepEqual(h.loop, ["http://a", "http://b", "http://a"]);
  const e = h.explain(new FramecastError("UNAVAILABLE", 503, "not the leader"));
  assert.equal(e.code, "UNAVAILABLE");
  assert.match(e.message, /not the leader \(no leader found: the Framecast-Leader hints went http:\/\/a -> http:\/\/b -> http:\/\/a\)/);
  const chain = new Hops();
  let followed = 0;
  for (let i = 1; i < 10 && chain.follow(`http://n${i - 1}`, `http://n${i}`); i++) followed++;
  assert.equal(followed, MAX_LEADER_HOPS);
  const refused = Object.assign(new TypeError("fetch failed"), { cause: Object.assign(new Error("x"), { code: "ECONNREFUSED" }) });
  const reset = Object.assign(new TypeError("fetch failed"), { cause: Object.assign(new Error("x"), { code: "ECONNRESET" }) });
  assert.equal(neverSent(refused), true);
  assert.equal(neverSent(reset), false);
  assert.equal(neverSent(new TypeError("Failed to fetch")), false); // a browser tells nothing
});

test("leader hints: a URL is taken, a bare host:port only for a node the client knows", () => {
  const nodes = (...urls) => new Transport({ url: urls, fetch: () => assert.fail("no request expected") });
  const t = nodes("http://10.0.0.1:7071", "http://10.0.0.2:7071", "https://h.example");
  // The leader's HTTP door (--advertise-http): taken as it is, known or not.
  assert.equal(t.leaderOf("http://10.0.0.2:7071/"), "http://10.0.0.2:7071");
  assert.equal(t.leaderOf("http://10.0.0.9:7071"), "http://10.0.0.9:7071");
  // A bare host:port: the node at that host:port (default ports spelt out or not)...
  assert.equal(t.leaderOf("10.0.0.2:7071"), "http://10.0.0.2:7071");
  assert.equal(t.leaderOf("h.example:443"), "https://h.example");
  // ...else the one configured node on that host (its gRPC port named: its HTTP door)...
  assert.equal(t.leaderOf("10.0.0.2:7070"), "http://10.0.0.2:7071");
  // ...else nothing: a gRPC address is never reached as an HTTP door.
  assert.equal(t.leaderOf("10.0.0.9:7070"), undefined);
  const sameHost = nodes("http://127.0.0.1:7071", "http://127.0.0.1:7171");
  assert.equal(sameHost.leaderOf("127.0.0.1:7070"), undefined, "two nodes on that host: which one is unknown");
  assert.equal(sameHost.leaderOf("127.0.0.1:7171"), "http://127.0.0.1:7171");
  for (const junk of ["", " ", "a b", "x:1,y:2", "h:1/path", "user@h:1"]) assert.equal(t.leaderOf(junk), undefined, junk);
});

// ------------------------------------------------------------------ the leader hint

test("a publish refused by a follower lands on the leader once, with the same key", async () => {
  const follower = await fake("follower", server.url);
  const fc = new Framecast({ url: follower.url, backoff: FAST });
  const ack = await within(20_000, "publish", fc.publish("hint.publish", "one", { seqNo: 1 }));
  assert.equal(follower.requests.length, 1, "refused once, then sent to the leader at once");
  assert.equal(fc.url, server.url);
  assert.deepEqual(fc.urls, [follower.url, server.url]);
  assert.equal(ack.offset, 0n);
  assert.equal(ack.duplicate, false);
  // Straight to the leader from now on.
  const ack2 = await fc.publish("hint.publish", "two", { seqNo: 2 });
  assert.equal(ack2.offset, 1n);
  assert.equal(follower.requests.length, 1);
  assert.deepEqual(await stored(server.url, "hint.publish"), [
    [0n, "one"],
    [1n, "two"],
  ]);
  // The leader got the key the follower was sent: the same key again is a duplicate.
  const key = follower.requests[0].key;
  assert.ok(key);
  const again = await new Framecast({ url: server.url }).publish("hint.publish", "one", { seqNo: 1, idempotencyKey: key });
  assert.deepEqual(again, { ...ack, duplicate: true });
});

test("every kind of write follows the hint: broadcast, createTopic, deleteTopic, a publish without key", async () => {
  const follower = await fake("follower", server.url);
  const fresh = () => new Framecast({ url: follower.url, backoff: FAST });
  const info = await fresh().createTopic("hint.created", { retentionMaxBytes: 1 << 20 });
  assert.equal(info.name, "hint.created");
  const { acks } = await fresh().broadcast(["hint.created", "hint.other"], "b", { seqNo: 1 });
  assert.deepEqual(
    acks.map((a) => [a.topic, a.offset]),
    [
      ["hint.created", 0n],
      ["hint.other", 0n],
    ],
  );
  // No key: not repeated after a lost answer, but a refusal wrote nothing.
  const a = await fresh().publish("hint.other", "unkeyed", { seqNo: 2, idempotencyKey: "" });
  assert.equal(a.offset, 1n);
  await fresh().deleteTopic("hint.created");
  assert.deepEqual(
    follower.requests.map((r) => `${r.method} ${r.path}`),
    ["PUT /v1/topics/hint.created", "POST /v1/broadcast", "POST /v1/topics/hint.other/frames", "DELETE /v1/topics/hint.created"],
  );
  const names = (await new Framecast({ url: server.url }).topics()).map((t) => t.name);
  assert.ok(!names.includes("hint.created") && names.includes("hint.other"), names.join());
  assert.deepEqual(await stored(server.url, "hint.other"), [
    [0n, "b"],
    [1n, "unkeyed"],
  ]);
});

test("a hint with retries: 0 is still followed (a redirect, not a retry)", async () => {
  const follower = await fake("follower", server.url);
  const fc = new Framecast({ url: follower.url, backoff: FAST });
  const ack = await fc.publish("hint.noretry", "x", { seqNo: 1, retries: 0 });
  assert.equal(ack.offset, 0n);
  assert.equal(follower.requests.length, 1);
});

test("two nodes naming each other: a clear error in bounded time, not a loop", async () => {
  const a = await fake("a", undefined);
  const b = await fake("b", a.url);
  a.leader = b.url;
  const fc = new Framecast({ url: a.url, backoff: FAST });
  const started = Date.now();
  await assert.rejects(
    within(10_000, "publish into a hint loop", fc.publish("loop", "x", { seqNo: 1, retries: 3 })),
    (e) => {
      assert.ok(e instanceof FramecastError);
      assert.equal(e.code, "UNAVAILABLE");
      assert.equal(e.status, 503);
      assert.match(e.message, /not the leader/);
      assert.ok(e.message.includes(`Framecast-Leader hints went ${a.url} -> ${b.url} -> ${a.url}`), e.message);
      return true;
    },
  );
  assert.ok(Date.now() - started < 5_000);
  // Each of the 4 attempts (1 + 3 retries) went a -> b, then backed off.
  assert.equal(a.requests.length + b.requests.length, 8);
  // retries: 0 stops at the first loop.
  a.requests.length = 0;
  b.requests.length = 0;
  await assert.rejects(fc.createTopic("loop"), /Framecast-Leader hints went/);
  assert.equal(a.requests.length + b.requests.length, 2 * 9); // createTopic: 8 retries
  await assert.rejects(fc.publish("loop", "x", { seqNo: 1, retries: 0 }), /hints went/);
});

// ------------------------------------------------------------------ several nodes

test("a dead node is left for the next: [dead, real], as a list, a comma string or urls", async () => {
  const dead = await deadUrl();
  const forms = [{ url: [dead, server.url] }, { url: `${dead},${server.url}` }, { urls: [dead, server.url] }];
  for (const [i, form] of forms.entries()) {
    const fc = new Framecast({ ...form, backoff: FAST });
    const topic = `dead.${i}`;
    const ack = await within(20_000, "publish", fc.publish(topic, `p${i}`, { seqNo: 1 }));
    assert.equal(fc.url, server.url);
    assert.deepEqual(await stored(server.url, topic), [[ack.offset, `p${i}`]]);
  }
  // Calls not repeated after a lost answer still move on from a node that refused the connection.
  const fc = new Framecast({ url: [dead, server.url], backoff: FAST });
  await within(20_000, "createTopic", fc.createTopic("dead.created"));
  const fc2 = new Framecast({ url: [dead, server.url], backoff: FAST });
  await within(20_000, "deleteTopic", fc2.deleteTopic("dead.created"));
  const fc3 = new Framecast({ url: [dead, server.url], backoff: FAST });
  const keyless = await fc3.publish("dead.0", "k", { seqNo: 2, idempotencyKey: "" });
  assert.equal(keyless.offset, 1n);
  // Reads and subscriptions too.
  const reader = new Framecast({ url: [dead, server.url], backoff: FAST });
  const page = await reader.history("dead.0");
  assert.deepEqual(
    page.frames.map((f) => f.text),
    ["p0", "k"],
  );
  const sub = new Framecast({ url: [dead, server.url], backoff: FAST }).subscribe("dead.0");
  const frames = await nextFrames(sub, 2);
  sub.close();
  assert.deepEqual(
    frames.map((f) => f.text),
    ["p0", "k"],
  );
  // Every node dead: UNAVAILABLE, status 0, once the retries are spent.
  const none = new Framecast({ url: [dead, await deadUrl()], backoff: FAST });
  await assert.rejects(none.publish("dead.x", "x", { seqNo: 1, retries: 2 }), (e) => e.code === "UNAVAILABLE" && e.status === 0);
});

test("attempts go round robin; a follower's hint goes straight to the leader", async () => {
  const journal = [];
  const down1 = await fake("down1", undefined, journal);
  const down2 = await fake("down2", undefined, journal);
  const fc = new Framecast({ url: [down1.url, down2.url, server.url], backoff: FAST });
  assert.equal((await fc.publish("rr", "x", { seqNo: 1 })).offset, 0n);
  assert.deepEqual(journal, ["down1", "down2"]);
  assert.equal(fc.url, server.url);
  journal.length = 0;
  const follower = await fake("follower", server.url, journal);
  const dead = await deadUrl();
  const fc2 = new Framecast({ url: [down1.url, dead, follower.url], backoff: FAST });
  assert.equal((await fc2.publish("rr", "y", { seqNo: 2 })).offset, 1n);
  assert.deepEqual(journal, ["down1", "follower"]);
  assert.equal(fc2.url, server.url);
  assert.deepEqual(await stored(server.url, "rr"), [
    [0n, "x"],
    [1n, "y"],
  ]);
});

test("a subscription whose node dies resumes exactly on the next node of the list", async (t) => {
  // Node 1: a server of its own. Node 2: the same data dir on other ports, started once
  // node 1 is killed.
  let one = await startServer({ args: ["--fsync", "always"] });
  t.after(() => one.cleanup());
  const [grpcPort, httpPort] = [await freePort(), await freePort()];
  const twoUrl = `http://127.0.0.1:${httpPort}`;
  const fc = new Framecast({ url: [one.url, twoUrl], backoff: { initialMs: 20, maxMs: 300 } });
  const STORED = 30;
  const acks = new Map();
  for (let i = 0; i < STORED; i++) acks.set(1000 - i, await fc.publish("moving", `m${1000 - i}`, { seqNo: 1000 - i }));

  const sub = fc.subscribe("moving");
  t.after(() => sub.close());
  const got = await nextFrames(sub, 10);
  // The rest is asked for while node 1 dies and node 2 comes up.
  const rest = nextFrames(sub, STORED - 10 + 20, 60_000);
  rest.catch(() => {});
  await one.kill("SIGKILL");
  await sleep(300); // the subscription tries both nodes meanwhile
  const two = await startServer({ dataDir: one.dataDir, listen: `127.0.0.1:${grpcPort}`, httpListen: `127.0.0.1:${httpPort}`, args: ["--fsync", "always"] });
  t.after(() => two.cleanup());
  assert.equal(two.url, twoUrl);
  for (let seq = 0; seq < 20; seq++) acks.set(seq, await fc.publish("moving", `m${seq}`, { seqNo: seq }));
  assert.equal(fc.url, twoUrl);
  got.push(...(await within(60_000, "the rest of the frames", rest)));

  assert.ok(sub.reconnects >= 1, `reconnects ${sub.reconnects}`);
  // Exactly once each, every frame the one its publish was acked with.
  assert.deepEqual(
    got.map((f) => f.offset).sort((a, b) => (a < b ? -1 : a > b ? 1 : 0)),
    Array.from({ length: STORED + 20 }, (_, i) => BigInt(i)),
  );
  for (const f of got) {
    const ack = acks.get(Number(f.seqNo));
    assert.equal(f.offset, ack.offset);
    assert.equal(f.timestamp, ack.timestamp);
    assert.equal(f.text, `m${f.seqNo}`);
  }
  // In order: the replay in order-key order, then live frames in offset order.
  const replay = got.slice(0, STORED);
  assert.ok(replay.every((f) => !f.live));
  assert.deepEqual(replay, [...replay].sort(byOrderKey));
  const live = got.slice(STORED);
  assert.ok(live.every((f) => f.live));
  assert.deepEqual(
    live.map((f) => f.offset),
    Array.from({ length: 20 }, (_, i) => BigInt(STORED + i)),
  );
});
