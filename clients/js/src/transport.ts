/**
 * What every call shares: the server's address(es), the token, the `fetch` to use, and
 * the one request loop that retries what may be retried.
 */

import { abortReason, type Backoff, backoffOf, delayMs, sleep } from "./backoff.js";
import { errorOfResponse, FramecastError } from "./errors.js";
import { tlsFetch } from "./tls.js";
import { malformed } from "./wire.js";
import type { FramecastOptions, TokenSource } from "./types.js";

/** One request. */
export interface Call {
  method: "GET" | "POST" | "PUT" | "DELETE";
  /** Starts with `/`. */
  path: string;
  query?: Record<string, string | undefined>;
  /** Extra headers; undefined values are left out. */
  headers?: Record<string, string | undefined>;
  body?: Uint8Array | string;
  /** How many times to retry after a 503 (always safe: a refused request wrote nothing) or, when `idempotent`, a network error. */
  retries: number;
  /** Whether repeating the request after a lost answer is harmless (reads; writes with an idempotency key). */
  idempotent: boolean;
  signal?: AbortSignal | undefined;
}

/** How long one attempt of a call may take by default, ms. */
const DEFAULT_CALL_TIMEOUT_MS = 30_000;

/** A network failure (no HTTP answer), as `fetch` reports it. */
function unreachable(url: string, cause: unknown): FramecastError {
  let why = cause instanceof Error ? cause.message : String(cause);
  // `fetch` says only "fetch failed"; what failed (refused, a certificate) is its cause's.
  const inner = (cause as { cause?: unknown } | null)?.cause;
  if (inner instanceof Error && inner.message && !why.includes(inner.message)) why += ` (${inner.message})`;
  return new FramecastError("UNAVAILABLE", 0, `cannot reach ${url}: ${why}`, { cause });
}

/** Node's codes for a server certificate that does not verify (OpenSSL's, and the host name check). */
const CERT_REFUSED = new Set([
  "UNABLE_TO_GET_ISSUER_CERT",
  "UNABLE_TO_GET_ISSUER_CERT_LOCALLY",
  "UNABLE_TO_VERIFY_LEAF_SIGNATURE",
  "SELF_SIGNED_CERT_IN_CHAIN",
  "DEPTH_ZERO_SELF_SIGNED_CERT",
  "CERT_SIGNATURE_FAILURE",
  "CERT_NOT_YET_VALID",
  "CERT_HAS_EXPIRED",
  "CERT_REVOKED",
  "CERT_UNTRUSTED",
  "CERT_REJECTED",
  "INVALID_CA",
  "INVALID_PURPOSE",
  "HOSTNAME_MISMATCH",
  "ERR_TLS_CERT_ALTNAME_INVALID",
]);

/**
 * When a failed `fetch` is a TLS handshake that refused a certificate (the server's not
 * signed by the trusted CA or not for this host, or the server's alert refusing ours), the
 * error to throw at once: a retry cannot cure it. Undefined for anything else. (A server
 * that refuses a missing client certificate under TLS 1.3 may only close the connection
 * after the handshake: that looks like any dropped connection and is retried.)
 */
export function certificateRefused(url: string, e: unknown): FramecastError | undefined {
  const inner = (e as { cause?: unknown } | null)?.cause as { code?: unknown; message?: unknown } | undefined;
  const code = inner?.code;
  if (typeof code !== "string") return undefined;
  const refused =
    CERT_REFUSED.has(code) ||
    /^ERR_SSL_(SSLV3|TLSV1|TLSV13)_ALERT_(BAD_CERTIFICATE|UNSUPPORTED_CERTIFICATE|CERTIFICATE_\w+|UNKNOWN_CA|ACCESS_DENIED)$/.test(
      code,
    );
  if (!refused) return undefined;
  return new FramecastError("UNAVAILABLE", 0, `TLS handshake with ${url} failed (not retried): ${String(inner?.message ?? code)}`, {
    cause: e,
  });
}

