// `readFrom: "followers"` and `cluster()` against a real cluster: a real etcd and three
// real nodes (the server binary) on loopback, each with its own data dir (API.md,
// "Cluster (v1.1)", "Clients (v1.1)"). Where the subscriptions read is checked on both
// sides: the subscription's `node`, and each node's own `framecast_subscribers` gauge on
// `/metrics`. Frames are published through the same client (which lands on the leader) and
// compared with their acks: every one exactly once, in order. One test kills the follower
// serving a subscription with SIGKILL while frames keep being published. Every wait is
// bounded. Without etcd installed the cluster tests are skipped (saying so); the rest runs.

import { test, describe, before, after } from "node:test";
import assert from "node:assert/strict";
import { Framecast, FramecastError } from "../dist/index.js";
import { FollowerPicker, followersOf } from "../dist/followers.js";
import { startServer, startCluster, etcdBin, clusterJson, nextFrames, byOrderKey, within, until, sleep } from "../test-support/server.mjs";

const FAST = { initialMs: 20, maxMs: 300 };

/** The value of `framecast_subscribers{topic, transport="sse"}` on the node at `url` (0 when absent). */
async function sseSubscribers(url, topic) {
  const r = await fetch(`${url}/metrics`, { signal: AbortSignal.timeout(2000) });
  assert.equal(r.status, 200, `GET ${url}/metrics`);
  let total = 0;
  for (const line of (await r.text()).split("\n")) {
    if (!line.startsWith("framecast_subscribers{")) continue;
    if (!line.includes(`topic="${topic}"`) || !line.includes('transport="sse"')) continue;
    total += Number(line.slice(line.lastIndexOf(" ") + 1));
  }
  return total;
}

/** The SSE subscriber gauges of `topic` on every node, as { url: n }. */
async function gauges(urls, topic) {
  const out = {};
  for (const u of urls) out[u] = await sseSubscribers(u, topic);
  return out;
}

/** Polls until the gauges of `topic` are `want` ({ url: n }), bounded; fails showing the last ones. */
async function untilGauges(urls, topic, want, ms = 10_000) {
  let seen;
  await until(
    async () => {
      seen = await gauges(urls, topic);
      return urls.every((u) => seen[u] === (want[u] ?? 0));
    },
    ms,
    `subscriber gauges of ${topic}`,
  ).catch((e) => {
    throw new Error(`${e.message}: want ${JSON.stringify(want)}, saw ${JSON.stringify(seen)}`);
  });
}

/** The commit point of `topic` as the node at `url` reports it for itself (-1n when it does not hold the topic). */
async function ownCommit(url, topic) {
  const c = await clusterJson(url);
  const me = c?.nodes.find((n) => n.http_address === url);
  const t = me?.topics.find((p) => p.topic === topic);
  return t ? BigInt(t.commit_offset) : -1n;
}

/** Waits (bounded) until every node in `urls` holds `topic` committed up to `n` frames. */
async function untilHeld(urls, topic, n, ms = 15_000) {
  const held = async () => (await Promise.all(urls.map((u) => ownCommit(u, topic)))).every((c) => c >= BigInt(n));
  await until(held, ms, `${urls.join(", ")} to hold ${n} frames of ${topic}`);
}

const cmp = (a, b) => (a < b ? -1 : a > b ? 1 : 0);

/** JSON with bigints as strings, for failure messages. */
const show = (v) => JSON.stringify(v, (_, x) => (typeof x === "bigint" ? String(x) : x));

// ------------------------------------------------------------------ no server needed

test("an invalid readFrom is refused when the client is built", () => {
  const refused = (type) => (e) => e instanceof type && /readFrom must be "leader" or "followers"/.test(e.message);
  for (const bad of ["follower", "Followers", "LEADER", ""]) {
    assert.throws(() => new Framecast({ url: "http://a:1", readFrom: bad }), refused(RangeError));
  }
  for (const bad of [1, true, null, {}, ["followers"]]) {
    assert.throws(() => new Framecast({ url: "http://a:1", readFrom: bad }), refused(TypeError));
  }
  assert.equal(new Framecast({ url: "http://a:1" }).readFrom, "leader");
  assert.equal(new Framecast({ url: "http://a:1", readFrom: "leader" }).readFrom, "leader");
  assert.equal(new Framecast({ url: "http://a:1", readFrom: "followers" }).readFrom, "followers");
  // Nothing is asked before the first next(): the node is unknown until the first connect.
  assert.equal(new Framecast({ url: "http://a:1", readFrom: "followers" }).subscribe("t").node, undefined);
});

