/**
 * The client's public shapes. Every 64-bit figure (offsets, sequence numbers, timestamps,
 * epochs) is a `bigint`: the server's are unsigned 64-bit and a `number` would round them.
 */
/**
 * A token, or a function that returns the current one (called before every request and
 * reconnect, so it may refresh; a subscription whose token expires reconnects at once with
 * the next one). Visible ASCII, surrounding blanks trimmed; anything else is refused with
 * `INVALID_ARGUMENT` before a request is sent.
 */
export type TokenSource = string | (() => string | Promise<string>);
/** How transient failures are retried: exponential backoff with jitter. */
export interface BackoffOptions {
    /** First delay, milliseconds (default 100); at least 1, so that no retry loop runs without waiting. */
    initialMs?: number;
    /** Largest delay, milliseconds (default 5000); from `initialMs` to 2^31−1, the longest a timer waits. */
    maxMs?: number;
}
/** What a `Framecast` client is built from: `url` or `urls`, and the rest. */
export interface FramecastOptions {
    /**
     * The server's HTTP door (`--http-listen`), e.g. `http://127.0.0.1:7071`; or several
     * nodes of a cluster, as a list or separated by commas (`"http://a:7071,http://b:7071"`):
     * one that is unreachable or answers 503 is left for the next, and a write a follower
     * refuses goes at once to the leader its `Framecast-Leader` header names.
     */
    url?: string | readonly string[];
    /** The nodes of a cluster, as `url` takes them (give one of `url` and `urls`). */
    urls?: readonly string[];
    /**
     * A bearer token (`framecast token …`), sent as `Authorization: Bearer <token>`. Absent:
     * `$FRAMECAST_TOKEN` in Node, if set (as the CLI and the Python client do); none in a browser.
     */
    token?: TokenSource;
    /** The `fetch` to use (default: the global one). */
    fetch?: typeof fetch;
    /**
     * Node only: the CA to trust for `https://` nodes, as PEM text or its bytes
     * (`readFileSync("ca.pem")`), as the CLI's `--ca-cert` and the Python client's `ca_cert`.
     * Trusted in place of Node's bundled CAs. Absent: Node's own trust (its bundled CAs and
     * `NODE_EXTRA_CA_CERTS`). A browser uses its trust store (the option is refused there).
     */
    caCert?: string | Uint8Array;
    /**
     * Node only: a client certificate chain (PEM), for a server started with
     * `--tls-client-ca`; with `clientKey`.
     */
    clientCert?: string | Uint8Array;
    /** Node only: the private key (PEM) of `clientCert`. */
    clientKey?: string | Uint8Array;
    /** Backoff between retries and reconnects. */
    backoff?: BackoffOptions;
    /**
     * How long one attempt of a call (publish, history, topics, ...) may take, answer read
     * included, ms (default 30000, as the Python client's `call_timeout`): a node that
     * accepts the connection but never answers (paused, overloaded) costs an attempt, then
     * the call is retried as after a network error. Subscriptions have `idleTimeoutMs`.
     */
    callTimeoutMs?: number;
    /**
     * How long a call (publish, broadcast, history, topics, ...) may take with its retries,
     * counted from its first attempt, ms (default 60000, as the Rust and Python clients'
     * `max_elapsed`). Each attempt is bounded by what is left of it; once it is spent the call
     * fails with the last error (`UNAVAILABLE`). Keep it below the server's `--dedup-window`
     * (2 minutes by default): a retry of a publish sent later could be stored a second time.
     * Subscriptions have `maxReconnects`.
     */
    retryBudgetMs?: number;
    /**
     * Where subscriptions read (default `"leader"`). `"leader"`: on the node requests go to
     * (`fc.url`), as every other call. `"followers"`: each subscription, and each resume after
     * its stream broke, first asks the cluster (`GET /v1/cluster`) and opens the stream on one
     * of its online, in-sync followers, round robin, so that a cluster spreads its
     * readers and leaves the leader to writes; it falls back to `fc.url` when there is no
     * follower (a single node, a cluster call that fails). Writes and other calls are unchanged.
     */
    readFrom?: ReadFrom;
}
/**
 * Where a client's subscriptions read: `"leader"` (the node requests go to) or
 * `"followers"` (spread over the cluster's followers). See {@link FramecastOptions.readFrom}.
 */
