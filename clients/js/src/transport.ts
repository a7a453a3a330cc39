/**
 * What every call shares: the server's address(es), the token, the `fetch` to use, and
 * the one request loop that retries what may be retried.
 */

import { abortReason, type Backoff, backoffOf, delayMs, sleep, timerMs } from "./backoff.js";
import { codeOfStatus, errorOfResponse, fateUnknown, FramecastError } from "./errors.js";
import { tlsFetch } from "./tls.js";
import { isVisibleAscii, malformed } from "./wire.js";
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
  /** How many times to retry (see `idempotent` for after what); following a leader hint at once is not counted. */
  retries: number;
  /**
   * Whether repeating the request after any transient failure is harmless: reads, and writes
   * the server deduplicates (a key, or createTopic). Such a call is retried after a network
   * error and a 502, 503 or 504. Any other is retried only when it surely wrote nothing: a
   * follower's 503 naming the leader (`Framecast-Leader`), and a connection refused before
   * anything was sent; a plain 503 may come after the write was applied, so it is final.
   */
  idempotent: boolean;
  /**
   * The idempotency key of a keyed write (publish, broadcast). A final refusal after an
   * attempt that broke (see {@link Transport.request}) then fails `FATE_UNKNOWN`: the broken
   * attempt may have stored it. Unset for reads and for writes the server does not key.
   */
  key?: string | undefined;
  signal?: AbortSignal | undefined;
}

/** How long one attempt of a call may take by default, ms. */
const DEFAULT_CALL_TIMEOUT_MS = 30_000;

/**
 * How long a call may take by default, retries included, counted from its first attempt, ms:
 * the Rust and Python clients' bound, well below the server's default `--dedup-window` (2
 * minutes), so that no retry of a publish is sent after the server forgot its key.
 */
const DEFAULT_RETRY_BUDGET_MS = 60_000;