/** Error codes (Node's) of a connection that was never made: no server saw the request. */
const NOT_CONNECTED = new Set([
  "ECONNREFUSED",
  "ENOTFOUND",
  "EAI_AGAIN",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "UND_ERR_CONNECT_TIMEOUT",
]);

/**
 * Whether a failed `fetch` never reached a server (connection refused, no such host), so
 * that sending it to another node is harmless even for a request that is not repeated
 * after a lost answer. Node's fetch tells (`cause.code`); a browser's does not (false).
 */
export function neverSent(e: unknown): boolean {
  const cause = (e as { cause?: unknown } | null)?.cause;
  const codes = (c: unknown): unknown[] => {
    const r = c as { code?: unknown; errors?: unknown } | null;
    if (!r) return [];
    if (Array.isArray(r.errors) && r.errors.length > 0) return r.errors.map((x) => (x as { code?: unknown })?.code);
    return [r.code];
  };
  const found = codes(cause);
  return found.length > 0 && found.every((c) => typeof c === "string" && NOT_CONNECTED.has(c));
}

/**
 * How many `Framecast-Leader` hints in a row one call follows at once. After that, or as
 * soon as a hint names a node the call already passed through (nodes naming each other),
 * the call backs off like after any 503, so disagreeing nodes cost retries, not a busy loop.
 */
export const MAX_LEADER_HOPS = 3;
/** How many nodes learned from hints (beyond the configured ones) a client keeps. */
const MAX_LEARNED = 16;

/** The nodes one call went through by following hints at once, and the chain it cut, if any. */
export class Hops {
  private chain: string[] = [];
  /** The last chain that was cut (a loop, or too many hints in a row), for the error message. */
  loop: string[] = [];

  /** A hint from `from` to `to` (base URLs): true to follow it at once, false to back off first. */
  follow(from: string, to: string): boolean {
    if (this.chain.length === 0) this.chain.push(from);
    const cut = this.chain.includes(to) || this.chain.length > MAX_LEADER_HOPS;
    this.chain.push(to);
    if (!cut) return true;
    this.loop = this.chain;
    this.chain = [];
    return false;
  }

  /** Anything but a hint ends the chain. */
  reset(): void {
    this.chain = [];
  }

  /** `err`, naming the loop of hints the call ran into, if it did. */
  explain(err: FramecastError): FramecastError {
    if (this.loop.length === 0) return err;
    return new FramecastError(
      err.code,
      err.status,
      `${err.message} (no leader found: the Framecast-Leader hints went ${this.loop.join(" -> ")})`,
      { cause: err },
    );
  }
}

/** The addresses, credentials and fetch of a client, and its request loop. */
export class Transport {
  /** The nodes, normalised (no trailing slash): those given, then leaders learned from hints. */
  readonly urls: string[];
  readonly backoff: Backoff;
  /** The bound of one attempt of a call, ms. */
  readonly callTimeoutMs: number;
  readonly fetch: typeof fetch;
  private readonly token: TokenSource | undefined;
  private readonly configured: number;
  private current = 0;

  constructor(opts: FramecastOptions) {
    const list = nodeList(opts);
    this.urls = [];
    for (const u of list.map(normaliseUrl)) if (!this.urls.includes(u)) this.urls.push(u);
    this.configured = this.urls.length;
    this.token = opts.token ?? tokenFromEnv();
    this.backoff = backoffOf(opts.backoff);
    const timeout = opts.callTimeoutMs ?? DEFAULT_CALL_TIMEOUT_MS;
    // A timer's delay is a signed 32-bit count of ms in every runtime.
    if (!(Number.isInteger(timeout) && timeout > 0 && timeout <= 2_147_483_647)) {
      throw new TypeError(`Framecast: callTimeoutMs must be a whole number of ms from 1 to 2147483647, got ${String(timeout)}`);
    }
    this.callTimeoutMs = timeout;
    const withTls = tlsFetch(opts);
    if (withTls) {
      this.fetch = withTls;
    } else if (opts.fetch) {
      this.fetch = opts.fetch;
    } else if (typeof globalThis.fetch === "function") {
      // Bound: a browser's fetch called as a method of another object throws "Illegal invocation".
      this.fetch = globalThis.fetch.bind(globalThis);
    } else {
      throw new TypeError("Framecast: no global fetch; pass options.fetch");
    }
  }

