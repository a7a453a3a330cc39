// The package installs with no build step: `npm install <clients/js>` (a directory) and
// `npm install <the packed tarball>` into an empty project, whose script imports
// `framecast` and publishes to a real server.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { writeFileSync, rmSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { startServer, tempDir, within, PACKAGE_DIR } from "../test-support/server.mjs";

const run = promisify(execFile);
const npm = process.platform === "win32" ? "npm.cmd" : "npm";
const NPM_FLAGS = ["--no-audit", "--no-fund", "--loglevel=error"];

let server;
const dirs = [];
before(async () => {
  server = await startServer();
});
after(async () => {
  await server?.cleanup();
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

const SCRIPT = `
import { Framecast, FramecastError } from "framecast";
const fc = new Framecast({ url: process.argv[2] });
const ack = await fc.publish("installed", "hi", { seqNo: 1 });
const page = await fc.history("installed");
console.log(JSON.stringify({
  error: typeof FramecastError,
  offset: String(ack.offset),
  text: page.frames.map((f) => f.text),
}));
`;

/** An empty ESM project in a temp dir, with the script. */
function project() {
  const dir = tempDir("framecast-js-install-");
  dirs.push(dir);
  writeFileSync(join(dir, "package.json"), JSON.stringify({ name: "consumer", private: true, type: "module" }));
  writeFileSync(join(dir, "main.js"), SCRIPT);
  return dir;
}

test("npm install <dir> of clients/js, then import 'framecast'", async () => {
  const dir = project();
  await within(90_000, "npm install", run(npm, ["install", ...NPM_FLAGS, PACKAGE_DIR], { cwd: dir }));
  const { stdout } = await within(30_000, "the consumer script", run(process.execPath, ["main.js", server.url], { cwd: dir }));
  const out = JSON.parse(stdout.trim());
  assert.equal(out.error, "function");
  assert.equal(out.text[0], "hi");
});

test("npm pack, then npm install <tarball>: dist and types are in the package", async () => {
  const packDir = tempDir("framecast-js-pack-");
  dirs.push(packDir);
  await within(90_000, "npm pack", run(npm, ["pack", ...NPM_FLAGS, "--pack-destination", packDir], { cwd: PACKAGE_DIR }));
  const [tarball] = readdirSync(packDir).filter((f) => f.endsWith(".tgz"));
  assert.ok(tarball, "npm pack made a tarball");
  const dir = project();
  await within(90_000, "npm install tarball", run(npm, ["install", ...NPM_FLAGS, join(packDir, tarball)], { cwd: dir }));
  const { stdout } = await within(30_000, "the consumer script", run(process.execPath, ["main.js", server.url], { cwd: dir }));
  const out = JSON.parse(stdout.trim());
  assert.equal(out.error, "function");
  assert.deepEqual(out.text, ["hi", "hi"]);
  const files = readdirSync(join(dir, "node_modules", "framecast", "dist"));
  for (const f of ["index.js", "index.d.ts", "client.js", "subscription.js"]) assert.ok(files.includes(f), `dist/${f}`);
});
