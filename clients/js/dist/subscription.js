/**
 * A subscription: Server-Sent Events read through `fetch`'s streaming body, reconnecting
 * by itself. Each reconnect sends `Last-Event-ID` = the id of the last event it handed
 * out (a cursor token), so the server resumes exactly after it: no gap, no duplicate, on
 * whichever node of a cluster it reconnects to (the client's current one, or with
 * `readFrom: "followers"` a follower picked anew for each connect).
 */
import { abortReason, delayMs, sleep, timerMs } from "./backoff.js";
import { errorOfEvent, errorOfResponse, FramecastError } from "./errors.js";
import { SseParser } from "./sse.js";
import { certificateRefused, Hops, Route } from "./transport.js";
import { frameOf, integerText, isVisibleAscii, malformed, record, toBigInt } from "./wire.js";
/**
 * A refused subscription that is worth asking again: a timeout, or a node (or a proxy in
 * front of it) unavailable. As in the gRPC clients, `429` (RESOURCE_EXHAUSTED: too many
 * subscribers) and `500` (INTERNAL) are final: asking again would not change the answer.
 * (Except a `429` once a stream was open, see {@link BUSY_RETRY_MS}.)
 */
function reconnectable(status) {
    return status === 408 || status === 502 || status === 503 || status === 504;
}
/**
 * How long, ms, a subscription that already had a stream open goes on reconnecting while
 * the server answers `429` (too many subscribers). Its own old stream, on a connection that died without a close (half-open), still holds a
 * subscriber slot until the server notices (its keepalive: about 40 s). Each such reconnect
 * backs off and counts against `maxReconnects` like any other; past this (counted from the
 * first `429` since a stream was last accepted), the `429` is final.
 */
const BUSY_RETRY_MS = 120_000;
/**
 * How many times a subscription whose token expired under its stream asks again when the
 * fresh connect is refused `401`: the token function may hand back the same token, expired
 * by the server's clock but not yet by the local one (clock skew), or a token source may lag.
 */
const MAX_REAUTH_RETRIES = 3;
/** The backoff of those retries (at least this, or the client's own when longer): ~0.5–1 s, 1–2 s, 2–4 s. */
const REAUTH_BACKOFF = { initialMs: 1000, maxMs: 4000 };
/** How long a stream may stay silent by default, ms: three of the server's 15 s pings. */
const DEFAULT_IDLE_TIMEOUT_MS = 45_000;
/**
 * The cursor `resume` gives, checked. `null`, `undefined` and `""` are no cursor (the
 * stream starts at `from`): what a store answers when nothing was saved yet
 * (`localStorage.getItem`), which would otherwise go out as the token `"null"` and be
 * refused. A cursor is sent as `Last-Event-ID`: a value `fetch` refuses would pass for a
 * network error and reconnect for ever, so anything but URL-safe text is refused here.
 */
