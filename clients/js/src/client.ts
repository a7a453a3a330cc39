/**
 * `Framecast`: one object per server (or cluster) whose methods are the HTTP door's calls
 * (API.md, "Two front doors"): publish, subscribe, history, topics, broadcast, cluster.
 */

import { FramecastError } from "./errors.js";
import { FollowerPicker, readFromOf } from "./followers.js";
import { Subscription } from "./subscription.js";
import { Transport } from "./transport.js";
import type {
  BroadcastAck,
  BroadcastOptions,
  ClusterInfo,
  FramecastOptions,
  HistoryOptions,
  HistoryPage,
  PublishAck,
  PublishOptions,
  ReadFrom,
  SubscribeOptions,
  TopicInfo,
  TopicSettings,
} from "./types.js";
import { ackOf, base64Encode, clusterOf, frameOf, integerText, isVisibleAscii, malformed, payloadBytes, record, toBigInt, topicOf } from "./wire.js";

/** Retries of a call after a network error or a 502, 503 or 504, unless told otherwise (about 16 s of backoff). */
const DEFAULT_RETRIES = 8;

/** The longest idempotency key the server takes, in bytes (API.md, "Idempotent publish"). */
const MAX_KEY_BYTES = 128;

/**
 * A framecast client over HTTP: works in browsers and in Node 20+, on their own `fetch`
 * (Node uses the `undici` package only for the TLS options).
 */
export class Framecast {
  private readonly transport: Transport;
  private readonly readMode: ReadFrom;
  /** With `readFrom: "followers"`: the round robin over followers, shared by this client's subscriptions. */
  private readonly followers: FollowerPicker | undefined;

  /** Throws a `TypeError` or `RangeError` on a bad option (no url, a url that is not http(s), a bad `readFrom`, …). */
  constructor(options: FramecastOptions) {
    this.transport = new Transport(options);
    this.readMode = readFromOf((options as { readFrom?: unknown }).readFrom);
    const transport = this.transport;
    this.followers =
      this.readMode === "followers"
        ? // One attempt per node (as far as the client knows them), so a dead one is passed by;
          // past that the subscription takes the normal route rather than wait.
          new FollowerPicker((signal) => clusterCall(transport, Math.max(1, transport.urls.length - 1), signal))
        : undefined;
  }

  /** Where subscriptions read: `"leader"` (the default) or `"followers"`; see {@link FramecastOptions.readFrom}. */
  get readFrom(): ReadFrom {
    return this.readMode;
  }

  /** The node(s) this client talks to: those given, then leaders learned from `Framecast-Leader` hints. */
  get urls(): readonly string[] {
    return this.transport.urls;
  }

  /** The node requests go to now: the first one given, until it failed or a follower named the leader. */
  get url(): string {
    return this.transport.base();
  }

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
  async publish(topic: string, payload: string | Uint8Array, options: PublishOptions): Promise<PublishAck> {
    const body = payloadBytes(payload);
    const key = idempotencyKeyOf(options.idempotencyKey);
    const query: Record<string, string | undefined> = { seq_no: integerText("seqNo", options.seqNo) };
    if (options.timestamp !== undefined) query["timestamp"] = integerText("timestamp", options.timestamp, true);
    const answer = await this.transport.request({
      method: "POST",
      path: `${topicPath(topic)}/frames`,
      query,
      headers: { "Content-Type": "application/octet-stream", "Idempotency-Key": key || undefined },
      body,
      retries: retriesOf(options.retries),
      idempotent: key !== "",
      key,
      signal: options.signal,
    });
    return ackOf(answer);
  }

  /**
   * Subscribes to `topic`: first its stored frames with `seqNo >= from` in order-key order
   * (`live: false`), then new ones in offset order (`live: true`). Reconnects by itself
   * and resumes exactly after the last frame handed out. With `readFrom: "followers"` it
   * reads from a follower of the cluster (`sub.node` tells which). See {@link Subscription}.
   */
  subscribe(topic: string, options: SubscribeOptions = {}): Subscription {
    return new Subscription(this.transport, `${topicPath(topic)}/events`, options, this.followers);
  }

