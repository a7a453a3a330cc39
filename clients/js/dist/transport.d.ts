/**
 * What every call shares: the server's address(es), the token, the `fetch` to use, and
 * the one request loop that retries what may be retried.
 */
import { type Backoff } from "./backoff.js";
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
/** The addresses, credentials and fetch of a client, and its request loop. */
export declare class Transport {
    /** The nodes, normalised (no trailing slash). */
    readonly urls: string[];
    readonly backoff: Backoff;
    readonly fetch: typeof fetch;
    private readonly token;
    private current;
    constructor(opts: FramecastOptions);
    /** The node requests go to now. */
    base(): string;
    /** The full URL of `path` on the current node, with the query's defined parameters. */
    url(path: string, query?: Record<string, string | undefined>): string;
    /** `extra` plus `Authorization` when there is a token (fetched anew each time, so it may refresh). */
    headers(extra?: Record<string, string | undefined>): Promise<Record<string, string>>;
    /**
     * After a node failed (unreachable, or 503): go to the leader a follower named in its
     * `Framecast-Leader` header when it is one of the nodes (or a URL), else to the next node.
     */
    failover(leader?: string | null): void;
    /** Sends `call`, retrying as it allows; the parsed JSON body of the 2xx answer (undefined when empty). */
    request(call: Call): Promise<unknown>;
}
//# sourceMappingURL=transport.d.ts.map