  /** The node requests go to now. */
  base(): string {
    return this.urls[this.current]!;
  }

  /** The full URL of `path` on the node `base` (default: the current one), with the query's defined parameters. */
  url(path: string, query?: Record<string, string | undefined>, base: string = this.base()): string {
    let qs = "";
    if (query) {
      const p = new URLSearchParams();
      for (const [k, v] of Object.entries(query)) if (v !== undefined) p.append(k, v);
      const s = p.toString();
      if (s) qs = `?${s}`;
    }
    return base + path + qs;
  }

  /** `extra` plus `Authorization` when there is a token (fetched anew each time, so it may refresh). */
  async headers(extra?: Record<string, string | undefined>): Promise<Record<string, string>> {
    const h: Record<string, string> = {};
    if (extra) for (const [k, v] of Object.entries(extra)) if (v !== undefined) h[k] = v;
    if (this.token !== undefined) {
      const t = typeof this.token === "function" ? await this.token() : this.token;
      if (t) h["Authorization"] = `Bearer ${t}`;
    }
    return h;
  }

  /**
   * The base URL a `Framecast-Leader` header names (a URL, or `host:port` of one of the
   * nodes, else reached with the scheme of `from`); undefined when it names nothing usable.
   * A hint from an `https` node is never followed over plain `http` (the token would go in
   * clear): its host is reached over `https`, as every listener of a TLS server is.
   */
  leaderOf(header: string | null | undefined, from: string = this.base()): string | undefined {
    const named = header?.trim();
    if (!named || /[\s,]/.test(named)) return undefined;
    try {
      const secure = new URL(from).protocol === "https:";
      if (/^https?:\/\//i.test(named)) {
        const url = new URL(named);
        if (secure && url.protocol === "http:") url.protocol = "https:";
        return normaliseUrl(url.toString());
      }
      const known = this.urls.find((u) => new URL(u).host === named);
      if (known) return known;
      return normaliseUrl(`${new URL(from).protocol}//${named}`);
    } catch {
      return undefined;
    }
  }

  /** Makes `leader` (a base URL) the current node, learning it if it is not one of the nodes. */
  follow(leader: string): void {
    let i = this.urls.indexOf(leader);
    if (i < 0) {
      if (this.urls.length - this.configured >= MAX_LEARNED) this.urls.splice(this.configured, 1);
      i = this.urls.push(leader) - 1;
    }
    this.current = i;
  }

  /**
   * The node `from` failed (unreachable, 503, a broken stream): go to the leader a
   * follower named in its `Framecast-Leader` header, else to the next node (round robin),
   * unless another call already moved on from `from`.
   */
  failover(leader?: string | null, from: string = this.base()): void {
    const named = this.leaderOf(leader, from);
    if (named !== undefined && named !== from) {
      this.follow(named);
      return;
    }
    if (this.base() === from && this.urls.length > 1) this.current = (this.current + 1) % this.urls.length;
  }