  /**
   * One page of `topic`'s history. The first page (no `after`) fixes a snapshot; pass its
   * `next` as `after` (with the same `from` and `reverse`) for the following page. Pages
   * never overlap and never skip.
   */
  async history(topic: string, options: HistoryOptions = {}): Promise<HistoryPage> {
    if (options.limit !== undefined && !(Number.isSafeInteger(options.limit) && options.limit > 0)) {
      throw new RangeError(`limit must be a positive integer, not ${options.limit}`);
    }
    const answer = await this.transport.request({
      method: "GET",
      path: `${topicPath(topic)}/history`,
      query: {
        from: options.from === undefined ? undefined : integerText("from", options.from),
        limit: options.limit === undefined ? undefined : String(options.limit),
        reverse: options.reverse ? "true" : undefined,
        after: options.after || undefined,
      },
      retries: DEFAULT_RETRIES,
      idempotent: true,
      signal: options.signal,
    });
    const page = record(answer, "history page");
    const frames = page["frames"] ?? [];
    if (!Array.isArray(frames)) throw malformed("history frames is not a list");
    return {
      frames: frames.map(frameOf),
      next: typeof page["next"] === "string" ? page["next"] : "",
      more: page["more"] === true,
      snapshotOffset: toBigInt(page["snapshot_offset"], "snapshot_offset"),
      epoch: toBigInt(page["epoch"], "epoch"),
    };
  }

  /** Every page of `topic`'s history from `options.after` (or the start) until `more` is false. */
  async *historyPages(topic: string, options: HistoryOptions = {}): AsyncGenerator<HistoryPage, void, undefined> {
    let after = options.after;
    for (;;) {
      const opts: HistoryOptions = { ...options };
      if (after === undefined) delete opts.after;
      else opts.after = after;
      const page = await this.history(topic, opts);
      yield page;
      if (!page.more) return;
      if (page.next === "") throw malformed("a history page with more=true and no next token");
      after = page.next;
    }
  }

  /** The topics this client's token may publish or subscribe to (all of them without auth, or for admin). */
  async topics(options: { signal?: AbortSignal } = {}): Promise<TopicInfo[]> {
    const answer = await this.transport.request({
      method: "GET",
      path: "/v1/topics",
      retries: DEFAULT_RETRIES,
      idempotent: true,
      signal: options.signal,
    });
    const list = record(answer, "topic list")["topics"] ?? [];
    if (!Array.isArray(list)) throw malformed("topics is not a list");
    return list.map(topicOf);
  }

  /**
   * The cluster as the node asked sees it (`GET /v1/cluster`): the term, the leader's
   * address, and every node with its HTTP address, roles and (the node asked) its topics'
   * positions. A single node answers a cluster of one: term 0, itself the leader. Any valid
   * token may ask; positions list only the topics it may see. Retried like {@link topics}.
   */
  async cluster(options: { signal?: AbortSignal } = {}): Promise<ClusterInfo> {
    return clusterCall(this.transport, DEFAULT_RETRIES, options.signal);
  }

  /** Creates `name` with `settings` (retention); `ALREADY_EXISTS` (409) when it exists. Needs `admin` under auth. */
  async createTopic(name: string, settings: TopicSettings = {}): Promise<TopicInfo> {
    const body: Record<string, string> = {};
    if (settings.retentionMaxAgeSeconds !== undefined) {
      body["retention_max_age_seconds"] = integerText("retentionMaxAgeSeconds", settings.retentionMaxAgeSeconds);
    }
    if (settings.retentionMaxBytes !== undefined) {
      body["retention_max_bytes"] = integerText("retentionMaxBytes", settings.retentionMaxBytes);
    }
    const answer = await this.transport.request({
      method: "PUT",
      path: topicPath(name),
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
      retries: DEFAULT_RETRIES,
      // Repeated like a read, as the gRPC clients do: the server answers a topic that exists
      // with these same settings as created, so a retry after a lost answer succeeds.
      idempotent: true,
    });
    return topicOf(answer);
  }

  /**
   * Deletes `name` and its frames, ending its open streams; `NOT_FOUND` (404) when missing.
   * Needs `admin` under auth. Sent again only when it surely did nothing (a follower's 503
   * naming the leader, a connection refused), as the gRPC clients do: a retry after a lost
   * answer, or after a 503 that came once the topic was gone, would report `NOT_FOUND`.
   */
  async deleteTopic(name: string): Promise<void> {
    await this.transport.request({
      method: "DELETE",
      path: topicPath(name),
      retries: DEFAULT_RETRIES,
      idempotent: false,
    });
  }

