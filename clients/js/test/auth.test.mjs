// Tokens: a server with --auth-jwt-secret-file, tokens minted by `framecast token`; a
// subscription that outlives its token, kept alive by a token function.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { Framecast, FramecastError } from "../dist/index.js";
import { authServer, mintToken, nextFrames, within, until, sleep } from "../test-support/server.mjs";

const auth = authServer(before, after);

const refused = (code, status) => (e) => {
  assert.ok(e instanceof FramecastError, String(e));
  assert.equal(e.code, code);
  assert.equal(e.status, status);
  return true;
};

test("no token: UNAUTHENTICATED (401) for publish, history, topics and subscribe", async () => {
  delete process.env.FRAMECAST_TOKEN;
  const fc = new Framecast({ url: auth.server.url });
  await assert.rejects(fc.publish("secure", "x", { seqNo: 1 }), refused("UNAUTHENTICATED", 401));
  await assert.rejects(fc.history("secure"), refused("UNAUTHENTICATED", 401));
  await assert.rejects(fc.topics(), refused("UNAUTHENTICATED", 401));
  const sub = fc.subscribe("secure");
  await within(10_000, "the subscription to be refused", assert.rejects(sub.next(), refused("UNAUTHENTICATED", 401)));
  assert.equal(sub.reconnects, 0, "a 401 is not retried");

  const forged = new Framecast({ url: auth.server.url, token: "not.a.jwt" });
  await assert.rejects(forged.publish("secure", "x", { seqNo: 1 }), refused("UNAUTHENTICATED", 401));
});

test("without a token option, Node's $FRAMECAST_TOKEN is sent", async (t) => {
  const token = await mintToken(auth.secret, { publish: [">"], subscribe: [">"] });
  process.env.FRAMECAST_TOKEN = `${token}\n`;
  t.after(() => delete process.env.FRAMECAST_TOKEN);
  const fc = new Framecast({ url: auth.server.url });
  const ack = await fc.publish("from-env", "hello", { seqNo: 1 });
  assert.equal(ack.offset, 0n);
  // A token given beats the environment.
  const forged = new Framecast({ url: auth.server.url, token: "not.a.jwt" });
  await assert.rejects(forged.publish("from-env", "x", { seqNo: 2 }), refused("UNAUTHENTICATED", 401));
});

test("a token (string or function) publishes and subscribes; Authorization reaches the event stream", async (t) => {
  const token = await mintToken(auth.secret, { publish: [">"], subscribe: [">"] });
  const fc = new Framecast({ url: auth.server.url, token });
  const ack = await fc.publish("secure", "hello", { seqNo: 1 });
  assert.equal(ack.offset, 0n);

  let asked = 0;
  const refreshing = new Framecast({
    url: auth.server.url,
    token: async () => {
      asked++;
      return token;
    },
  });
  const sub = refreshing.subscribe("secure");
  t.after(() => sub.close());
  const [f] = await nextFrames(sub, 1);
  assert.equal(f.text, "hello");
  await refreshing.publish("secure", "live", { seqNo: 2 });
  const [g] = await nextFrames(sub, 1);
  assert.deepEqual([g.text, g.live], ["live", true]);
  assert.ok(asked >= 2, "the token function is asked per request");

  const page = await refreshing.history("secure");
  assert.deepEqual(
    page.frames.map((x) => x.text),
    ["hello", "live"],
  );
});

test("a token without the permission: PERMISSION_DENIED (403), nothing written", async () => {
  const token = await mintToken(auth.secret, { publish: ["mine.*"], subscribe: ["mine.*"] });
  const fc = new Framecast({ url: auth.server.url, token });
  await fc.publish("mine.one", "ok", { seqNo: 1 });
  await assert.rejects(fc.publish("theirs", "no", { seqNo: 1 }), refused("PERMISSION_DENIED", 403));
  await assert.rejects(fc.createTopic("mine.two"), refused("PERMISSION_DENIED", 403));
  const sub = fc.subscribe("theirs");
  await within(10_000, "the subscription to be refused", assert.rejects(sub.next(), refused("PERMISSION_DENIED", 403)));
  const names = (await fc.topics()).map((x) => x.name);
  assert.ok(names.includes("mine.one"));
  assert.ok(!names.includes("theirs"), "nothing created on refusal, and not listed");

  const admin = new Framecast({ url: auth.server.url, token: await mintToken(auth.secret, { admin: true }) });
  const all = (await admin.topics()).map((x) => x.name);
  assert.ok(!all.includes("theirs"), "no topic was created by the refused publish or subscribe");
  await admin.createTopic("mine.two");
  await admin.deleteTopic("mine.two");
});

test("a token function keeps a subscription alive across token expiry: no error, no gap, no duplicate", async (t) => {
  const publisher = new Framecast({ url: auth.server.url, token: await mintToken(auth.secret, { publish: [">"] }) });
  let minted = 0;
  // Tokens that live a second or two: the stream outlives several of them.
  const shortLived = async () => {
    minted++;
    return mintToken(auth.secret, { subscribe: [">"], ttl: "1s" });
  };
  const fc = new Framecast({ url: auth.server.url, token: shortLived, backoff: { initialMs: 20, maxMs: 100 } });
  const acks = [await publisher.publish("expiring", "p0", { seqNo: 0 })];
  const sub = fc.subscribe("expiring");
  t.after(() => sub.close());
  const got = await nextFrames(sub, 1);
  // Publish across two expiries of the subscription's token, reading as it goes.
  const deadline = Date.now() + 12_000;
  while (sub.reconnects < 2) {
    assert.ok(Date.now() < deadline, `only ${sub.reconnects} reconnects after 12 s`);
    acks.push(await publisher.publish("expiring", `p${acks.length}`, { seqNo: acks.length }));
    got.push(...(await nextFrames(sub, 1)));
    await sleep(150);
  }
  acks.push(await publisher.publish("expiring", "last", { seqNo: acks.length }));
  got.push(...(await nextFrames(sub, 1)));
  assert.deepEqual(
    got.map((f) => [f.offset, f.text]),
    acks.map((a, i) => [a.offset, i === acks.length - 1 ? "last" : `p${i}`]),
  );
  assert.ok(minted >= 3, `the token function was asked ${minted} times`);
});

test("a token function whose next token is refused ends the subscription with UNAUTHENTICATED (401)", async (t) => {
  let asked = 0;
  const token = await mintToken(auth.secret, { subscribe: [">"], ttl: "1s" });
  // The first token, then one the server refuses.
  const fc = new Framecast({ url: auth.server.url, token: () => (++asked === 1 ? token : "not.a.jwt") });
  const sub = fc.subscribe("expiring.refused");
  t.after(() => sub.close());
  const first = sub.next();
  first.catch(() => {});
  // After the expiry, a 401 is asked again 3 times (0.5-1, 1-2, 2-4 s apart), then final.
  await within(15_000, "the refusal of the next token", assert.rejects(first, refused("UNAUTHENTICATED", 401)));
  assert.equal(asked, 5, "asked once more after the expiry, and again for each of the 3 retries of the refusal");
});
