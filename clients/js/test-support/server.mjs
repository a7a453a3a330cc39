// Test helpers: the real framecast binary on loopback with a temporary data dir, and
// bounded waits. Every wait has a deadline, so a broken server fails a test instead of
// hanging the suite.

import { spawn, execFile } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

const here = dirname(fileURLToPath(import.meta.url)); // clients/js/test-support
/** clients/js */
export const PACKAGE_DIR = resolve(here, "..");

/** The server binary: $FRAMECAST_BIN, else ../../target/debug/framecast from clients/js. */
export const BIN = process.env.FRAMECAST_BIN
  ? resolve(process.env.FRAMECAST_BIN)
  : resolve(PACKAGE_DIR, "../../target/debug/framecast");

if (!existsSync(BIN)) {
  throw new Error(`framecast binary not found at ${BIN}: build it (cargo build) or set FRAMECAST_BIN`);
}

/** A fresh temporary directory. */
export function tempDir(prefix = "framecast-js-") {
  return mkdtempSync(join(tmpdir(), prefix));
}

/** `p`, or a rejection naming `what` after `ms`. */
export function within(ms, what, p) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls `cond` every 20 ms until it is true; fails after `ms`. */
export async function until(cond, ms, what) {
  const deadline = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(20);
  }
}

// eslint-disable-next-line no-control-regex
const ANSI = /\x1b\[[0-9;]*m/g;

/**
 * Starts `framecast serve` on loopback. `listen` / `httpListen` default to port 0 (pass
 * the ports of an earlier run to restart on the same addresses). Resolves once the
 * server logged its `listening addr=… http_addr=…` line and `/healthz` answers 200.
 */
export async function startServer({
  dataDir = tempDir(),
  listen = "127.0.0.1:0",
  httpListen = "127.0.0.1:0",
  args = [],
  timeoutMs = 20_000,
  tls = undefined,
} = {}) {
  const argv = ["serve", "--listen", listen, "--http-listen", httpListen, "--data-dir", dataDir, ...args];
  const proc = spawn(BIN, argv, {
    stdio: ["ignore", "ignore", "pipe"],
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? "info", NO_COLOR: "1" },
  });
  const lines = [];
  let partial = "";
  let onLine = () => {};
  proc.stderr.setEncoding("utf8");
  proc.stderr.on("data", (chunk) => {
    partial += chunk;
    let nl;
    while ((nl = partial.indexOf("\n")) >= 0) {
      const line = partial.slice(0, nl).replace(ANSI, "");
      partial = partial.slice(nl + 1);
      lines.push(line);
      if (lines.length > 400) lines.shift();
      onLine(line);
    }
  });
  const exited = new Promise((resolveExit) => {
    proc.on("exit", (code, signal) => resolveExit({ code, signal }));
  });
  const log = () => lines.join("\n");

  let addrs;
  try {
    addrs = await within(
      timeoutMs,
      `server to log "listening" (${BIN} ${argv.join(" ")})`,
      new Promise((resolveAddrs, reject) => {
        const check = (line) => {
          const m = /listening.*\baddr=(\S+).*\bhttp_addr=(\S+)/.exec(line);
          if (m) resolveAddrs({ addr: m[1], httpAddr: m[2] });
        };
        lines.forEach(check);
        onLine = check;
        exited.then(({ code, signal }) =>
          reject(new Error(`server exited (code ${code}, signal ${signal}) before listening:\n${log()}`)),
        );
      }),
    );
  } catch (e) {
    proc.kill("SIGKILL");
    throw e;
  }
  onLine = () => {};
  // With `tls` ({ ca, cert?, key? }: PEM texts; the server started with --tls-* in `args`),
  // the doors are https:// and the health check trusts `ca` (and shows `cert`).
  const scheme = tls ? "https" : "http";
  const url = `${scheme}://${addrs.httpAddr}`;
  let healthFetch = fetch;
  if (tls) {
    const undici = await import("undici");
    const dispatcher = new undici.Agent({ connect: tls });
    healthFetch = (u) => undici.fetch(u, { dispatcher });
  }
  const server = {
    url,
    addr: addrs.addr,
    httpAddr: addrs.httpAddr,
    grpcUrl: `${scheme}://${addrs.addr}`,
    dataDir,
    proc,
    exited,
    log,
    /** Sends `signal` and waits (bounded) for the process to exit. */
    async kill(signal = "SIGKILL") {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill(signal);
      return within(10_000, `server to exit on ${signal}`, exited);
    },
    /** Kills the server (if running) and removes its data dir. */
    async cleanup() {
      await server.kill("SIGKILL").catch(() => {});
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
  await until(
    async () => {
      try {
        return (await healthFetch(`${url}/healthz`)).status === 200;
      } catch {
        return false;
      }
    },
    timeoutMs,
    `${url}/healthz to answer 200`,
  ).catch(async (e) => {
    proc.kill("SIGKILL");
    throw new Error(`${e.message}\n${log()}`);
  });
  return server;
}

const execFileP = promisify(execFile);

/** A secret file for `--auth-jwt-secret-file`, in `dir`. */
export function secretFile(dir) {
  const f = join(dir, "jwt.secret");
  writeFileSync(f, "framecast-js-test-secret-0123456789abcdef\n");
  return f;
}

/** A token minted by `framecast token`. */
/**
 * A server with `--auth-jwt-secret-file` for the tests of one file, started by `before` and
 * stopped (its secret removed) by `after`: the returned object's `server` and `secret` are
 * set once it started.
 */
export function authServer(before, after) {
  const auth = {};
  let dir;
  before(async () => {
    dir = tempDir("framecast-js-secret-");
    auth.secret = secretFile(dir);
    auth.server = await startServer({ args: ["--auth-jwt-secret-file", auth.secret] });
  });
  after(async () => {
    await auth.server?.cleanup();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });
  return auth;
}

export async function mintToken(secret, { subject = "js-test", publish = [], subscribe = [], admin = false, ttl = "1h" } = {}) {
  const argv = ["token", "--secret-file", secret, "--subject", subject, "--ttl", ttl];
  for (const p of publish) argv.push("--publish", p);
  for (const s of subscribe) argv.push("--subscribe", s);
  if (admin) argv.push("--admin");
  const { stdout } = await within(20_000, "framecast token", execFileP(BIN, argv));
  return stdout.trim();
}

/** The next `n` frames of a subscription (bounded); the subscription stays open. */
export async function nextFrames(sub, n, ms = 15_000) {
  const out = [];
  const deadline = Date.now() + ms;
  while (out.length < n) {
    const left = deadline - Date.now();
    const r = await within(Math.max(left, 1), `frame ${out.length + 1} of ${n} (got ${out.length})`, sub.next());
    if (r.done) throw new Error(`the subscription ended after ${out.length} of ${n} frames`);
    out.push(r.value);
  }
  return out;
}

/** Order-key comparison: (seq_no, timestamp, offset) ascending. */
export function byOrderKey(a, b) {
  for (const k of ["seqNo", "timestamp", "offset"]) {
    if (a[k] < b[k]) return -1;
    if (a[k] > b[k]) return 1;
  }
  return 0;
}

// ------------------------------------------------------------------ a cluster: etcd and nodes

/** Ports `freePort` hands out: 20000..32000, below the kernel's ephemeral range. */
const PORTS_FROM = 20_000;
const PORTS = 12_000;
let portsTaken = 0;

/**
 * A free loopback port (free a moment ago: the caller binds it right after), below the
 * kernel's ephemeral range (32768 and up), so that no outgoing connection (a client's
 * retry, etcd's) can take it while a server that listens on it again after a restart is
 * down, as the Rust and Python tests choose theirs. Spread by process (test files run in
 * parallel), in its own part of the range (from 3000 on).
 */
export async function freePort() {
  const { createServer } = await import("node:net");
  const start = (process.pid * 7919 + 3_000) % PORTS;
  for (let i = 0; i < PORTS; i++) {
    const port = PORTS_FROM + ((start + portsTaken++ * 13) % PORTS);
    const free = await new Promise((resolve) => {
      const s = createServer();
      s.once("error", () => resolve(false));
      s.listen(port, "127.0.0.1", () => s.close(() => resolve(true)));
    });
    if (free) return port;
  }
  throw new Error(`no free loopback port in ${PORTS_FROM}..${PORTS_FROM + PORTS}`);
}

/** The etcd binary: Debian's `etcd-server` puts it at /usr/bin/etcd; else `etcd` on PATH; undefined when neither. */
export function etcdBin() {
  if (existsSync("/usr/bin/etcd")) return "/usr/bin/etcd";
  for (const dir of (process.env.PATH ?? "").split(":")) {
    if (dir && existsSync(join(dir, "etcd"))) return join(dir, "etcd");
  }
  return undefined;
}

/** Processes to kill if the test process exits without its `after` hooks (a crash, a timeout). */
const leftovers = new Set();
process.on("exit", () => {
  for (const p of leftovers) if (p.exitCode === null && p.signalCode === null) p.kill("SIGKILL");
});

/**
 * Starts a single-member etcd on free loopback ports with a temporary data dir and waits
 * (bounded) until it answers `/health`. Returns `{ endpoint, proc, log, cleanup }`.
 */
export async function startEtcd({ timeoutMs = 20_000 } = {}) {
  const bin = etcdBin();
  if (!bin) throw new Error("etcd is not installed (apt-get install etcd-server)");
  const dir = tempDir("framecast-js-etcd-");
  const [clientPort, peerPort] = [await freePort(), await freePort()];
  const endpoint = `http://127.0.0.1:${clientPort}`;
  const peer = `http://127.0.0.1:${peerPort}`;
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("ETCD_")));
  // Settings from the environment (ETCD_*) would override the flags.
  const proc = spawn(
    bin,
    [
      "--name", "framecast-js",
      "--data-dir", join(dir, "data"),
      "--listen-client-urls", endpoint,
      "--advertise-client-urls", endpoint,
      "--listen-peer-urls", peer,
      "--initial-advertise-peer-urls", peer,
      "--initial-cluster", `framecast-js=${peer}`,
      "--initial-cluster-state", "new",
      "--log-level", "error",
    ],
    { stdio: ["ignore", "ignore", "pipe"], env },
  );
  leftovers.add(proc);
  let stderr = "";
  proc.stderr.setEncoding("utf8");
  proc.stderr.on("data", (c) => {
    stderr = (stderr + c).slice(-20_000);
  });
  const etcd = {
    endpoint,
    proc,
    log: () => stderr,
    async cleanup() {
      if (proc.exitCode === null && proc.signalCode === null) {
        const exited = new Promise((r) => proc.once("exit", r));
        proc.kill("SIGKILL");
        await within(10_000, "etcd to exit", exited).catch(() => {});
      }
      leftovers.delete(proc);
      rmSync(dir, { recursive: true, force: true });
    },
  };
  try {
    await until(
      async () => {
        if (proc.exitCode !== null) throw new Error(`etcd exited (code ${proc.exitCode}) at start:\n${stderr}`);
        try {
          const r = await fetch(`${endpoint}/health`, { signal: AbortSignal.timeout(1000) });
          return r.ok && (await r.json()).health === "true";
        } catch {
          return false;
        }
      },
      timeoutMs,
      `etcd at ${endpoint} to answer /health`,
    );
  } catch (e) {
    await etcd.cleanup();
    throw e;
  }
  return etcd;
}

