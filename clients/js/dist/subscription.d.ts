/**
 * A subscription: Server-Sent Events read through `fetch`'s streaming body, reconnecting
 * by itself. Each reconnect sends `Last-Event-ID` = the id of the last event it handed
 * out (a cursor token), so the server resumes exactly after it: no gap, no duplicate, on
 * whichever node of a cluster it reconnects to (the client's current one, or with
 * `readFrom: "followers"` a follower picked anew for each connect).
 */
import type { FollowerPicker } from "./followers.js";
import { type Transport } from "./transport.js";
import type { Frame, SubscribeOptions } from "./types.js";
/**
 * The frames of a topic: its stored frames (replay, in order-key order), then its new
 * ones (live, in offset order), for as long as it is iterated.
 *
 * `for await (const f of sub)` ends without an error when the `signal` aborts or
 * `close()` is called; it throws a {@link FramecastError} when the server refuses or ends
 * the subscription for good (any status but 408, 502, 503 and 504, or an `event: error`
 * whose code is not `UNAVAILABLE`), or after `maxReconnects` reconnects without a frame.
 * Network errors, those statuses and `UNAVAILABLE` reconnect; so does a `429` once a stream
 * of this subscription was open (its own old stream may still hold the slot), with backoff,
 * for up to 2 minutes. A token that expires under the stream (`UNAUTHENTICATED`) is replaced
 * when the client's token is a function: the stream reconnects at once with a fresh one; a
 * `401` then is asked again up to 3 times, with waits of 0.5–1, 1–2 and 2–4 s, the function
 * called anew each time (clock skew), and only then final. A slow token function does not
 * hold up `close()` or the signal. A
 * refusal from a follower (`readFrom: "followers"`) is not final: the subscription asks
 * the leader at once (else the client's current node), and that answer is.
 */
export declare class Subscription implements AsyncIterableIterator<Frame> {
    /** The snapshot point `S` of the stream (replay is `offset < S`); set by the first event. */
    snapshotOffset: bigint | undefined;
    /** The topic's epoch; set by the first event. */
    epoch: bigint | undefined;
    /** The id of the last event handed out: a cursor token that resumes right after it. */
    cursor: string | undefined;
    /** How many times the stream was re-opened after a break. */
    reconnects: number;
    private readonly transport;
    /** With `readFrom: "followers"`: picks the node of each connect. */
    private readonly followers;
    /** The node of the current connection (see {@link node}). */
    private at;
    private readonly path;
    private readonly from;
    private readonly maxReconnects;
    private readonly idleTimeoutMs;
    private readonly stop;
    private readonly userSignal;
    private readonly onUserAbort;
    private readonly frames;
    /** @internal Made by `Framecast.subscribe`. */
    constructor(transport: Transport, path: string, opts: SubscribeOptions, followers?: FollowerPicker);
    /**
     * The base URL of the node this subscription reads from now (e.g. `http://10.0.0.2:7071`):
     * the node of its open connection, or of the one it is opening. With `readFrom:
     * "followers"` a follower's HTTP address as the cluster advertises it (or the client's
     * current node, `fc.url`, when it fell back); else the client's current node. Undefined
     * until the first connect, which the first `next()` starts. Changes when it reconnects.
     */
    get node(): string | undefined;
    /** Ends the subscription: the stream is cancelled and the iterator finishes. */
    close(): void;
    next(): Promise<IteratorResult<Frame, void>>;
    return(): Promise<IteratorResult<Frame, void>>;
    throw(e?: unknown): Promise<IteratorResult<Frame, void>>;
    [Symbol.asyncIterator](): this;
    /** The connect, read, reconnect loop. */
    private run;
    /** A `frame` event: its data, and its id as the frame's cursor. */
    private frameOf;
}
//# sourceMappingURL=subscription.d.ts.map