/** The statuses a proxy or the server answers when the node is unavailable; gRPC reads all three as UNAVAILABLE. */
const UNAVAILABLE_STATUSES = new Set([502, 503, 504]);

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
  /** The bound of a call with its retries, from its first attempt, ms. */
  readonly retryBudgetMs: number;
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
    this.callTimeoutMs = timerMs("callTimeoutMs", opts.callTimeoutMs ?? DEFAULT_CALL_TIMEOUT_MS);
    this.retryBudgetMs = timerMs("retryBudgetMs", opts.retryBudgetMs ?? DEFAULT_RETRY_BUDGET_MS);
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

  /** Whether the token is a function, asked anew for each request: an expired one may be replaced. */
  get refreshesToken(): boolean {
    return typeof this.token === "function";
  }

  /**
   * `extra` plus `Authorization` when there is a token (fetched anew each time, so it may
   * refresh). A token that cannot be a bearer token is refused here, as the caller's error:
   * `fetch` would throw on it, and that would pass for a network error and be retried.
   * A token function is raced against `signal`: when it aborts first, this rejects with its
   * reason at once (the function's late answer is dropped), so a slow token source never
   * holds up a close, an abort or a timeout.
   */
  async headers(extra?: Record<string, string | undefined>, signal?: AbortSignal): Promise<Record<string, string>> {
    const h: Record<string, string> = {};
    if (extra) for (const [k, v] of Object.entries(extra)) if (v !== undefined) h[k] = v;
    if (this.token !== undefined) {
      const given: unknown =
        typeof this.token === "function" ? await untilAborted(Promise.resolve(this.token()), signal) : this.token;
      const token = typeof given === "string" ? given.trim() : given;
      if (token) h["Authorization"] = `Bearer ${bearerToken(token)}`;
    }
    return h;
  }

  /**
   * The base URL of the node a `Framecast-Leader` header names, when it is an HTTP door the
   * client can tell; undefined otherwise. A URL is the leader's HTTP door (`--advertise-http`):
   * taken as it is, except that a hint from an `https` node is never followed over plain
   * `http` (the token would go in clear): its host is reached over `https`, as every listener
   * of a TLS server is. A bare `host:port` is what a node without `--advertise-http` names:
   * the leader's gRPC address, which does not answer this client. It is taken only for a node
   * the client has at that `host:port`, else for the one configured node on that host (its
   * HTTP door, on another port); never reached as it is.
   */
  leaderOf(header: string | null | undefined, from: string = this.base()): string | undefined {
    const named = header?.trim();
    if (!named || /[\s,]/.test(named)) return undefined;
    try {
      if (/^https?:\/\//i.test(named)) {
        const url = new URL(named);
        if (new URL(from).protocol === "https:" && url.protocol === "http:") url.protocol = "https:";
        return normaliseUrl(url.toString());
      }
      const hint = new URL(`http://${named}`);
      if (hint.pathname !== "/" || hint.search || hint.hash || hint.username) return undefined;
      const at = `${hint.hostname}:${hint.port || "80"}`;
      const known = this.urls.find((u) => hostPort(new URL(u)) === at);
      if (known) return known;
      const onHost = this.urls.slice(0, this.configured).filter((u) => new URL(u).hostname === hint.hostname);
      return onHost.length === 1 ? onHost[0] : undefined;
    } catch {
      return undefined;
    }
  }

  /** Makes `leader` (a base URL that answered) the current node, learning it if it is not one of the nodes. */
  follow(leader: string): void {
    let i = this.urls.indexOf(leader);
    if (i < 0) {
      if (this.urls.length - this.configured >= MAX_LEARNED) this.urls.splice(this.configured, 1);
      i = this.urls.push(leader) - 1;
    }
    this.current = i;
  }

  /** The node `from` failed (unreachable, 503, a broken stream): the next node, round robin, unless another call already moved on from `from`. */
  failover(from: string): void {
    if (this.base() === from && this.urls.length > 1) this.current = (this.current + 1) % this.urls.length;
  }

  /**
   * The wait before retry number `attempt` of a call, ms; undefined when its `retries` are
   * spent or the wait would reach `deadline` (the end of its retry budget).
   */
  private retryDelay(attempt: number, retries: number, deadline: number): number | undefined {
    if (attempt >= retries) return undefined;
    const delay = delayMs(this.backoff, attempt);
    return Date.now() + delay < deadline ? delay : undefined;
  }

  /**
   * Sends `call`, retrying as it allows (see {@link Call}) within its `retries` and the
   * client's retry budget; the parsed JSON body of the 2xx answer (undefined when empty).
   * Once either is spent, the last failure is the error.
   *
   * An attempt "broke" when it may have been applied without the client hearing so: a
   * network error after the request may have been sent (anything but a connection never
   * made), no answer within its time, a body that broke off, or a 502, 503 or 504 that says
   * nothing of what was written (neither `Framecast-Leader` nor `Framecast-Unwritten`). A
   * keyed write ({@link Call.key}) refused for good after such an attempt fails
   * `FATE_UNKNOWN`, not with the refusal (see {@link fateUnknown}).
   */
  async request(call: Call): Promise<unknown> {
    const { signal } = call;
    const route = new Route(this);
    const hops = new Hops();
    // Counted from the first attempt, not the first failure: every retry of a publish then
    // goes out within the budget of the first one's sending, so (the budget below the
    // server's dedup window) while the server still knows its key.
    const deadline = Date.now() + this.retryBudgetMs;
    /** A 401 was answered once already and the token function asked again (see below). */
    let reauthorised = false;
    /** An attempt broke (see above): this call's write may be stored whatever a later answer says. */
    let broke = false;
    for (let attempt = 0; ; ) {
      const base = route.next();
      const url = this.url(call.path, call.query, base);
      let resp: Response | undefined;
      let text = "";
      /** The error a non-2xx answer carries, its body read within this attempt's bound. */
      let refusal: FramecastError | undefined;
      let failure: { error: unknown } | undefined;
      // This attempt's signal: the caller's abort, or its time (callTimeoutMs, cut to what is
      // left of the budget; token function and answer read included, an error's body too). A
      // controller and a timer rather than AbortSignal.any/timeout: they are in every runtime
      // the package supports, and the timer ends with the attempt.
      const attemptMs = Math.max(1, Math.min(this.callTimeoutMs, deadline - Date.now()));
      const attemptAbort = new AbortController();
      const timer = setTimeout(() => {
        const why = attemptMs < this.callTimeoutMs ? " (the end of the call's retry budget)" : "";
        attemptAbort.abort(new DOMException(`no answer within ${attemptMs} ms${why}`, "TimeoutError"));
      }, attemptMs);
      const forward = (): void => attemptAbort.abort(signal ? abortReason(signal) : undefined);
      if (signal?.aborted) forward();
      else signal?.addEventListener("abort", forward, { once: true });
      try {
        let headers: Record<string, string>;
        try {
          headers = await this.headers(call.headers, attemptAbort.signal);
        } catch (e) {
          // A token function that fails is the caller's error, not the network's: not retried.
          // One that gives no token within the attempt's time ends the call too (asking it
          // again would only pile up calls on a token source that does not answer).
          if (signal?.aborted) throw abortReason(signal);
          const failed = attemptAbort.signal.aborted
            ? new FramecastError("UNAVAILABLE", 0, `the token function gave no token within ${attemptMs} ms`, {
                cause: e,
              })
            : e;
          // After an attempt that broke, a keyed write may be stored whatever the token
          // function says now: stored or not, as after a refusal (see above).
          if (broke && call.key) throw fateUnknown(tokenRefusal(failed), call.key);
          throw failed;
        }
        try {
          const init: RequestInit = { method: call.method, headers, cache: "no-store", signal: attemptAbort.signal };
          if (call.body !== undefined) init.body = call.body as BodyInit;
          resp = await this.fetch(url, init);
          if (resp.ok) text = await resp.text();
          // The error's body is read here, while the attempt's timer and the caller's signal
          // still bound it: a body that stalls ends with the attempt (the status alone then
          // says what happened), never hangs the call.
          else refusal = await errorOfResponse(resp);
        } catch (e) {
          failure = { error: e };
        }
      } finally {
        clearTimeout(timer);
        signal?.removeEventListener("abort", forward);
      }
      // Aborted by the caller while the answer (or an error's body) was read: the abort wins.
      if (signal?.aborted && resp?.ok !== true) throw abortReason(signal);

      if (failure !== undefined || resp === undefined) {
        // No answer, or one whose body broke off.
        const e = failure?.error;
        if (signal?.aborted) throw abortReason(signal);
        const tls = certificateRefused(url, e);
        if (tls) throw tls;
        hops.reset();
        // A request never sent wrote nothing: it is sent again, with the same backoff, even
        // when it is not repeated after a lost answer. The next node if there is one, else
        // the same: a node that refuses connections is often one still starting.
        const again = call.idempotent || neverSent(e);
        const delay = again ? this.retryDelay(attempt, call.retries, deadline) : undefined;
        if (delay === undefined) throw hops.explain(unreachable(url, e));
        if (!neverSent(e)) broke = true;
        route.failed(base);
        attempt++;
        await sleep(delay, signal);
        continue;
      }

      if (!UNAVAILABLE_STATUSES.has(resp.status)) {
        // An answer, not a node unavailable: a leader a hint named is the client's node now.
        route.answered(base);
        if (refusal !== undefined) {
          // A token function may give a better token than the one refused (a cached one that
          // just expired): asked once more, after a short wait, within the budget. A 401 wrote
          // nothing, so this is safe for any call.
          if (resp.status === 401 && this.refreshesToken && !reauthorised) {
            const delay = delayMs(this.backoff, 0);
            if (Date.now() + delay < deadline) {
              reauthorised = true;
              await sleep(delay, signal);
              continue;
            }
          }
          throw broke && call.key ? fateUnknown(refusal, call.key) : refusal;
        }
        if (text === "") return undefined;
        try {
          return JSON.parse(text);
        } catch {
          throw malformed(`${call.method} ${call.path}: body is not JSON: ${text.slice(0, 200)}`);
        }
      }
      // A follower's refusal naming the leader wrote nothing: safe to send again, whatever
      // the call. Any other may come after the write was applied (a leader that lost its
      // lease meanwhile, a proxy that timed out): only a call that may be repeated is.
      const hint = resp.status === 503 ? resp.headers.get("framecast-leader")?.trim() : undefined;
      // So did a server still starting (`Framecast-Unwritten`): refused before it was read.
      const unwritten = resp.status === 503 && resp.headers.has("framecast-unwritten");
      if (!hint && !unwritten && !call.idempotent) throw refused(resp, refusal);
      if (!hint && !unwritten) broke = true;
      const leader = this.leaderOf(hint, base);
      let atOnce = false;
      if (leader === undefined) {
        hops.reset();
        route.failed(base); // unavailable, naming no leader the client can reach: the next node
      } else if (leader === base) {
        hops.reset(); // the leader itself, not ready: wait for it
      } else {
        route.hint(leader);
        atOnce = hops.follow(base, leader) && Date.now() < deadline;
      }
      const delay = atOnce ? 0 : this.retryDelay(attempt, call.retries, deadline);
      if (delay === undefined) throw hops.explain(refused(resp, refusal));
      if (atOnce) continue; // at once, to the leader
      attempt++;
      await sleep(delay, signal);
    }
  }
}

