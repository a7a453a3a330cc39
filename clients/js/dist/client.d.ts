/**
 * `Framecast`: one object per server (or cluster) whose methods are the HTTP door's calls
 * (API.md, "Two front doors"): publish, subscribe, history, topics, broadcast, cluster.
 */
import { Subscription } from "./subscription.js";
import type { BroadcastAck, BroadcastOptions, ClusterInfo, FramecastOptions, HistoryOptions, HistoryPage, PublishAck, PublishOptions, ReadFrom, SubscribeOptions, TopicInfo, TopicSettings } from "./types.js";
/**
 * A framecast client over HTTP: works in browsers and in Node 20+, on their own `fetch`
 * (Node uses the `undici` package only for the TLS options).
 */
export declare class Framecast {
    private readonly transport;
    private readonly readMode;
    /** With `readFrom: "followers"`: the round robin over followers, shared by this client's subscriptions. */
    private readonly followers;
    /** Throws a `TypeError` or `RangeError` on a bad option (no url, a url that is not http(s), a bad `readFrom`, …). */
    constructor(options: FramecastOptions);
    /** Where subscriptions read: `"leader"` (the default) or `"followers"`; see {@link FramecastOptions.readFrom}. */
    get readFrom(): ReadFrom;
    /** The node(s) this client talks to: those given, then leaders learned from `Framecast-Leader` hints. */
    get urls(): readonly string[];
    /** The node requests go to now: the first one given, until it failed or a follower named the leader. */
    get url(): string;
    /**
     * Appends one frame to `topic` (created if missing, unless the server forbids it) and
     * resolves once it is durable. Retries network errors, 502, 503 and 504 with backoff
     * within the client's `retryBudgetMs`, sending the same idempotency key each time (one is
     * made when none is given), so a retry whose first attempt was in fact stored is answered
     * with that first ack (`duplicate: true`). Without a key (`""`) only what surely wrote
     * nothing is sent again (see {@link PublishOptions.idempotencyKey}).
     *
     * A refusal (`401`, `403`, `404`, …) rejects with that `FramecastError`, and the frame is
     * not stored; but when an earlier attempt broke before its answer (a network error, no
     * answer in time, a 502, 503 or 504 naming no leader and without `Framecast-Unwritten`),
     * that attempt may have stored it, so the refusal of the retry rejects with code
     * `FATE_UNKNOWN` instead: stored or not, never twice (`error.refusal` is the refusal,
     * `error.idempotencyKey` the key to send it again with). A `400` stays a `400`.
     */
    publish(topic: string, payload: string | Uint8Array, options: PublishOptions): Promise<PublishAck>;
    /**
     * Subscribes to `topic`: first its stored frames with `seqNo >= from` in order-key order
     * (`live: false`), then new ones in offset order (`live: true`). Reconnects by itself
     * and resumes exactly after the last frame handed out. With `readFrom: "followers"` it
     * reads from a follower of the cluster (`sub.node` tells which). See {@link Subscription}.
     */
    subscribe(topic: string, options?: SubscribeOptions): Subscription;
    /**
     * One page of `topic`'s history. The first page (no `after`) fixes a snapshot; pass its
     * `next` as `after` (with the same `from` and `reverse`) for the following page. Pages
     * never overlap and never skip.
     */
    history(topic: string, options?: HistoryOptions): Promise<HistoryPage>;
    /** Every page of `topic`'s history from `options.after` (or the start) until `more` is false. */
    historyPages(topic: string, options?: HistoryOptions): AsyncGenerator<HistoryPage, void, undefined>;
    /** The topics this client's token may publish or subscribe to (all of them without auth, or for admin). */
    topics(options?: {
        signal?: AbortSignal;
    }): Promise<TopicInfo[]>;
    /**
     * The cluster as the node asked sees it (`GET /v1/cluster`): the term, the leader's
     * address, and every node with its HTTP address, roles and (the node asked) its topics'
     * positions. A single node answers a cluster of one: term 0, itself the leader. Any valid
     * token may ask; positions list only the topics it may see. Retried like {@link topics}.
     */
    cluster(options?: {
        signal?: AbortSignal;
    }): Promise<ClusterInfo>;
    /** Creates `name` with `settings` (retention); `ALREADY_EXISTS` (409) when it exists. Needs `admin` under auth. */
    createTopic(name: string, settings?: TopicSettings): Promise<TopicInfo>;
    /**
     * Deletes `name` and its frames, ending its open streams; `NOT_FOUND` (404) when missing.
     * Needs `admin` under auth. Sent again only when it surely did nothing (a follower's 503
     * naming the leader, a connection refused), as the gRPC clients do: a retry after a lost
     * answer, or after a 503 that came once the topic was gone, would report `NOT_FOUND`.
     */
    deleteTopic(name: string): Promise<void>;
    /**
     * Appends the same frame to every topic in `topics` (names, or patterns matching existing
     * topics). Retried like {@link publish}, with one idempotency key for every attempt, so a
     * broadcast that failed part way is completed by the retry without duplicates. Like a
     * publish, a refusal after an attempt that broke rejects with `FATE_UNKNOWN`.
     */
    broadcast(topics: readonly string[], payload: string | Uint8Array, options: BroadcastOptions): Promise<BroadcastAck>;
}
/**
 * A fresh idempotency key: a random UUID (`crypto.randomUUID` exists in Node and in secure
 * browser contexts; elsewhere 16 bytes of `crypto.getRandomValues`, as hex).
 */
export declare function newIdempotencyKey(): string;
//# sourceMappingURL=client.d.ts.map