test("the pick: online followers with an HTTP door, in-sync first, round robin by id, the broken one avoided", async () => {
  const node = (id, o = {}) => ({
    id,
    address: `${id}:7070`,
    httpAddress: `http://${id}:7071/`,
    leader: false,
    inSync: true,
    online: true,
    topics: [],
    ...o,
  });
  const info = (...nodes) => ({ term: 7n, leader: "n1:7070", nodes });
  const c = info(
    node("n3"),
    node("n1", { leader: true }),
    node("n2"),
    node("n4", { online: false }),
    node("n5", { httpAddress: "" }),
    node("n6", { httpAddress: "grpc://n6:1" }),
    node("n0", { inSync: false }),
  );
  assert.deepEqual(
    followersOf(c).map((f) => [f.id, f.url, f.inSync]),
    [
      ["n0", "http://n0:7071", false],
      ["n2", "http://n2:7071", true],
      ["n3", "http://n3:7071", true],
    ],
  );
  const stop = new AbortController().signal;
  const picks = async (p, n, avoid) => {
    const out = [];
    for (let i = 0; i < n; i++) out.push((await p.pick(avoid, stop))?.url);
    return out;
  };
  // Round robin over the in-sync followers (n0 lags: left out).
  const p = new FollowerPicker(async () => c);
  const six = await picks(p, 6);
  assert.deepEqual(six.slice(2), six.slice(0, 4), six.join());
  assert.deepEqual([...six.slice(0, 2)].sort(), ["http://n2:7071", "http://n3:7071"]);
  assert.deepEqual((await p.pick(undefined, stop)).leader, "http://n1:7071");
  // The start is random per picker: over 40 pickers both followers come first.
  const firsts = new Set();
  for (let i = 0; i < 40; i++) firsts.add((await new FollowerPicker(async () => c).pick(undefined, stop)).url);
  assert.equal(firsts.size, 2);
  // The broken one is avoided while another is there; a lagging one never (it refuses reads).
  assert.deepEqual(new Set(await picks(p, 4, "http://n2:7071")), new Set(["http://n3:7071"]));
  const lagging = info(node("n1", { leader: true }), node("n2"), node("n3", { inSync: false }));
  assert.deepEqual(await picks(new FollowerPicker(async () => lagging), 3, "http://n2:7071"), [undefined, undefined, undefined]);
  const one = info(node("n1", { leader: true }), node("n2"));
  assert.deepEqual(await picks(new FollowerPicker(async () => one), 2, "http://n2:7071"), [undefined, undefined]);
  // No follower (a single node), or a cluster call that fails: the normal route.
  assert.equal(await new FollowerPicker(async () => info(node("standalone", { leader: true }))).pick(undefined, stop), undefined);
  const older = new FollowerPicker(async () => {
    throw new FramecastError("NOT_FOUND", 404, "no route");
  });
  assert.equal(await older.pick(undefined, stop), undefined);
});

// ------------------------------------------------------------------ one plain node

test("readFrom followers against a single node falls back to it, and works", async (t) => {
  const server = await startServer();
  t.after(() => server.cleanup());
  const fc = new Framecast({ url: server.url, readFrom: "followers", backoff: FAST });
  const info = await fc.cluster();
  assert.equal(info.term, 0n);
  assert.equal(info.nodes.length, 1);
  assert.equal(info.nodes[0].leader, true);
  assert.equal(info.nodes[0].httpAddress, server.url);
  assert.equal(info.leader, info.nodes[0].address);

  const acks = [];
  for (let i = 0; i < 3; i++) acks.push(await fc.publish("single.rf", `s${i}`, { seqNo: i }));
  const sub = fc.subscribe("single.rf");
  t.after(() => sub.close());
  const replay = await nextFrames(sub, 3);
  assert.equal(sub.node, server.url);
  await untilGauges([server.url], "single.rf", { [server.url]: 1 });
  for (let i = 3; i < 6; i++) acks.push(await fc.publish("single.rf", `s${i}`, { seqNo: i }));
  const live = await nextFrames(sub, 3);
  assert.deepEqual(
    [...replay, ...live].map((f) => [f.offset, f.timestamp, f.text, f.live]),
    acks.map((a, i) => [a.offset, a.timestamp, `s${i}`, i >= 3]),
  );
  assert.equal(sub.reconnects, 0);
});

