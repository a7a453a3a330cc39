/**
 * A subscription: Server-Sent Events read through `fetch`'s streaming body, reconnecting
 * by itself. Each reconnect sends `Last-Event-ID` = the id of the last event it handed
 * out (a cursor token), so the server resumes exactly after it: no gap, no duplicate.
 */
import { abortReason, delayMs, sleep } from "./backoff.js";
import { errorOfEvent, errorOfResponse, FramecastError } from "./errors.js";
import { SseParser } from "./sse.js";
import { frameOf, integerText, malformed, record, toBigInt } from "./wire.js";
/** A refused subscription that is worth asking again: timeouts, rate limits, server-side trouble. */
function reconnectable(status) {
    return status === 408 || status === 429 || status >= 500;
}
/**
 * The frames of a topic: its stored frames (replay, in order-key order), then its new
 * ones (live, in offset order), for as long as it is iterated.
 *
 * `for await (const f of sub)` ends without an error when the `signal` aborts or
 * `close()` is called; it throws a {@link FramecastError} when the server refuses or ends
 * the subscription for good (any 4xx other than 408/429, or an `event: error` whose code
 * is not `UNAVAILABLE`). Network errors, 503 and `UNAVAILABLE` reconnect.
 */
export class Subscription {
    /** The snapshot point `S` of the stream (replay is `offset < S`); set by the first event. */
    snapshotOffset;
    /** The topic's epoch; set by the first event. */
    epoch;
    /** The id of the last event handed out: a cursor token that resumes right after it. */
    cursor;
    /** How many times the stream was re-opened after a break. */
    reconnects = 0;
    transport;
    path;
    from;
    maxReconnects;
    idleTimeoutMs;
    stop = new AbortController();
    userSignal;
    onUserAbort = () => this.close();
    frames;
    /** @internal Made by `Framecast.subscribe`. */
    constructor(transport, path, opts) {
        this.transport = transport;
        this.path = path;
        this.from = opts.from === undefined ? undefined : integerText("from", opts.from);
        this.cursor = opts.resume;
        this.maxReconnects = opts.maxReconnects ?? Infinity;
        this.idleTimeoutMs = opts.idleTimeoutMs ?? 45_000;
        this.userSignal = opts.signal;
        if (opts.signal?.aborted)
            this.stop.abort();
        else
            opts.signal?.addEventListener("abort", this.onUserAbort, { once: true });
        this.frames = this.run();
    }
    /** Ends the subscription: the stream is cancelled and the iterator finishes. */
    close() {
        if (!this.stop.signal.aborted)
            this.stop.abort();
    }
    next() {
        return this.frames.next();
    }
    return() {
        this.close();
        return this.frames.return(undefined);
    }
    throw(e) {
        this.close();
        return this.frames.throw(e);
    }
    [Symbol.asyncIterator]() {
        return this;
    }
    /** The connect, read, reconnect loop. */
    async *run() {
        const stop = this.stop.signal;
        let failures = 0;
        try {
            while (!stop.aborted) {
                // Before the try: a token function that fails is the caller's error, not the network's.
                const headers = await this.transport.headers({
                    Accept: "text/event-stream",
                    "Last-Event-ID": this.cursor,
                });
                if (stop.aborted)
                    return;
                const conn = new AbortController();
                let idle;
                const onStop = () => {
                    clearTimeout(idle);
                    conn.abort(abortReason(stop));
                };
                stop.addEventListener("abort", onStop, { once: true });
                const arm = () => {
                    clearTimeout(idle);
                    idle = setTimeout(() => conn.abort(new Error(`nothing received for ${this.idleTimeoutMs} ms`)), this.idleTimeoutMs);
                    // In Node, the open stream keeps the process alive, never this timer alone.
                    idle.unref?.();
                };
                /** Why this connection ended, when it is worth reconnecting. */
                let broke;
                /** The node of this connection: a break moves the client on from it (reads work on every node, with the same cursors). */
                const base = this.transport.base();
                try {
                    arm();
                    const url = this.transport.url(this.path, { from: this.from }, base);
                    const resp = await this.transport.fetch(url, { headers, signal: conn.signal, cache: "no-store" });
                    if (!resp.ok) {
                        const err = await errorOfResponse(resp);
                        if (!reconnectable(resp.status))
                            throw err;
                        this.transport.failover(resp.headers.get("framecast-leader"), base);
                        broke = err;
                    }
                    else if (!resp.body) {
                        throw malformed("the event stream has no body");
                    }
                    else {
                        const reader = resp.body.getReader();
                        const decoder = new TextDecoder();
                        const parser = new SseParser(this.cursor);
                        read: for (;;) {
                            const { done, value } = await reader.read();
                            if (done)
                                break;
                            arm();
                            for (const ev of parser.push(decoder.decode(value, { stream: true }))) {
                                if (ev.event === "frame") {
                                    const frame = this.frameOf(ev.data, ev.id);
                                    this.cursor = frame.cursor;
                                    yield frame;
                                    if (stop.aborted)
                                        return; // closed while the consumer held this frame
                                }
                                else if (ev.event === "snapshot") {
                                    const s = record(parseJson(ev.data), "snapshot");
                                    this.snapshotOffset = toBigInt(s["snapshot_offset"], "snapshot_offset");
                                    this.epoch = toBigInt(s["epoch"], "epoch");
                                    if (ev.id !== undefined)
                                        this.cursor = ev.id;
                                    failures = 0; // the server took us back: the next break starts the backoff over
                                }
                                else if (ev.event === "error") {
                                    const err = errorOfEvent(ev.data);
                                    if (err.code !== "UNAVAILABLE")
                                        throw err;
                                    broke = err; // e.g. the node shutting down
                                    this.transport.failover(undefined, base);
                                    break read;
                                }
                                // Other event types are for newer clients: skip them.
                            }
                        }
                        if (broke === undefined) {
                            broke = new Error("the event stream ended");
                            this.transport.failover(undefined, base);
                        }
                    }
                }
                catch (e) {
                    if (stop.aborted)
                        return;
                    if (e instanceof FramecastError)
                        throw e;
                    broke = e; // a network error, or the idle timer
                    this.transport.failover(undefined, base);
                }
                finally {
                    clearTimeout(idle);
                    stop.removeEventListener("abort", onStop);
                    conn.abort(); // cancels the body of a stream left early
                }
                if (stop.aborted)
                    return;
                if (failures >= this.maxReconnects) {
                    const why = broke instanceof Error ? broke.message : String(broke);
                    const status = broke instanceof FramecastError ? broke.status : 0;
                    throw new FramecastError("UNAVAILABLE", status, `subscription lost after ${failures} reconnects: ${why}`, {
                        cause: broke,
                    });
                }
                try {
                    await sleep(delayMs(this.transport.backoff, failures++), stop);
                }
                catch {
                    return; // closed while waiting
                }
                this.reconnects++;
            }
        }
        finally {
            this.userSignal?.removeEventListener("abort", this.onUserAbort);
        }
    }
    /** A `frame` event: its data, and its id as the frame's cursor. */
    frameOf(data, id) {
        const v = parseJson(data);
        const f = record(v, "frame");
        if (id === undefined)
            throw malformed("a frame event without an id");
        return { ...frameOf(v), live: f["live"] === true, cursor: id };
    }
}
/** The JSON of an event's data. */
function parseJson(data) {
    try {
        return JSON.parse(data);
    }
    catch {
        throw malformed(`event data is not JSON: ${data.slice(0, 200)}`);
    }
}
//# sourceMappingURL=subscription.js.map