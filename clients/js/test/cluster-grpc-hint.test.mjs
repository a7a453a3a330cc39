// A real cluster whose nodes run without --advertise-http (API.md, "Cluster (v1.1)"): a
// follower's refusal then names the leader by its gRPC address (`Framecast-Leader:
// 127.0.0.1:<grpc port>`), which does not answer this client. The client must not take it
// for an HTTP door: it tries its next configured node instead, and ends on the leader's.
// Skipped (saying so) when etcd is not installed. Every wait is bounded.

import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import { Framecast } from "../dist/index.js";
import { startCluster, etcdBin, clusterJson, nextFrames, within, until } from "../test-support/server.mjs";

const FAST = { initialMs: 20, maxMs: 200 };

describe("a cluster without --advertise-http", { skip: etcdBin() ? false : "etcd is not installed (apt-get install etcd-server)" }, () => {
  let cluster;
  /** The leader's and the follower's `{ url, addr }`. */
  let leader;
  let follower;
  before(async () => {
    cluster = await startCluster({ n: 2, advertiseHttp: false });
    const info = await clusterJson(cluster.nodes[0].url);
    const leaderAddr = info.nodes.find((n) => n.leader).address;
    leader = cluster.nodes.find((n) => n.addr === leaderAddr);
    follower = cluster.nodes.find((n) => n !== leader);
    assert.ok(leader && follower, JSON.stringify(info));
  });
  after(() => cluster?.cleanup());

  test("writes listed follower first: the gRPC address named is not followed, the next node is, and stays", async () => {
    // The hint as the follower gives it: the leader's gRPC address, on the same host as both doors.
    const direct = await fetch(`${follower.url}/v1/topics/nohttp/frames?seq_no=1`, { method: "POST", body: "x" });
    await direct.arrayBuffer();
    assert.equal(direct.status, 503);
    assert.equal(direct.headers.get("framecast-leader"), leader.addr);

    const fc = new Framecast({ urls: [follower.url, leader.url], backoff: FAST });
    const ack = await within(20_000, "publish", fc.publish("nohttp", "keyed", { seqNo: 1 }));
    assert.equal(fc.url, leader.url);
    assert.deepEqual(fc.urls, [follower.url, leader.url], "nothing learned from the hint");
    // Without a key too: the follower's refusal named a leader, so it wrote nothing.
    const keyless = new Framecast({ urls: [follower.url, leader.url], backoff: FAST });
    const ack2 = await within(20_000, "keyless publish", keyless.publish("nohttp", "keyless", { seqNo: 2, idempotencyKey: "" }));
    assert.equal(keyless.url, leader.url);
    const page = await fc.history("nohttp");
    assert.deepEqual(
      page.frames.map((f) => [f.offset, f.text]),
      [
        [ack.offset, "keyed"],
        [ack2.offset, "keyless"],
      ],
    );
  });

  test("a subscription listed follower first, to a topic only the leader can create, reads from the leader", async (t) => {
    const fc = new Framecast({ urls: [follower.url, leader.url], backoff: FAST });
    const sub = fc.subscribe("nohttp.sub");
    t.after(() => sub.close());
    const first = sub.next();
    first.catch(() => {});
    // The publish waits for the stream to open on the leader (it creates the topic there).
    await until(() => sub.node === leader.url && sub.snapshotOffset !== undefined, 15_000, "the stream to open on the leader");
    const publisher = new Framecast({ urls: [leader.url] });
    const ack = await publisher.publish("nohttp.sub", "live", { seqNo: 1 });
    const r = await within(15_000, "the frame", first);
    assert.deepEqual([r.value.offset, r.value.text], [ack.offset, "live"]);
    assert.equal(fc.url, leader.url);
    const [next] = await Promise.all([nextFrames(sub, 1), publisher.publish("nohttp.sub", "more", { seqNo: 2 })]);
    assert.equal(next[0].text, "more");
  });
});