// ------------------------------------------------------------------ a cluster of three

const ETCD = etcdBin();

const NO_ETCD = "etcd is not installed (apt-get install etcd-server; scripts/test-all.sh does)";

describe("a cluster of three nodes and etcd", { skip: ETCD ? false : NO_ETCD }, () => {
  let cluster;
  /** The three HTTP URLs, n1, n2, n3. */
  let urls;
  before(async () => {
    cluster = await startCluster({ n: 3 });
    urls = cluster.nodes.map((n) => n.url);
  });
  after(async () => {
    await cluster?.cleanup();
  });

  /** The leader's URL and the followers' URLs, as node n1 sees them now (every node agreed at start). */
  async function roles() {
    const info = await new Framecast({ urls }).cluster();
    const leader = info.nodes.find((n) => n.leader);
    assert.ok(leader, show(info));
    return { leader: leader.httpAddress, followers: info.nodes.filter((n) => !n.leader).map((n) => n.httpAddress) };
  }

  test("cluster() returns the term, the leader and three nodes", async () => {
    const fc = new Framecast({ urls });
    const ack = await fc.publish("rf.cluster", "x", { seqNo: 1 });
    const { leader } = await roles();
    for (const url of urls) {
      const info = await new Framecast({ url }).cluster();
      assert.equal(typeof info.term, "bigint");
      assert.ok(info.term > 0n, `term ${info.term}`);
      assert.deepEqual(
        info.nodes.map((n) => [n.id, n.address, n.httpAddress, n.online, n.inSync]),
        cluster.nodes.map((n) => [n.id, n.addr, n.url, true, true]),
      );
      const leaders = info.nodes.filter((n) => n.leader);
      assert.equal(leaders.length, 1);
      assert.equal(leaders[0].httpAddress, leader);
      assert.equal(info.leader, leaders[0].address);
      // A follower lists its own positions (bigints), not the others'. The leader lists
      // every node's: an acknowledged frame is held and committed on each in-sync node.
      const me = info.nodes.find((n) => n.httpAddress === url);
      if (url === leader) {
        for (const n of info.nodes) {
          const p = n.topics.find((x) => x.topic === "rf.cluster");
          assert.ok(p, `${n.id}: ${show(n.topics)}`);
          assert.equal(p.nextOffset, ack.offset + 1n);
          assert.equal(p.commitOffset, ack.offset + 1n); // acknowledged: committed
        }
      } else {
        for (const n of info.nodes) if (n !== me) assert.deepEqual(n.topics, []);
      }
    }
    // The same term and leader, whichever node is asked.
    const terms = await Promise.all(urls.map((url) => new Framecast({ url }).cluster()));
    assert.equal(new Set(terms.map((i) => `${i.term} ${i.leader}`)).size, 1);
  });

  test("subscriptions spread over the followers, none on the leader; every frame arrives on each, in order", async (t) => {
    const topic = "rf.spread";
    const { leader, followers } = await roles();
    const fc = new Framecast({ urls, readFrom: "followers", backoff: FAST });
    const acks = [];
    for (let i = 0; i < 5; i++) acks.push(await fc.publish(topic, `a${i}`, { seqNo: i }));
    assert.equal(fc.url, leader, "writes go to the leader");
    await untilHeld(followers, topic, 5);

    const subs = Array.from({ length: 6 }, () => fc.subscribe(topic));
    t.after(() => subs.forEach((s) => s.close()));
    const replays = await Promise.all(subs.map((s) => nextFrames(s, 5)));
    const on = subs.map((s) => s.node);
    // Round robin over the two followers: three each, the leader none.
    const count = (u) => on.filter((x) => x === u).length;
    assert.deepEqual(
      { [followers[0]]: count(followers[0]), [followers[1]]: count(followers[1]), [leader]: count(leader) },
      { [followers[0]]: 3, [followers[1]]: 3, [leader]: 0 },
      `nodes: ${on.join(", ")}`,
    );
    // The servers agree: each follower serves three SSE subscribers of the topic, the leader none.
    await untilGauges(urls, topic, { [followers[0]]: 3, [followers[1]]: 3, [leader]: 0 });

    for (let i = 5; i < 15; i++) acks.push(await fc.publish(topic, `a${i}`, { seqNo: i }));
    const lives = await Promise.all(subs.map((s) => nextFrames(s, 10)));
    const want = acks.map((a, i) => [a.offset, a.timestamp, `a${i}`, i >= 5]);
    for (const [k, s] of subs.entries()) {
      const got = [...replays[k], ...lives[k]];
      assert.deepEqual(
        got.map((f) => [f.offset, f.timestamp, f.text, f.live]),
        want,
        `subscription ${k} on ${s.node}`,
      );
      assert.equal(s.reconnects, 0);
      assert.equal(s.node, on[k], "it stayed on its follower");
    }
    subs.forEach((s) => s.close());
    await untilGauges(urls, topic, {}); // closed on the servers too
  });

  test("a topic a follower does not hold yet: the follower refuses, the leader serves it", async (t) => {
    const topic = "rf.fresh";
    const { leader, followers } = await roles();
    // A follower first: the normal route is not the leader either.
    const fc = new Framecast({ urls: [...followers, leader], readFrom: "followers", backoff: FAST });
    const sub = fc.subscribe(topic);
    t.after(() => sub.close());
    const first = sub.next();
    first.catch(() => {});
    // Subscribing created the topic on the leader (only the leader creates topics).
    await untilGauges(urls, topic, { [leader]: 1 });
    assert.equal(sub.node, leader);
    assert.equal(fc.url, followers[0], "the normal route did not move");
    const acks = [];
    for (let i = 0; i < 3; i++) acks.push(await fc.publish(topic, `f${i}`, { seqNo: i }));
    const r = await within(15_000, "the first frame", first);
    const got = [r.value, ...(await nextFrames(sub, 2))];
    assert.deepEqual(
      got.map((f) => [f.offset, f.text]),
      acks.map((a, i) => [a.offset, `f${i}`]),
    );
    assert.equal(sub.reconnects, 0);
  });

  test("a client given only a follower: its refusal names the leader, followed at once", async (t) => {
    const topic = "rf.lone";
    const { leader, followers } = await roles();
    const fc = new Framecast({ urls: [followers[0]], backoff: FAST });
    const sub = fc.subscribe(topic);
    t.after(() => sub.close());
    const first = sub.next();
    first.catch(() => {});
    await untilGauges(urls, topic, { [leader]: 1 });
    const ack = await fc.publish(topic, "l", { seqNo: 1 });
    const r = await within(15_000, "the first frame", first);
    assert.deepEqual([r.value.offset, r.value.text], [ack.offset, "l"]);
    assert.equal(sub.node, leader);
    assert.equal(sub.reconnects, 0, "a hint is not a break: no backoff, no reconnect counted");
  });

  test("history of a topic a follower lacks: the follower names the leader, whose NOT_FOUND is the answer", async () => {
    const topic = "rf.nohistory";
    const { leader, followers } = await roles();
    const direct = await fetch(`${followers[0]}/v1/topics/${topic}/history`);
    assert.equal(direct.status, 503);
    assert.equal(direct.headers.get("framecast-leader"), leader);
    const fc = new Framecast({ urls: [followers[0]], backoff: FAST });
    await assert.rejects(fc.history(topic), (e) => e.code === "NOT_FOUND" && e.status === 404);
    assert.equal(fc.url, leader, "the call followed the hint");
    const topics = await new Framecast({ urls }).topics();
    assert.ok(!topics.some((t) => t.name === topic), show(topics));
  });

  test("a cluster call that fails (an older server): subscriptions take the normal route", async (t) => {
    const topic = "rf.nocluster";
    const { leader } = await roles();
    let refused = 0;
    const olderServer = (input, init) => {
      if (new URL(String(input)).pathname === "/v1/cluster") {
        refused++;
        const body = JSON.stringify({ code: "NOT_FOUND", message: "no route" });
        return Promise.resolve(new Response(body, { status: 404, headers: { "Content-Type": "application/json" } }));
      }
      return fetch(input, init);
    };
    const fc = new Framecast({ urls, readFrom: "followers", backoff: FAST, fetch: olderServer });
    await assert.rejects(fc.cluster(), (e) => e instanceof FramecastError && e.code === "NOT_FOUND");
    const ack = await fc.publish(topic, "n", { seqNo: 1 });
    assert.equal(fc.url, leader);
    const sub = fc.subscribe(topic);
    t.after(() => sub.close());
    const [f] = await nextFrames(sub, 1);
    assert.deepEqual([f.offset, f.text], [ack.offset, "n"]);
    assert.equal(sub.node, fc.url);
    assert.ok(refused >= 2, `the subscription asked the cluster too (${refused})`);
    await untilGauges(urls, topic, { [leader]: 1 });
  });

  // Last: it leaves the cluster with two nodes.
  test("kill -9 of the follower serving a subscription: it resumes on the other follower, exactly", async (t) => {
    const topic = "rf.kill";
    const { leader, followers } = await roles();
    const fc = new Framecast({ urls, readFrom: "followers", backoff: FAST });
    /** offset → [seqNo, ack], every publish acknowledged. */
    const acked = new Map();
    const publish = async (seq) => {
      const ack = await fc.publish(topic, `k${seq}`, { seqNo: seq });
      assert.equal(ack.duplicate, false);
      acked.set(ack.offset, [seq, ack]);
    };
    const STORED = 10;
    // Stored before the subscription, in reverse seq order: the replay comes in order-key order.
    for (let i = STORED - 1; i >= 0; i--) await publish(1000 + i);
    await untilHeld(followers, topic, STORED);

    const sub = fc.subscribe(topic);
    t.after(() => sub.close());
    const got = await nextFrames(sub, STORED);
    const victim = sub.node;
    assert.ok(followers.includes(victim), `on a follower: ${victim}`);
    const survivor = followers.find((u) => u !== victim);
    await untilGauges(urls, topic, { [victim]: 1 });

    // Frames keep being published, one after the other, through the kill.
    let publishing = true;
    let seq = 0;
    const publisher = (async () => {
      while (publishing) {
        await publish(seq++);
        await sleep(10);
      }
    })();
    publisher.catch(() => {});
    got.push(...(await nextFrames(sub, 5)));
    await cluster.nodes.find((n) => n.url === victim).server.kill("SIGKILL");
    // It resumes elsewhere and goes on: frames published after the kill arrive (the leader
    // waits for the dead member until it leaves the in-sync set, --replica-max-lag 3s).
    got.push(...(await nextFrames(sub, 15, 30_000)));
    publishing = false;
    await within(20_000, "the publisher to stop", publisher);
    got.push(...(await nextFrames(sub, acked.size - got.length, 20_000)));

    assert.ok(sub.reconnects >= 1, `reconnects ${sub.reconnects}`);
    assert.equal(sub.node, survivor, "resumed on the other follower, not the leader");
    await untilGauges([leader, survivor], topic, { [survivor]: 1, [leader]: 0 });
    // Exactly what was acknowledged: every offset once, each with its ack's timestamp and text.
    assert.deepEqual(
      got.map((f) => f.offset).sort(cmp),
      [...acked.keys()].sort(cmp),
    );
    assert.equal(got.length, acked.size);
    for (const f of got) {
      const [s, ack] = acked.get(f.offset);
      assert.equal(f.seqNo, BigInt(s));
      assert.equal(f.timestamp, ack.timestamp);
      assert.equal(f.text, `k${s}`);
    }
    // In order: the replay in order-key order, then live frames in offset order.
    const replay = got.slice(0, STORED);
    assert.ok(replay.every((f) => !f.live));
    assert.deepEqual(replay, [...replay].sort(byOrderKey));
    const live = got.slice(STORED);
    assert.ok(live.every((f) => f.live));
    assert.deepEqual(
      live.map((f) => f.offset),
      Array.from({ length: live.length }, (_, i) => BigInt(STORED + i)),
    );
    // Nothing more than what was acknowledged.
    await assert.rejects(within(500, "no further frame", sub.next()), /timed out/);
  });
});
