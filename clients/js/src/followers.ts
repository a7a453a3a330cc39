/**
 * `readFrom: "followers"`: the node each connect of a subscription goes to. Every node of a
 * cluster serves subscriptions with the same cursors and delivers only committed frames
 * (API.md, "Cluster"), so a follower serves a reader exactly as the leader would; spreading
 * readers over the followers leaves the leader to the writes. Before each connect the
 * cluster is asked anew (`GET /v1/cluster`, on the client's normal route), so a follower that
 * died or fell out of sync is left out as soon as the cluster knows.
 */

import { abortReason } from "./backoff.js";
import { normaliseUrl } from "./transport.js";
import type { ClusterInfo, ReadFrom } from "./types.js";

/** How long the cluster call before a connect may take; past it the connect takes the normal route. */
const CLUSTER_TIMEOUT_MS = 5_000;

/** The `readFrom` option, checked: a bad value is refused when the client is built, as other bad options are. */
export function readFromOf(v: unknown): ReadFrom {
  if (v === undefined) return "leader";
  if (v === "leader" || v === "followers") return v;
  const shown = typeof v === "string" ? JSON.stringify(v) : `a value of type ${v === null ? "null" : typeof v}`;
  const why = `Framecast: readFrom must be "leader" or "followers", not ${shown}`;
  if (typeof v !== "string") throw new TypeError(why);
  throw new RangeError(why);
}

/** A follower a subscription may read from. */
export interface Follower {
  id: string;
  /** Its HTTP door, normalised as the client's own URLs are. */
  url: string;
  inSync: boolean;
}

/** Where the next connect goes: a follower, and the leader to ask instead if the follower refuses. */
export interface Pick {
  /** The follower's base URL. */
  url: string;
  /** The leader's base URL, as the same cluster answer named it (undefined: it named none with an HTTP door). */
  leader: string | undefined;
}

/** The base URL of the cluster's leader, when it has an HTTP door. */
export function leaderOf(info: ClusterInfo): string | undefined {
  const l = info.nodes.find((n) => n.leader && n.httpAddress !== "");
  if (l === undefined) return undefined;
  try {
    return normaliseUrl(l.httpAddress);
  } catch {
    return undefined;
  }
}

/**
 * The followers a subscription may read from, sorted by node id: online, not the leader,
 * with an HTTP door (an address that is not an http(s) URL is left out).
 */
export function followersOf(info: ClusterInfo): Follower[] {
  const usable = info.nodes.flatMap((n) => {
    if (!n.online || n.leader || n.httpAddress === "") return [];
    try {
      return [{ id: n.id, url: normaliseUrl(n.httpAddress), inSync: n.inSync }];
    } catch {
      return [];
    }
  });
  return usable.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
}

/**
 * Picks the follower of each connect, round robin over the followers sorted by id, from a
 * random place per client (so that many clients started together do not all begin with the
 * same follower). One per client, shared by its subscriptions.
 */
export class FollowerPicker {
  private readonly cluster: (signal: AbortSignal) => Promise<ClusterInfo>;
  /** The next turn of the round robin; random at the first pick. */
  private turn: number | undefined;

  /** `cluster` asks the cluster on the client's normal route. */
  constructor(cluster: (signal: AbortSignal) => Promise<ClusterInfo>) {
    this.cluster = cluster;
  }

  /**
   * The follower the next connect goes to, or undefined for the normal route (the cluster
   * call failed, e.g. a server without it, or there is no follower: a single node).
   * `avoid` is the node whose stream just broke: left out when another follower is there;
   * when it is the only one, the normal route is taken. Never throws.
   */
  async pick(avoid: string | undefined, stop: AbortSignal): Promise<Pick | undefined> {
    if (stop.aborted) return undefined;
    const ask = new AbortController();
    const onStop = (): void => ask.abort(abortReason(stop));
    stop.addEventListener("abort", onStop, { once: true });
    const late = new Error(`GET /v1/cluster took over ${CLUSTER_TIMEOUT_MS} ms`);
    const timer = setTimeout(() => ask.abort(late), CLUSTER_TIMEOUT_MS);
    (timer as unknown as { unref?: () => void }).unref?.();
    let info: ClusterInfo;
    try {
      info = await this.cluster(ask.signal);
    } catch {
      return undefined; // silently: the normal route serves the same stream
    } finally {
      clearTimeout(timer);
      stop.removeEventListener("abort", onStop);
    }
    // In-sync ones only: a follower out of the in-sync set refuses reads, naming the leader.
    const followers = followersOf(info).filter((f) => f.inSync && f.url !== avoid);
    if (followers.length === 0) return undefined;
    this.turn ??= Math.floor(Math.random() * followers.length);
    return { url: followers[this.turn++ % followers.length]!.url, leader: leaderOf(info) };
  }
}