  /**
   * Appends the same frame to every topic in `topics` (names, or patterns matching existing
   * topics). Retried like {@link publish}, with one idempotency key for every attempt, so a
   * broadcast that failed part way is completed by the retry without duplicates. Like a
   * publish, a refusal after an attempt that broke rejects with `FATE_UNKNOWN`.
   */
  async broadcast(topics: readonly string[], payload: string | Uint8Array, options: BroadcastOptions): Promise<BroadcastAck> {
    const key = idempotencyKeyOf(options.idempotencyKey);
    const body: Record<string, unknown> = {
      topics: [...topics],
      seq_no: integerText("seqNo", options.seqNo),
      payload: base64Encode(payloadBytes(payload)),
      idempotency_key: key,
    };
    if (options.timestamp !== undefined) body["timestamp"] = integerText("timestamp", options.timestamp, true);
    const answer = await this.transport.request({
      method: "POST",
      path: "/v1/broadcast",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
      retries: retriesOf(options.retries),
      idempotent: key !== "",
      key,
      signal: options.signal,
    });
    const acks = record(answer, "broadcast ack")["acks"] ?? [];
    if (!Array.isArray(acks)) throw malformed("acks is not a list");
    return {
      acks: acks.map((a: unknown) => {
        const r = record(a, "topic ack");
        return { topic: typeof r["topic"] === "string" ? r["topic"] : "", ...ackOf(r["ack"] ?? {}) };
      }),
    };
  }
}

/** `GET /v1/cluster` on the normal route, a read: retried `retries` times after a network error or a 502, 503 or 504. */
async function clusterCall(transport: Transport, retries: number, signal: AbortSignal | undefined): Promise<ClusterInfo> {
  const answer = await transport.request({
    method: "GET",
    path: "/v1/cluster",
    retries,
    idempotent: true,
    signal,
  });
  return clusterOf(answer);
}

/** `/v1/topics/{topic}`; `""` is `default` (API.md). */
function topicPath(topic: string): string {
  if (typeof topic !== "string") throw new TypeError("topic must be a string");
  const name = topic === "" ? "default" : topic;
  // A URL parser would fold "." and ".." (even encoded) into the path: never a valid name anyway.
  if (/^(\.|%2e){1,2}$/i.test(name)) {
    throw new FramecastError("INVALID_ARGUMENT", 400, `invalid topic name ${JSON.stringify(topic)}`);
  }
  return `/v1/topics/${encodeURIComponent(name)}`;
}

/**
 * The idempotency key of a write: the one given, checked before anything is sent (a bad
 * header value would make `fetch` throw, and that would pass for a network error and be
 * retried), or a fresh one. A key is visible ASCII: a publish's travels as a header, and a
 * broadcast's is held to the same rule, so a key works the same in both.
 */
function idempotencyKeyOf(given: string | undefined): string {
  if (given === undefined) return newIdempotencyKey();
  if (typeof given !== "string") throw new TypeError(`idempotencyKey must be a string, not ${typeof given}`);
  if (!isVisibleAscii(given)) {
    const at = [...given].findIndex((c) => !isVisibleAscii(c));
    throw new FramecastError("INVALID_ARGUMENT", 400, `idempotency key: character ${at} is not visible ASCII (! to ~)`);
  }
  if (given.length > MAX_KEY_BYTES) {
    throw new FramecastError("INVALID_ARGUMENT", 400, `idempotency key of ${given.length} bytes: at most ${MAX_KEY_BYTES}`);
  }
  return given;
}

/** A retry count, checked. */
function retriesOf(n: number | undefined): number {
  if (n === undefined) return DEFAULT_RETRIES;
  if (!(Number.isInteger(n) && n >= 0)) throw new RangeError(`retries must be a non-negative integer, not ${n}`);
  return n;
}

/**
 * A fresh idempotency key: a random UUID (`crypto.randomUUID` exists in Node and in secure
 * browser contexts; elsewhere 16 bytes of `crypto.getRandomValues`, as hex).
 */
export function newIdempotencyKey(): string {
  const c = globalThis.crypto;
  if (typeof c?.randomUUID === "function") return c.randomUUID();
  if (typeof c?.getRandomValues === "function") {
    const b = c.getRandomValues(new Uint8Array(16));
    return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  }
  throw new FramecastError("FAILED_PRECONDITION", 0, "no crypto.getRandomValues: pass idempotencyKey yourself");
}