  /** Sends `call`, retrying as it allows; the parsed JSON body of the 2xx answer (undefined when empty). */
  async request(call: Call): Promise<unknown> {
    const { signal } = call;
    const hops = new Hops();
    const tried = new Set<string>();
    for (let attempt = 0; ; ) {
      const base = this.base();
      tried.add(base);
      const url = this.url(call.path, call.query, base);
      const headers = await this.headers(call.headers);
      let resp: Response;
      let text: string;
      // This attempt's signal: the caller's abort, or callTimeoutMs (answer read included).
      // A controller and a timer rather than AbortSignal.any/timeout: they are in every
      // runtime the package supports, and the timer ends with the attempt.
      const attemptAbort = new AbortController();
      const timer = setTimeout(
        () => attemptAbort.abort(new DOMException(`no answer within ${this.callTimeoutMs} ms`, "TimeoutError")),
        this.callTimeoutMs,
      );
      const forward = (): void => attemptAbort.abort(signal ? abortReason(signal) : undefined);
      if (signal?.aborted) forward();
      else signal?.addEventListener("abort", forward, { once: true });
      try {
        const init: RequestInit = { method: call.method, headers, cache: "no-store", signal: attemptAbort.signal };
        if (call.body !== undefined) init.body = call.body as BodyInit;
        resp = await this.fetch(url, init);
        if (resp.ok) text = await resp.text();
      } catch (e) {
        if (signal?.aborted) throw abortReason(signal);
        const tls = certificateRefused(url, e);
        if (tls) throw tls;
        hops.reset();
        // A request never sent may go to a node it was not sent to yet, even when it is
        // not repeated after a lost answer.
        const again = call.idempotent || (neverSent(e) && this.urls.some((u) => !tried.has(u)));
        if (!again || attempt >= call.retries) throw hops.explain(unreachable(url, e));
        this.failover(undefined, base);
        await sleep(delayMs(this.backoff, attempt++), signal);
        continue;
      } finally {
        clearTimeout(timer);
        signal?.removeEventListener("abort", forward);
      }
      if (resp.ok) {
        if (text! === "") return undefined;
        try {
          return JSON.parse(text!);
        } catch {
          throw malformed(`${call.method} ${call.path}: body is not JSON: ${text!.slice(0, 200)}`);
        }
      }
      if (resp.status === 503) {
        // A refusal wrote nothing: always safe to send again.
        const leader = this.leaderOf(resp.headers.get("framecast-leader"), base);
        if (leader === undefined) {
          hops.reset();
          this.failover(undefined, base); // unavailable, naming no leader: the next node
        } else if (leader === base) {
          hops.reset(); // the leader itself, not ready: wait for it
        } else {
          this.follow(leader);
          if (hops.follow(base, leader)) {
            await resp.body?.cancel().catch(() => undefined);
            continue; // at once, to the leader
          }
        }
        if (attempt < call.retries) {
          await resp.body?.cancel().catch(() => undefined);
          await sleep(delayMs(this.backoff, attempt++), signal);
          continue;
        }
        throw hops.explain(await errorOfResponse(resp));
      }
      throw await errorOfResponse(resp);
    }
  }
}

/** The nodes of the options: `url` (a URL, several separated by commas, or a list) or `urls`. */
function nodeList(opts: FramecastOptions): string[] {
  const { url, urls } = opts as { url?: unknown; urls?: unknown };
  if (url !== undefined && urls !== undefined) throw new TypeError("Framecast: give url or urls, not both");
  const given = url ?? urls;
  if (given === undefined) throw new TypeError("Framecast: url is required");
  const parts: unknown[] = typeof given === "string" ? [given] : Array.isArray(given) ? given : [given];
  const list: string[] = [];
  for (const p of parts) {
    if (typeof p !== "string") throw new TypeError(`Framecast: a url is a string, not ${typeof p}`);
    for (const one of p.split(",")) {
      const u = one.trim();
      if (u === "") throw new TypeError(`Framecast: an empty url in ${JSON.stringify(p)}`);
      list.push(u);
    }
  }
  if (list.length === 0) throw new TypeError("Framecast: url is required");
  return list;
}

/** `http://h:p/` → `http://h:p`; refuses what is not an http(s) URL. */
export function normaliseUrl(u: string): string {
  let parsed: URL;
  try {
    parsed = new URL(u);
  } catch {
    throw new TypeError(`Framecast: not a URL: ${JSON.stringify(u)} (e.g. http://127.0.0.1:7071)`);
  }
  if (parsed.protocol !== "http:" && parsed.protocol !== "https:") {
    throw new TypeError(`Framecast: url must be http: or https:, got ${JSON.stringify(u)}`);
  }
  return parsed.href.replace(/\/+$/, "");
}

/** Node's `$FRAMECAST_TOKEN` (trimmed; `undefined` when unset or empty, and in a browser). */
function tokenFromEnv(): string | undefined {
  const env = (globalThis as { process?: { env?: Record<string, string | undefined> } }).process?.env;
  const token = env?.["FRAMECAST_TOKEN"]?.trim();
  return token ? token : undefined;
}