export type ReadFrom = "leader" | "followers";
/** The options of one publish. */
export interface PublishOptions {
    /** The frame's sequence number (the first part of the order key). */
    seqNo: bigint | number;
    /** Nanoseconds since the Unix epoch; 0 or absent: the server's receive time. */
    timestamp?: bigint | number;
    /**
     * At most 128 visible ASCII characters (`!` to `~`; anything else is refused with
     * `INVALID_ARGUMENT` before a request is sent). A key the topic already stored within its
     * dedup window is not appended again: the first ack comes back with `duplicate: true`.
     * Absent: the client makes one, and sends the same for every retry of this call.
     * `""`: no deduplication; then an attempt is sent again only when it surely wrote nothing
     * (a follower's `503` naming the leader, a connection refused before anything was sent):
     * a network error after sending, a `503` that names no leader, a `502` or `504` is final.
     * With a key, a refusal of a retry after such a break rejects with code `FATE_UNKNOWN`
     * (stored or not, never twice; see `FramecastError.refusal`), not with the refusal.
     */
    idempotencyKey?: string;
    /**
     * How many times to retry after a network error, a 502, 503 or 504 (default 8), within the
     * client's `retryBudgetMs`. Following a follower's `Framecast-Leader` to the leader is not counted.
     */
    retries?: number;
    /** Stops waiting (and retrying); the publish may or may not have been stored. */
    signal?: AbortSignal;
}
/** What the server answers once a frame is durable. */
export interface PublishAck {
    /** The frame's offset in its topic (0, 1, 2, … in commit order). */
    offset: bigint;
    /** The stored timestamp (the server's receive time when none was given). */
    timestamp: bigint;
    /** True when the idempotency key was already stored: this is the first publish's ack. */
    duplicate: boolean;
}
/** A frame as stored: what a history page holds. */
export interface HistoryFrame {
    seqNo: bigint;
    timestamp: bigint;
    offset: bigint;
    payload: Uint8Array;
    /** The payload as text, when it is valid UTF-8. */
    text?: string;
}
/** A frame delivered by a subscription. */
export interface Frame extends HistoryFrame {
    /** False while replaying the frames stored before the subscription started, true after. */
    live: boolean;
    /** A cursor token: `subscribe(topic, { resume: cursor })` continues right after this frame. */
    cursor: string;
}
/** The options of a subscription. */
export interface SubscribeOptions {
    /** Only frames with `seqNo >= from` (default 0: all). */
    from?: bigint | number;
    /**
     * A cursor token (a frame's `cursor`): continue exactly after that frame. `null`,
     * `undefined` and `""` are no cursor (start at `from`), so a store's "nothing saved yet"
     * (`localStorage.getItem` answers `null`) can be passed as it is.
     */
    resume?: string | null | undefined;
    /** Ends the subscription: the iterator finishes without an error. */
    signal?: AbortSignal;
    /**
     * Give up (`UNAVAILABLE`) after this many reconnects in a row with no frame received
     * between them: a non-negative integer, or `Infinity` (the default: never). A stream that
     * opens and breaks again before its first frame is a failed reconnect too; a reconnect
     * with a fresh token is not counted.
     */
    maxReconnects?: number;
    /**
     * Reconnect when nothing (not even the server's 15 s ping) arrived for this long: a whole
     * number of ms from 1 to 2^31−1 (default 45000), as every timer option; the time the
     * consumer holds a frame does not count.
     */
    idleTimeoutMs?: number;
}
/** The options of one history page. */
export interface HistoryOptions {
    /** Only frames with `seqNo >= from` (default 0). */
    from?: bigint | number;
    /** Frames per page (server default 100, at most 10,000). */
    limit?: number;
    /** Newest first (descending order key). */
    reverse?: boolean;
    /** The previous page's `next`: the page after it (same `from` and `reverse`). */
    after?: string;
    /** Cancels the request. */
    signal?: AbortSignal;
}
/** One page of a topic's history, a slice of the frames stored before the first page's snapshot. */
export interface HistoryPage {
    /** In order-key order (`reverse`: descending). */
    frames: HistoryFrame[];
    /** Pass as `after` for the next page. */
    next: string;
    /** Whether another page follows. */
    more: boolean;
    /** The snapshot the first page fixed: every page holds only frames with `offset < snapshotOffset`. */
    snapshotOffset: bigint;
    /** The topic's epoch. */
    epoch: bigint;
}
/** A topic and its figures (`GET /v1/topics`). */
export interface TopicInfo {
    name: string;
    /** Random, non-zero, chosen at creation; a re-created topic has a new one. */
    epoch: bigint;
    frames: bigint;
    /** Stored record bytes, headers included. */
    bytes: bigint;
    firstOffset: bigint;
    nextOffset: bigint;
    minSeqNo: bigint;
    maxSeqNo: bigint;
    subscribers: number;
    segments: number;
    /** The largest lag among the topic's subscribers, when the server reports it. */
    subscriberMaxLagFrames?: bigint;
}
/** The settings of an explicitly created topic. */
export interface TopicSettings {
    /** Frames older than this may be removed (0 or absent: keep). */
    retentionMaxAgeSeconds?: bigint | number;
    /** Stored bytes above this may be removed (0 or absent: no limit). */
    retentionMaxBytes?: bigint | number;
}
/** The options of a broadcast. */
export interface BroadcastOptions {
    seqNo: bigint | number;
    /** Nanoseconds since the Unix epoch; 0 or absent: the server's receive time. */
    timestamp?: bigint | number;
    /** As for publish (also `""`); absent, the client makes one and reuses it for every retry, so a retry completes a broadcast that failed part way without duplicates. */
    idempotencyKey?: string;
    /** As for publish. */
    retries?: number;
    signal?: AbortSignal;
}
/** One topic's ack of a broadcast. */
export interface TopicAck extends PublishAck {
    topic: string;
}
/** What a broadcast answers: one ack per topic it wrote to. */
export interface BroadcastAck {
    acks: TopicAck[];
}
/** The cluster as the node asked sees it (`GET /v1/cluster`); a single node is a cluster of one, at term 0. */
export interface ClusterInfo {
    /** The leader key's revision in etcd: it grows with every new leader (0 for a single node). */
    term: bigint;
    /** The leader's gRPC address (`host:port`), `""` while there is none. */
    leader: string;
    /** The nodes it knows of, sorted by id: those registered in etcd, and itself (even while it is not). */
    nodes: NodeInfo[];
}
/** One node of a cluster. */
export interface NodeInfo {
    id: string;
    /** Its gRPC address (`host:port`). */
    address: string;
    /** Its HTTP door's URL (`http://host:port`), `""` when it has none. */
    httpAddress: string;
    /** It is the leader: the one node that takes writes. */
    leader: boolean;
    /** It is in the in-sync set: every acknowledged frame is durable on it. */
    inSync: boolean;
    /** It is registered in etcd (its lease is alive). */
    online: boolean;
    /** Its topics' positions, as far as the caller may see them; only the node asked lists its own (others: empty). */
    topics: TopicPosition[];
}
/** How far a node holds one topic. */
export interface TopicPosition {
    topic: string;
    /** The offset after the last frame durable on the node. */
    nextOffset: bigint;
    /** The commit point: frames below it are durable on every in-sync member; the node delivers only those. */
    commitOffset: bigint;
}
//# sourceMappingURL=types.d.ts.map