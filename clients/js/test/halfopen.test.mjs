// A subscription whose connection dies half-open (a NAT or a proxy that drops the flow
// without closing it) reconnects, and the server may still count its old stream against
// --max-subscribers: the 429 it then answers is retried (the subscription had a stream
// open), not final. Once the server lets go of the old stream, it resumes exactly.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import net from "node:net";
import { Framecast } from "../dist/index.js";
import { startServer, nextFrames, until, sleep } from "../test-support/server.mjs";

let server;
before(async () => {
  server = await startServer({ args: ["--max-subscribers", "1"] });
});
after(async () => {
  await server?.cleanup();
});

/**
 * A TCP proxy to `target` (host:port) on loopback. `freeze()` stops forwarding on every
 * connection open now, both ways, without closing either side (a dropped flow: the client
 * hears nothing, the server's writes still go out); `closeFrozen()` then closes the frozen
 * connections' server side, as the server's keepalive eventually would.
 */
async function proxyTo(target) {
  const [host, port] = target.split(":");
  const conns = [];
  const srv = net.createServer((c) => {
    const s = net.connect(Number(port), host);
    const e = { c, s, frozen: false };
    conns.push(e);
    c.on("data", (d) => {
      if (!e.frozen) s.write(d);
    });
    s.on("data", (d) => {
      if (!e.frozen) c.write(d);
    });
    c.on("error", () => {});
    s.on("error", () => {});
    c.on("close", () => {
      if (!e.frozen) s.destroy();
    });
    s.on("close", () => {
      if (!e.frozen) c.destroy();
    });
  });
  await new Promise((r) => srv.listen(0, "127.0.0.1", r));
  return {
    url: `http://127.0.0.1:${srv.address().port}`,
    freeze() {
      let n = 0;
      for (const e of conns) if (!e.frozen && !e.s.destroyed) (e.frozen = true), n++;
      return n;
    },
    closeFrozen() {
      for (const e of conns) if (e.frozen) e.s.destroy();
    },
    close() {
      srv.close();
      for (const e of conns) {
        e.c.destroy();
        e.s.destroy();
      }
    },
  };
}

test("a half-open connection: the reconnect's 429 (its own old stream) is retried, and every frame arrives once, in order", async (t) => {
  const proxy = await proxyTo(server.httpAddr);
  t.after(() => proxy.close());
  const publisher = new Framecast({ url: server.url });
  const fc = new Framecast({ url: proxy.url, backoff: { initialMs: 50, maxMs: 400 } });
  const topic = "halfopen";
  const acks = [];
  const publish = async () => acks.push(await publisher.publish(topic, `p${acks.length}`, { seqNo: acks.length }));
  for (let i = 0; i < 3; i++) await publish();
  const sub = fc.subscribe(topic, { idleTimeoutMs: 1000 });
  t.after(() => sub.close());
  const got = await nextFrames(sub, 3);
  assert.ok(proxy.freeze() >= 1, "the stream's connection is frozen");
  // Frames published while the stream is dead, then the reconnects the server refuses 429
  // (the one subscriber slot is its old stream's) keep the subscription going.
  let ended;
  const reading = nextFrames(sub, 6, 30_000);
  reading.catch((e) => (ended = e));
  for (let i = 0; i < 3; i++) await publish();
  await until(
    () => {
      if (ended) throw ended; // e.g. the 429 taken as final
      return sub.reconnects >= 3;
    },
    10_000,
    "reconnects refused while the old stream holds the slot",
  );
  await sleep(500);
  proxy.closeFrozen(); // the server lets go of the old stream
  for (let i = 0; i < 3; i++) await publish();
  got.push(...(await reading));
  assert.deepEqual(
    got.map((f) => [f.offset, f.text]),
    acks.map((a, i) => [a.offset, `p${i}`]),
  );
  // Nothing more, nothing twice: the next frame is the next published.
  await publish();
  const [last] = await nextFrames(sub, 1);
  assert.equal(last.offset, acks.at(-1).offset);
});

test("a 429 on the very first open stays final", async (t) => {
  const holder = new Framecast({ url: server.url }).subscribe("busy");
  t.after(() => holder.close());
  await publisherFor(server).publish("busy", "x", { seqNo: 1 });
  await nextFrames(holder, 1);
  const sub = new Framecast({ url: server.url, backoff: { initialMs: 20, maxMs: 100 } }).subscribe("busy");
  t.after(() => sub.close());
  await assert.rejects(sub.next(), (e) => {
    assert.deepEqual([e.code, e.status], ["RESOURCE_EXHAUSTED", 429]);
    return true;
  });
  assert.equal(sub.reconnects, 0);
});

function publisherFor(s) {
  return new Framecast({ url: s.url });
}