/** `GET /v1/cluster` of the node at `url`, as JSON, or undefined if it does not answer 200 within 2 s. */
export async function clusterJson(url) {
  try {
    const r = await fetch(`${url}/v1/cluster`, { signal: AbortSignal.timeout(2000) });
    return r.ok ? await r.json() : undefined;
  } catch {
    return undefined;
  }
}

/**
 * A framecast cluster on loopback: a real etcd and `n` real nodes (`n1`…), each
 * `framecast serve --cluster-etcd … --node-id nI --advertise … --advertise-http …` with a
 * 2 s lease, `--replica-max-lag 3s` and `--min-insync 2`, plus `args`. With `advertiseHttp:
 * false` the nodes run without `--advertise-http`, so a follower's `Framecast-Leader` names
 * the leader's gRPC address. Resolves once every node answers `/v1/cluster` with the same
 * term, a leader, and all `n` nodes online and in sync (bounded). Returns `{ etcd, nodes:
 * [{ id, url, addr, server }], cleanup }`.
 */
export async function startCluster({ n = 3, args = [], minInsync = 2, advertiseHttp = true, timeoutMs = 30_000 } = {}) {
  const etcd = await startEtcd();
  const name = `js${process.pid}x${await freePort()}`;
  const nodes = [];
  const cleanup = async () => {
    await Promise.all(nodes.map((node) => node.server?.cleanup()));
    await etcd.cleanup();
  };
  try {
    const specs = [];
    for (let i = 1; i <= n; i++) specs.push({ id: `n${i}` });
    // A port free a moment ago can be taken before the node binds it (another node's
    // outgoing connection to etcd gets an ephemeral port): start again on fresh ports.
    const startNode = async (s) => {
      for (let attempt = 1; ; attempt++) {
        const [grpc, http] = [await freePort(), await freePort()];
        Object.assign(s, { addr: `127.0.0.1:${grpc}`, http: `127.0.0.1:${http}` });
        try {
          return await startServer({
            listen: s.addr,
            httpListen: s.http,
            args: [
              ...(advertiseHttp ? ["--advertise-http", `http://${s.http}`] : []),
              "--cluster-etcd", etcd.endpoint,
              "--cluster", name,
              "--node-id", s.id,
              "--advertise", s.addr,
              "--lease-ttl", "2s",
              "--replica-max-lag", "3s",
              "--min-insync", String(minInsync),
              ...args,
            ],
          });
        } catch (e) {
          if (attempt >= 3 || !/Address already in use/.test(String(e?.message ?? e))) throw e;
        }
      }
    };
    const started = await Promise.allSettled(specs.map(startNode));
    for (const [i, r] of started.entries()) {
      if (r.status === "fulfilled") {
        leftovers.add(r.value.proc);
        nodes.push({ id: specs[i].id, addr: specs[i].addr, url: r.value.url, server: r.value });
      }
    }
    const failed = started.find((r) => r.status === "rejected");
    if (failed) throw failed.reason;
    let last = [];
    await until(
      async () => {
        last = await Promise.all(nodes.map((node) => clusterJson(node.url)));
        if (last.some((c) => c === undefined)) return false;
        const [first] = last;
        return last.every(
          (c) =>
            c.term === first.term &&
            c.term !== "0" &&
            c.leader !== "" &&
            c.leader === first.leader &&
            c.nodes.length === n &&
            c.nodes.filter((x) => x.leader).length === 1 &&
            c.nodes.every((x) => x.online && x.in_sync),
        );
      },
      timeoutMs,
      `a leader and ${n} nodes online and in sync`,
    ).catch((e) => {
      throw new Error(`${e.message}\nlast seen: ${JSON.stringify(last)}\n${nodes.map((x) => `--- ${x.id}\n${x.server.log()}`).join("\n")}`);
    });
  } catch (e) {
    await cleanup();
    throw e;
  }
  return { etcd, nodes, cleanup };
}