/**
 * Where one call, or one subscription, sends its next attempt: the client's current node, or
 * a node a `Framecast-Leader` hint named. A named node becomes the client's current node only
 * once it answered (anything but a 502, 503 or 504): a hint may be stale or name a node that
 * is down, and every call goes the current way.
 */
export class Route {
  private readonly transport: Transport;
  /** The node a hint named, not answered yet. */
  private hinted: string | undefined;

  constructor(transport: Transport) {
    this.transport = transport;
  }

  /** The node of the next attempt. */
  next(): string {
    return this.hinted ?? this.transport.base();
  }

  /** A node named `leader` (a base URL, see {@link Transport.leaderOf}): the next attempt goes there. */
  hint(leader: string): void {
    this.hinted = leader;
  }

  /** `node` answered (not unavailable): the leader a hint named becomes the client's current node. */
  answered(node: string): void {
    if (node !== this.hinted) return;
    this.hinted = undefined;
    this.transport.follow(node);
  }

  /**
   * The attempt at `node` failed (unreachable, or unavailable naming no leader it can reach):
   * the next configured node, round robin. A named node that failed is forgotten, and the
   * client moves on from the node that named it.
   */
  failed(node: string): void {
    if (node === this.hinted) {
      this.hinted = undefined;
      this.transport.failover(this.transport.base());
    } else {
      this.transport.failover(node);
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

/** `host:port` of a URL, its scheme's default port spelt out. */
function hostPort(u: URL): string {
  return `${u.hostname}:${u.port || (u.protocol === "https:" ? "443" : "80")}`;
}

/** The error of a non-2xx answer, its body read within the attempt (else its status alone). */
function refused(resp: Response, refusal: FramecastError | undefined): FramecastError {
  return refusal ?? new FramecastError(codeOfStatus(resp.status), resp.status, `HTTP ${resp.status} ${resp.statusText}`.trim());
}

/**
 * `p`, or the reason of `signal` as soon as it aborts (`p` is then left to settle unheard).
 * The listener goes with whichever comes first.
 */
export function untilAborted<T>(p: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (!signal) return p;
  if (signal.aborted) {
    p.catch(() => undefined);
    return Promise.reject(abortReason(signal));
  }
  return new Promise<T>((resolve, reject) => {
    const onAbort = (): void => {
      p.catch(() => undefined);
      reject(abortReason(signal));
    };
    signal.addEventListener("abort", onAbort, { once: true });
    p.then(
      (v) => {
        signal.removeEventListener("abort", onAbort);
        resolve(v);
      },
      (e: unknown) => {
        signal.removeEventListener("abort", onAbort);
        reject(e);
      },
    );
  });
}

/** `token` if it can be sent as `Bearer <token>`; else the caller's error, before anything is sent. */
function bearerToken(token: unknown): string {
  if (typeof token === "string" && token !== "" && isVisibleAscii(token)) return token;
  const what = typeof token === "string" ? "has characters a bearer token cannot have (it is visible ASCII)" : `is a ${typeof token}, not a string`;
  throw new FramecastError("INVALID_ARGUMENT", 400, `the token ${what}`);
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

/**
 * A token function's failure as the refusal it amounts to: its own `FramecastError` (its
 * time ran out: `UNAVAILABLE`), else `UNAUTHENTICATED` (no credentials to send), status 0 (no
 * answer). A token the client cannot send (`INVALID_ARGUMENT`) is no malformed request
 * either: `UNAUTHENTICATED` too, so that {@link fateUnknown} never takes it for one.
 */
function tokenRefusal(e: unknown): FramecastError {
  if (e instanceof FramecastError && e.code !== "INVALID_ARGUMENT") return e;
  const why = e instanceof Error ? e.message : String(e);
  return new FramecastError("UNAUTHENTICATED", 0, `the token function failed: ${why}`, { cause: e });
}
