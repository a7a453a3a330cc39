// TLS in Node: `caCert` trusts a private CA for https:// nodes, `clientCert`/`clientKey` show
// a certificate to a server started with --tls-client-ca; against the real server with
// certificates made in the test (test-support/pki.mjs).

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { rmSync } from "node:fs";
import { join } from "node:path";
import { Framecast, FramecastError } from "../dist/index.js";
import { startServer, tempDir, nextFrames, within } from "../test-support/server.mjs";
import { makePki } from "../test-support/pki.mjs";

const QUICK = { initialMs: 10, maxMs: 50 };

let dir;
let pki;
let server;
let mutual;
before(async () => {
  dir = tempDir("framecast-js-tls-");
  pki = await makePki(dir);
  server = await startServer({ args: pki.serverArgs(), tls: { ca: pki.caPem } });
  mutual = await startServer({
    args: pki.serverArgs("--tls-client-ca", pki.clientCaPath),
    tls: { ca: pki.caPem, cert: pki.client.certPem, key: pki.client.keyPem },
  });
});
after(async () => {
  await server?.cleanup();
  await mutual?.cleanup();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

const unavailable = (e) => {
  assert.ok(e instanceof FramecastError, String(e));
  assert.equal(e.code, "UNAVAILABLE");
  return true;
};

test("caCert: publish, history and a live subscription over https", async (t) => {
  assert.match(server.url, /^https:\/\//);
  const fc = new Framecast({ url: server.url, caCert: pki.caPem });
  const sub = fc.subscribe("tls-live");
  t.after(() => sub.close());
  for (let i = 1; i <= 3; i++) {
    const ack = await fc.publish("tls-live", `frame ${i}`, { seqNo: i });
    assert.equal(ack.offset, BigInt(i - 1));
  }
  const frames = await nextFrames(sub, 3);
  assert.deepEqual(
    frames.map((f) => f.text),
    ["frame 1", "frame 2", "frame 3"],
  );
  const page = await fc.history("tls-live");
  assert.deepEqual(
    page.frames.map((f) => f.offset),
    [0n, 1n, 2n],
  );
});

test("caCert as the bytes of a PEM file", async () => {
  const fc = new Framecast({ url: server.url, caCert: new TextEncoder().encode(pki.caPem) });
  assert.equal((await fc.publish("tls-bytes", "x", { seqNo: 1 })).offset, 0n);
});

test("a CA that did not sign the server's certificate: refused at once, not retried, nothing stored", async () => {
  // A backoff that would take minutes over the default 8 retries: the refusal must not wait.
  const slow = { initialMs: 30_000, maxMs: 30_000 };
  const certRefused = (e) => {
    unavailable(e);
    assert.match(e.message, /TLS handshake .* failed \(not retried\): self-signed certificate in certificate chain/, e.message);
    return true;
  };
  const wrong = new Framecast({ url: server.url, caCert: pki.otherCaPem, backoff: slow });
  await within(10_000, "the publish to be refused", assert.rejects(wrong.publish("tls-wrong", "x", { seqNo: 1 }), certRefused));
  const sub = wrong.subscribe("tls-wrong");
  await within(10_000, "the subscription to be refused", assert.rejects(sub.next(), certRefused));
  assert.equal(sub.reconnects, 0, "a refused certificate is not retried");
  // Without caCert, Node's own trust (no private CA) refuses it too.
  const plain = new Framecast({ url: server.url, backoff: slow });
  await within(10_000, "topics to be refused", assert.rejects(plain.topics(), certRefused));
  const fc = new Framecast({ url: server.url, caCert: pki.caPem });
  const topics = (await fc.topics()).map((x) => x.topic);
  assert.ok(!topics.includes("tls-wrong"), `a refused publish created its topic: ${topics}`);
});

test("clientCert and clientKey: a server with --tls-client-ca serves a client with its certificate", async (t) => {
  const fc = new Framecast({
    url: mutual.url,
    caCert: pki.caPem,
    clientCert: pki.client.certPem,
    clientKey: pki.client.keyPem,
  });
  const sub = fc.subscribe("mtls");
  t.after(() => sub.close());
  assert.equal((await fc.publish("mtls", "hello", { seqNo: 1 })).offset, 0n);
  const [f] = await nextFrames(sub, 1);
  assert.equal(f.text, "hello");

  // Without a client certificate the handshake is refused.
  const anonymous = new Framecast({ url: mutual.url, caCert: pki.caPem, backoff: QUICK });
  await within(20_000, "the anonymous publish to fail", assert.rejects(anonymous.publish("mtls", "x", { seqNo: 2, retries: 2 }), unavailable));
  assert.equal((await fc.history("mtls")).frames.length, 1, "the anonymous publish stored nothing");
});

test("options that cannot work are refused at once", () => {
  const url = server.url;
  const typeError = (re) => (e) => e instanceof TypeError && re.test(e.message);
  assert.throws(() => new Framecast({ url, caCert: join(dir, "ca.pem") }), typeError(/no "BEGIN CERTIFICATE" block/));
  assert.throws(() => new Framecast({ url, caCert: 42 }), typeError(/PEM text/));
  assert.throws(() => new Framecast({ url, clientCert: pki.client.certPem }), typeError(/go together/));
  assert.throws(
    () => new Framecast({ url, caCert: pki.caPem, clientCert: pki.client.certPem, clientKey: pki.client.certPem }),
    typeError(/clientKey holds no "BEGIN PRIVATE KEY" block/),
  );
  assert.throws(() => new Framecast({ url, caCert: pki.caPem, fetch: globalThis.fetch }), typeError(/not both/));
});
