// The client in a real browser (headless Chromium, when one is installed): a page loads
// dist/index.js with <script type="module"> and publishes, subscribes (SSE over fetch's
// streaming body), reads history and gets a FramecastError. The page's origin serves
// dist/ and proxies /v1/ to the server, so no CORS setting is involved.
// Chromium: $CHROMIUM_BIN, else chromium / chromium-browser / google-chrome on PATH.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import { createServer, request } from "node:http";
import { readFileSync, rmSync } from "node:fs";
import { join, normalize } from "node:path";
import { startServer, tempDir, within, PACKAGE_DIR } from "../test-support/server.mjs";

function findChromium() {
  if (process.env.CHROMIUM_BIN) return process.env.CHROMIUM_BIN;
  for (const name of ["chromium", "chromium-browser", "google-chrome", "google-chrome-stable"]) {
    try {
      return execFileSync("sh", ["-c", `command -v ${name}`], { encoding: "utf8" }).trim() || undefined;
    } catch {
      // not this one
    }
  }
  return undefined;
}
const CHROMIUM = findChromium();

const PAGE = `<!doctype html>
<meta charset="utf-8">
<title>framecast browser test</title>
<script type="module">
import { Framecast, FramecastError } from "/dist/index.js";
const out = {};
try {
  const fc = new Framecast({ url: location.origin });
  const ack = await fc.publish("browser", "h\\u00e9llo", { seqNo: 1 });
  out.ack = { offset: String(ack.offset), duplicate: ack.duplicate, timestamp: typeof ack.timestamp };
  const frames = [];
  const sub = fc.subscribe("browser");
  for await (const f of sub) {
    frames.push({ offset: String(f.offset), seqNo: String(f.seqNo), live: f.live, text: f.text ?? null, bytes: Array.from(f.payload), cursor: typeof f.cursor });
    if (frames.length === 1) await fc.publish("browser", new Uint8Array([1, 2, 255]), { seqNo: 2 });
    if (frames.length === 2) break;
  }
  out.frames = frames;
  out.snapshot = String(sub.snapshotOffset);
  const page = await fc.history("browser", { reverse: true });
  out.history = page.frames.map((f) => String(f.seqNo));
  try {
    await fc.publish("bad name", "x", { seqNo: 1 });
  } catch (e) {
    out.error = { isFramecastError: e instanceof FramecastError, code: e.code, status: e.status };
  }
  out.randomUUID = typeof crypto.randomUUID;
} catch (e) {
  out.fatal = String((e && e.stack) || e);
}
await fetch("/report", { method: "POST", body: JSON.stringify(out) });
</script>`;

let server;
let site;
let profile;
let report;
const reported = new Promise((resolve) => {
  report = resolve;
});

before(async () => {
  if (!CHROMIUM) return;
  server = await startServer();
  const upstream = new URL(server.url);
  site = createServer((req, res) => {
    if (req.url === "/") {
      res.writeHead(200, { "content-type": "text/html; charset=utf-8" });
      res.end(PAGE);
    } else if (req.url.startsWith("/dist/")) {
      const file = normalize(join(PACKAGE_DIR, req.url));
      if (!file.startsWith(join(PACKAGE_DIR, "dist"))) return res.writeHead(403).end();
      try {
        const body = readFileSync(file);
        res.writeHead(200, { "content-type": "text/javascript; charset=utf-8" });
        res.end(body);
      } catch {
        res.writeHead(404).end();
      }
    } else if (req.url.startsWith("/v1/")) {
      // A streaming proxy: event streams pass through as they come.
      const up = request(
        { host: upstream.hostname, port: upstream.port, path: req.url, method: req.method, headers: req.headers },
        (ures) => {
          res.writeHead(ures.statusCode, ures.headers);
          ures.pipe(res);
        },
      );
      up.on("error", () => res.destroy());
      res.on("close", () => up.destroy());
      req.pipe(up);
    } else if (req.url === "/report" && req.method === "POST") {
      let body = "";
      req.setEncoding("utf8");
      req.on("data", (c) => (body += c));
      req.on("end", () => {
        res.writeHead(204).end();
        report(JSON.parse(body));
      });
    } else {
      res.writeHead(404).end();
    }
  });
  await new Promise((r) => site.listen(0, "127.0.0.1", r));
});

after(async () => {
  site?.close();
  site?.closeAllConnections?.();
  await server?.cleanup();
  if (profile) rmSync(profile, { recursive: true, force: true });
});

// In CI (CI=true) the test command installs Chromium: a missing one is a failure, not a skip.
const SKIP = CHROMIUM || process.env.CI ? false : "no Chromium found (set CHROMIUM_BIN)";
test("in headless Chromium: publish, subscribe (replay then live), history, errors", { skip: SKIP }, async (t) => {
  profile = tempDir("framecast-js-chromium-");
  const origin = `http://127.0.0.1:${site.address().port}`;
  const browser = spawn(
    CHROMIUM,
    ["--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", `--user-data-dir=${profile}`, `${origin}/`],
    { stdio: "ignore", detached: true },
  );
  const exited = new Promise((r) => browser.on("exit", r));
  t.after(async () => {
    // The browser and its helpers share the process group it was started in.
    try {
      process.kill(-browser.pid, "SIGKILL");
    } catch {
      // already gone
    }
    await within(10_000, "chromium to exit", exited).catch(() => {});
  });

  const out = await within(60_000, "the page to report", reported);
  assert.equal(out.fatal, undefined, out.fatal);
  assert.deepEqual(out.ack, { offset: "0", duplicate: false, timestamp: "bigint" });
  assert.deepEqual(out.frames, [
    { offset: "0", seqNo: "1", live: false, text: "h\u00e9llo", bytes: [...new TextEncoder().encode("h\u00e9llo")], cursor: "string" },
    { offset: "1", seqNo: "2", live: true, text: null, bytes: [1, 2, 255], cursor: "string" },
  ]);
  assert.equal(out.snapshot, "1");
  assert.deepEqual(out.history, ["2", "1"]);
  assert.deepEqual(out.error, { isFramecastError: true, code: "INVALID_ARGUMENT", status: 400 });
  assert.equal(out.randomUUID, "function", "127.0.0.1 is a secure context");
});
