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
    /** The bound of a call with its retries, from its first attempt, ms. */
    readonly retryBudgetMs: number;
    readonly fetch: typeof fetch;
    private readonly token;
    private readonly configured;
    private current;
    constructor(opts: FramecastOptions);
    /** The node requests go to now. */
    base(): string;
    /** The full URL of `path` on the node `base` (default: the current one), with the query's defined parameters. */
    url(path: string, query?: Record<string, string | undefined>, base?: string): string;
    /** Whether the token is a function, asked anew for each request: an expired one may be replaced. */
    get refreshesToken(): boolean;
    /**
     * `extra` plus `Authorization` when there is a token (fetched anew each time, so it may
     * refresh). A token that cannot be a bearer token is refused here, as the caller's error:
     * `fetch` would throw on it, and that would pass for a network error and be retried.
     * A token function is raced against `signal`: when it aborts first, this rejects with its
     * reason at once (the function's late answer is dropped), so a slow token source never
     * holds up a close, an abort or a timeout.
     */
    headers(extra?: Record<string, string | undefined>, signal?: AbortSignal): Promise<Record<string, string>>;
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
    leaderOf(header: string | null | undefined, from?: string): string | undefined;
    /** Makes `leader` (a base URL that answered) the current node, learning it if it is not one of the nodes. */
    follow(leader: string): void;
    /** The node `from` failed (unreachable, 503, a broken stream): the next node, round robin, unless another call already moved on from `from`. */
    failover(from: string): void;
    /**
     * The wait before retry number `attempt` of a call, ms; undefined when its `retries` are
     * spent or the wait would reach `deadline` (the end of its retry budget).
     */
    private retryDelay;
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
    request(call: Call): Promise<unknown>;
}
/**
 * Where one call, or one subscription, sends its next attempt: the client's current node, or
 * a node a `Framecast-Leader` hint named. A named node becomes the client's current node only
 * once it answered (anything but a 502, 503 or 504): a hint may be stale or name a node that
 * is down, and every call goes the current way.
 */
export declare class Route {
    private readonly transport;
    /** The node a hint named, not answered yet. */
    private hinted;
    constructor(transport: Transport);
    /** The node of the next attempt. */
    next(): string;
    /** A node named `leader` (a base URL, see {@link Transport.leaderOf}): the next attempt goes there. */
    hint(leader: string): void;
    /** `node` answered (not unavailable): the leader a hint named becomes the client's current node. */
    answered(node: string): void;
    /**
     * The attempt at `node` failed (unreachable, or unavailable naming no leader it can reach):
     * the next configured node, round robin. A named node that failed is forgotten, and the
     * client moves on from the node that named it.
     */
    failed(node: string): void;
}
/**
 * `p`, or the reason of `signal` as soon as it aborts (`p` is then left to settle unheard).
 * The listener goes with whichever comes first.
 */
export declare function untilAborted<T>(p: Promise<T>, signal: AbortSignal | undefined): Promise<T>;
/** `http://h:p/` → `http://h:p`; refuses what is not an http(s) URL. */
export declare function normaliseUrl(u: string): string;
//# sourceMappingURL=transport.d.ts.map