/**
 * What every call shares: the server's address(es), the token, the `fetch` to use, and
 * the one request loop that retries what may be retried.
 */
import { abortReason, backoffOf, delayMs, sleep } from "./backoff.js";
import { errorOfResponse, FramecastError } from "./errors.js";
import { malformed } from "./wire.js";
/** A network failure (no HTTP answer), as `fetch` reports it. */
function unreachable(url, cause) {
    const why = cause instanceof Error ? cause.message : String(cause);
    return new FramecastError("UNAVAILABLE", 0, `cannot reach ${url}: ${why}`, { cause });
}
/** The addresses, credentials and fetch of a client, and its request loop. */
export class Transport {
    /** The nodes, normalised (no trailing slash). */
    urls;
    backoff;
    fetch;
    token;
    current = 0;
    constructor(opts) {
        const list = typeof opts.url === "string" ? [opts.url] : [...opts.url];
        if (list.length === 0)
            throw new TypeError("Framecast: url is required");
        this.urls = list.map(normaliseUrl);
        this.token = opts.token;
        this.backoff = backoffOf(opts.backoff);
        if (opts.fetch) {
            this.fetch = opts.fetch;
        }
        else if (typeof globalThis.fetch === "function") {
            // Bound: a browser's fetch called as a method of another object throws "Illegal invocation".
            this.fetch = globalThis.fetch.bind(globalThis);
        }
        else {
            throw new TypeError("Framecast: no global fetch; pass options.fetch");
        }
    }
    /** The node requests go to now. */
    base() {
        return this.urls[this.current];
    }
    /** The full URL of `path` on the current node, with the query's defined parameters. */
    url(path, query) {
        let qs = "";
        if (query) {
            const p = new URLSearchParams();
            for (const [k, v] of Object.entries(query))
                if (v !== undefined)
                    p.append(k, v);
            const s = p.toString();
            if (s)
                qs = `?${s}`;
        }
        return this.base() + path + qs;
    }
    /** `extra` plus `Authorization` when there is a token (fetched anew each time, so it may refresh). */
    async headers(extra) {
        const h = {};
        if (extra)
            for (const [k, v] of Object.entries(extra))
                if (v !== undefined)
                    h[k] = v;
        if (this.token !== undefined) {
            const t = typeof this.token === "function" ? await this.token() : this.token;
            if (t)
                h["Authorization"] = `Bearer ${t}`;
        }
        return h;
    }
    /**
     * After a node failed (unreachable, or 503): go to the leader a follower named in its
     * `Framecast-Leader` header when it is one of the nodes (or a URL), else to the next node.
     */
    failover(leader) {
        if (leader) {
            const named = leader.trim();
            let i = -1;
            if (/^https?:\/\//i.test(named)) {
                const u = normaliseUrl(named);
                i = this.urls.indexOf(u);
                if (i < 0)
                    i = this.urls.push(u) - 1;
            }
            else {
                i = this.urls.findIndex((u) => new URL(u).host === named);
            }
            if (i >= 0) {
                this.current = i;
                return;
            }
        }
        if (this.urls.length > 1)
            this.current = (this.current + 1) % this.urls.length;
    }
    /** Sends `call`, retrying as it allows; the parsed JSON body of the 2xx answer (undefined when empty). */
    async request(call) {
        const { signal } = call;
        for (let attempt = 0;; attempt++) {
            const url = this.url(call.path, call.query);
            const headers = await this.headers(call.headers);
            let resp;
            let text;
            try {
                const init = { method: call.method, headers, cache: "no-store" };
                if (call.body !== undefined)
                    init.body = call.body;
                if (signal)
                    init.signal = signal;
                resp = await this.fetch(url, init);
                if (resp.ok)
                    text = await resp.text();
            }
            catch (e) {
                if (signal?.aborted)
                    throw abortReason(signal);
                if (!call.idempotent || attempt >= call.retries)
                    throw unreachable(url, e);
                this.failover();
                await sleep(delayMs(this.backoff, attempt), signal);
                continue;
            }
            if (resp.ok) {
                if (text === "")
                    return undefined;
                try {
                    return JSON.parse(text);
                }
                catch {
                    throw malformed(`${call.method} ${call.path}: body is not JSON: ${text.slice(0, 200)}`);
                }
            }
            if (resp.status === 503 && attempt < call.retries) {
                const leader = resp.headers.get("framecast-leader");
                await resp.body?.cancel().catch(() => undefined);
                this.failover(leader);
                await sleep(delayMs(this.backoff, attempt), signal);
                continue;
            }
            throw await errorOfResponse(resp);
        }
    }
}
/** `http://h:p/` → `http://h:p`; refuses what is not an http(s) URL. */
function normaliseUrl(u) {
    let parsed;
    try {
        parsed = new URL(u);
    }
    catch {
        throw new TypeError(`Framecast: not a URL: ${JSON.stringify(u)} (e.g. http://127.0.0.1:7071)`);
    }
    if (parsed.protocol !== "http:" && parsed.protocol !== "https:") {
        throw new TypeError(`Framecast: url must be http: or https:, got ${JSON.stringify(u)}`);
    }
    return parsed.href.replace(/\/+$/, "");
}
//# sourceMappingURL=transport.js.map