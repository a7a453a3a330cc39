// Token refresh under clock skew: a cached token function hands back its token until it is
// expired by the local clock, which runs behind the server's. After the server ends the
// stream UNAUTHENTICATED, the reconnect's 401 is retried (the function asked again each
// time) until the fresh token comes, and the subscription goes on without gap or duplicate.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { Framecast, FramecastError } from "../dist/index.js";
import { authServer, mintToken, nextFrames, sleep } from "../test-support/server.mjs";

const auth = authServer(before, after);

/** The `exp` of a JWT, ms since the epoch. */
const expOf = (jwt) => JSON.parse(Buffer.from(jwt.split(".")[1], "base64url")).exp * 1000;

test("a cached token function 1 s behind the server's clock: the subscription outlives two expiries, every frame once", async (t) => {
  const publisher = new Framecast({ url: auth.server.url, token: await mintToken(auth.secret, { publish: [">"] }) });
  const SKEW_MS = 1000;
  let cached;
  const minted = [];
  const token = async () => {
    // Refreshed only once expired by the local clock, which is SKEW_MS behind.
    if (!cached || Date.now() - SKEW_MS >= expOf(cached)) {
      cached = await mintToken(auth.secret, { subscribe: [">"], publish: [">"], ttl: "3s" });
      minted.push(cached);
    }
    return cached;
  };
  const fc = new Framecast({ url: auth.server.url, token });
  const topic = "skewed";
  const acks = [];
  const publish = async () => acks.push(await publisher.publish(topic, `p${acks.length}`, { seqNo: acks.length }));
  await publish();
  const sub = fc.subscribe(topic);
  t.after(() => sub.close());
  const got = await nextFrames(sub, 1);
  // Publish and read until the subscription is on its third token (two expiries behind it).
  const deadline = Date.now() + 30_000;
  while (minted.length < 3) {
    assert.ok(Date.now() < deadline, `only ${minted.length} tokens after 30 s`);
    await publish();
    got.push(...(await nextFrames(sub, 1, 20_000)));
    await sleep(100);
  }
  for (let i = 0; i < 3; i++) {
    await publish();
    got.push(...(await nextFrames(sub, 1, 20_000)));
  }
  assert.deepEqual(
    got.map((f) => [f.offset, f.text]),
    acks.map((a, i) => [a.offset, `p${i}`]),
  );
  assert.ok(sub.reconnects >= 2, `reconnects: ${sub.reconnects}`);
});

test("publish and history ask a token function once more after a 401", async () => {
  const good = await mintToken(auth.secret, { subscribe: [">"], publish: [">"] });
  let asked = 0;
  const fc = new Framecast({ url: auth.server.url, token: () => (++asked === 1 ? "not.a.jwt" : good) });
  const ack = await fc.publish("reauth", "x", { seqNo: 1 });
  assert.equal(ack.offset, 0n);
  assert.equal(asked, 2);
  asked = 0;
  const page = await fc.history("reauth");
  assert.equal(page.frames.length, 1);
  assert.equal(asked, 2);
  // Only once: a token function that keeps giving a refused token ends the call with the 401.
  asked = 0;
  const bad = new Framecast({ url: auth.server.url, token: () => (asked++, "not.a.jwt") });
  await assert.rejects(bad.publish("reauth", "y", { seqNo: 2 }), (e) => {
    assert.ok(e instanceof FramecastError, String(e));
    assert.deepEqual([e.code, e.status], ["UNAUTHENTICATED", 401]);
    return true;
  });
  assert.equal(asked, 2);
});