function resumeOf(resume) {
    if (resume === undefined || resume === null || resume === "")
        return undefined;
    if (typeof resume !== "string")
        throw new TypeError(`resume must be a cursor token (a string), not ${typeof resume}`);
    if (!isVisibleAscii(resume)) {
        throw new FramecastError("INVALID_ARGUMENT", 400, "resume is not a cursor token (visible ASCII)");
    }
    return resume;
}
/** `maxReconnects`, checked: a count, or `Infinity` (the default) for never giving up. */
function maxReconnectsOf(n) {
    if (n === undefined)
        return Infinity;
    if (typeof n !== "number")
        throw new TypeError(`maxReconnects must be a number, not ${typeof n}`);
    if (!(n === Infinity || (Number.isInteger(n) && n >= 0))) {
        throw new RangeError(`maxReconnects must be a non-negative integer or Infinity, not ${n}`);
    }
    return n;
}
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
    /** With `readFrom: "followers"`: picks the node of each connect. */
    followers;
    /** The node of the current connection (see {@link node}). */
    at;
    path;
    from;
    maxReconnects;
    idleTimeoutMs;
    stop = new AbortController();
    userSignal;
    onUserAbort = () => this.close();
    frames;
    /** @internal Made by `Framecast.subscribe`. */
    constructor(transport, path, opts, followers) {
        this.transport = transport;
        this.followers = followers;
        this.path = path;
        this.from = opts.from === undefined ? undefined : integerText("from", opts.from);
        this.cursor = resumeOf(opts.resume);
        this.maxReconnects = maxReconnectsOf(opts.maxReconnects);
        this.idleTimeoutMs = timerMs("idleTimeoutMs", opts.idleTimeoutMs ?? DEFAULT_IDLE_TIMEOUT_MS);
        this.userSignal = opts.signal;
        if (opts.signal?.aborted)
            this.stop.abort();
        else
            opts.signal?.addEventListener("abort", this.onUserAbort, { once: true });
        this.frames = this.run();
    }
    /**
     * The base URL of the node this subscription reads from now (e.g. `http://10.0.0.2:7071`):
     * the node of its open connection, or of the one it is opening. With `readFrom:
     * "followers"` a follower's HTTP address as the cluster advertises it (or the client's
     * current node, `fc.url`, when it fell back); else the client's current node. Undefined
     * until the first connect, which the first `next()` starts. Changes when it reconnects.
     */
    get node() {
        return this.at;
    }
    /** Ends the subscription: the stream is cancelled and the iterator finishes. */
    close() {
        // Here, not only when the iterator finishes: a consumer that closes while holding a
        // frame (or before iterating) never resumes it, and the listener would keep this
        // subscription alive as long as the caller's signal.
        this.userSignal?.removeEventListener("abort", this.onUserAbort);
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
        /** Reconnects since the last frame: the backoff's step, and what `maxReconnects` bounds. */
        let failures = 0;
        /** The node whose stream broke last: the next follower picked is another, if there is one. */
        let broken;
        /**
         * A follower refused the stream: the next connect asks the leader (as the cluster named
         * it; else the normal route) at once, and its answer is final.
         */
        let refusedByFollower = false;
        /** The leader's base URL, as the cluster named it at the last pick. */
        let leader;
        /** The normal route: the client's current node, or a leader a node named. */
        const route = new Route(this.transport);
        /** The hints of the normal route followed at once in a row (bounded, as for a call). */
        const hops = new Hops();
        /** The normal route's node named the leader: the next connect goes there at once. */
        let toLeaderAtOnce = false;
        /** A stream of this subscription was accepted (2xx) at least once: a `429` is then its own old stream's. */
        let opened = false;
        /** When the first `429` since the last accepted stream came, ms since the epoch. */
        let busySince;
        /**
         * The token expired under a stream and no stream was accepted since: a `401` is then
         * retried (at most {@link MAX_REAUTH_RETRIES} times in a row); this counts them.
         */
        let reauth;
        const reauthBackoff = {
            initialMs: Math.max(this.transport.backoff.initialMs, REAUTH_BACKOFF.initialMs),
            maxMs: Math.max(this.transport.backoff.maxMs, REAUTH_BACKOFF.maxMs),
        };
        try {
            while (!stop.aborted) {
                /**
                 * The node of this connection: a follower, the leader after a follower's refusal, or
                 * the normal route. A break on the normal route moves the client on from it (reads
                 * work on every node, with the same cursors); a follower is left by the next pick.
                 */
                let base;
                let follower;
                if (refusedByFollower) {
                    refusedByFollower = false;
                    base = leader ?? route.next();
                }
                else {
                    const pick = this.followers ? await this.followers.pick(broken, stop) : undefined;
                    if (stop.aborted)
                        return;
                    follower = pick?.url;
                    leader = pick?.leader;
                    base = follower ?? route.next();
                }
                this.at = base;
                /** This connection broke: the next pick avoids its node; off a follower, the client moves on too. */
                const moveOn = () => {
                    broken = base;
                    if (follower === undefined)
                        route.failed(base);
                };
                // Before the try: a token function that fails is the caller's error, not the network's.
                // Raced against close() and the signal: a slow token source does not hold them up.
                let headers;
                try {
                    headers = await this.transport.headers({ Accept: "text/event-stream", "Last-Event-ID": this.cursor }, stop);
                }
                catch (e) {
                    if (stop.aborted)
                        return;
                    throw e;
                }
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
                /**
                 * The token expired under this stream and the token function may give a fresh one:
                 * the next connect goes at once, not counted as a failure. A refusal of the fresh
                 * token (401) is asked again after a wait, {@link MAX_REAUTH_RETRIES} times at most
                 * (the token function asked each time); then it is final.
                 */
                let tokenExpired = false;
                /** The connect after an expiry was refused `401`: asked again after a wait, a bounded number of times. */
                let reauthorise = false;
                try {
                    arm();
                    const url = this.transport.url(this.path, { from: this.from }, base);
                    const resp = await this.transport.fetch(url, { headers, signal: conn.signal, cache: "no-store" });
                    if (!resp.ok) {
                        const err = await errorOfResponse(resp);
                        const hint = resp.status === 503 ? resp.headers.get("framecast-leader") : null;
                        if (!reconnectable(resp.status) || (hint && follower !== undefined)) {
                            // A follower may refuse what the leader serves: a topic it does not hold yet
                            // (only the leader creates topics: it answers 503 naming the leader), or a
                            // cursor of an epoch it has not seen.
                            if (follower === undefined) {
                                route.answered(base); // a final answer: a leader a hint named is the client's node now
                                if (resp.status === 429 && opened && Date.now() - (busySince ??= Date.now()) < BUSY_RETRY_MS) {
                                    // Too many subscribers, once this subscription had a stream: likely its own
                                    // old one, still counted on a connection that died half-open. Backs off and
                                    // asks again (counted as a failure, below), for a while.
                                }
                                else if (resp.status === 401 &&
                                    reauth !== undefined &&
                                    reauth < MAX_REAUTH_RETRIES &&
                                    this.transport.refreshesToken) {
                                    reauthorise = true; // after an expiry: the token function is asked again, after a wait
                                }
                                else {
                                    throw err;
                                }
                            }
                            else {
                                refusedByFollower = true;
                            }
                        }
                        else {
                            const named = follower === undefined ? this.transport.leaderOf(hint, base) : undefined;
                            if (named !== undefined && named !== base) {
                                // A follower on the normal route names the leader (it lacks the topic): there,
                                // at once, like a refused call; a chain of hints is cut and backs off.
                                broken = base;
                                route.hint(named);
                                toLeaderAtOnce = hops.follow(base, named);
                            }
                            else {
                                moveOn();
                            }
                        }
                        broke = err;
                    }
                    else if (!resp.body) {
                        throw malformed("the event stream has no body");
                    }
                    else {
                        // Accepted: a leader a hint named is the client's node now.
                        if (follower === undefined)
                            route.answered(base);
                        hops.reset();
                        opened = true;
                        busySince = undefined;
                        reauth = undefined;
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
                                    // A frame, not the stream's opening, is progress: a node that accepts
                                    // streams and drops them at once must still exhaust maxReconnects.
                                    failures = 0;
                                    // The idle timer measures the server's silence, not the consumer's pace:
                                    // stopped while the consumer holds the frame, started again after.
                                    clearTimeout(idle);
                                    yield frame;
                                    if (stop.aborted)
                                        return; // closed while the consumer held this frame
                                    arm();
                                }
                                else if (ev.event === "snapshot") {
                                    const s = record(parseJson(ev.data), "snapshot");
                                    this.snapshotOffset = toBigInt(s["snapshot_offset"], "snapshot_offset");
                                    this.epoch = toBigInt(s["epoch"], "epoch");
                                    if (ev.id !== undefined)
                                        this.cursor = ev.id;
                                }
                                else if (ev.event === "error") {
                                    const err = errorOfEvent(ev.data);
                                    if (err.code === "UNAUTHENTICATED" && this.transport.refreshesToken) {
                                        // The token expired: the token function gives the next connect a fresh
                                        // one, on the same node, from the cursor (no gap, no duplicate).
                                        tokenExpired = true;
                                    }
                                    else if (err.code !== "UNAVAILABLE") {
                                        throw err;
                                    }
                                    else {
                                        moveOn(); // e.g. the node shutting down
                                    }
                                    broke = err;
                                    break read;
                                }
                                // Other event types are for newer clients: skip them.
                            }
                        }
                        if (broke === undefined) {
                            broke = new Error("the event stream ended");
                            moveOn();
                        }
                    }
                }
                catch (e) {
                    if (stop.aborted)
                        return;
                    if (e instanceof FramecastError)
                        throw e;
                    const tls = certificateRefused(base, e);
                    if (tls)
                        throw tls;
                    broke = e; // a network error, or the idle timer
                    moveOn();
                }
                finally {
                    clearTimeout(idle);
                    stop.removeEventListener("abort", onStop);
                    conn.abort(); // cancels the body of a stream left early
                }
                if (stop.aborted)
                    return;
                if (refusedByFollower)
                    continue; // at once: not a break, a question for the leader
                if (toLeaderAtOnce) {
                    toLeaderAtOnce = false;
                    continue; // at once, to the leader the node named
                }
                if (tokenExpired) {
                    reauth = 0;
                    this.reconnects++;
                    continue; // at once: the node is fine, the token was not
                }
                if (reauthorise) {
                    try {
                        await sleep(delayMs(reauthBackoff, reauth ?? 0), stop);
                    }
                    catch {
                        return; // closed while waiting
                    }
                    reauth = (reauth ?? 0) + 1;
                    this.reconnects++;
                    continue;
                }
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