/**
 * What every call shares: the server's address(es), the token, the `fetch` to use, and
 * the one request loop that retries what may be retried.
 */
import { type Backoff } from "./backoff.js";
import { FramecastError } from "./errors.js";
import type { FramecastOptions } from "./types.js";
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
/**
 * When a failed `fetch` is a TLS handshake that refused a certificate (the server's not
 * signed by the trusted CA or not for this host, or the server's alert refusing ours), the
 * error to throw at once: a retry cannot cure it. Undefined for anything else. (A server
 * that refuses a missing client certificate under TLS 1.3 may only close the connection
 * after the handshake: that looks like any dropped connection and is retried.)
 */
export declare function certificateRefused(url: string, e: unknown): FramecastError | undefined;
/**
 * Whether a failed `fetch` never reached a server (connection refused, no such host), so
 * that sending it to another node is harmless even for a request that is not repeated
 * after a lost answer. Node's fetch tells (`cause.code`); a browser's does not (false).
 */
export declare function neverSent(e: unknown): boolean;
/**
 * How many `Framecast-Leader` hints in a row one call follows at once. After that, or as
 * soon as a hint names a node the call already passed through (nodes naming each other),
 * the call backs off like after any 503, so disagreeing nodes cost retries, not a busy loop.
 */
export declare const MAX_LEADER_HOPS = 3;
/** The nodes one call went through by following hints at once, and the chain it cut, if any. */
export declare class Hops {
    private chain;
    /** The last chain that was cut (a loop, or too many hints in a row), for the error message. */
    loop: string[];
    /** A hint from `from` to `to` (base URLs): true to follow it at once, false to back off first. */
    follow(from: string, to: string): boolean;
    /** Anything but a hint ends the chain. */
    reset(): void;
    /** `err`, naming the loop of hints the call ran into, if it did. */
    explain(err: FramecastError): FramecastError;
}
/** The addresses, credentials and fetch of a client, and its request loop. */
export declare class Transport {
    /** The nodes, normalised (no trailing slash): those given, then leaders learned from hints. */
    readonly urls: string[];
    readonly backoff: Backoff;
    /** The bound of one attempt of a call, ms. */
    readonly callTimeoutMs: number;
    readonly fetch: typeof fetch;
    private readonly token;
    private readonly configured;
    private current;
    constructor(opts: FramecastOptions);
    /** The node requests go to now. */
    base(): string;
    /** The full URL of `path` on the node `base` (default: the current one), with the query's defined parameters. */
    url(path: string, query?: Record<string, string | undefined>, base?: string): string;
    /** `extra` plus `Authorization` when there is a token (fetched anew each time, so it may refresh). */
    headers(extra?: Record<string, string | undefined>): Promise<Record<string, string>>;
    /**
     * The base URL a `Framecast-Leader` header names (a URL, or `host:port` of one of the
     * nodes, else reached with the scheme of `from`); undefined when it names nothing usable.
     * A hint from an `https` node is never followed over plain `http` (the token would go in
     * clear): its host is reached over `https`, as every listener of a TLS server is.
     */
    leaderOf(header: string | null | undefined, from?: string): string | undefined;
    /** Makes `leader` (a base URL) the current node, learning it if it is not one of the nodes. */
    follow(leader: string): void;
    /**
     * The node `from` failed (unreachable, 503, a broken stream): go to the leader a
     * follower named in its `Framecast-Leader` header, else to the next node (round robin),
     * unless another call already moved on from `from`.
     */
    failover(leader?: string | null, from?: string): void;
    /** Sends `call`, retrying as it allows; the parsed JSON body of the 2xx answer (undefined when empty). */
    request(call: Call): Promise<unknown>;
}
/** `http://h:p/` → `http://h:p`; refuses what is not an http(s) URL. */
export declare function normaliseUrl(u: string): string;
//# sourceMappingURL=transport.d.ts.map