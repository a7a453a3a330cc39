/**
 * `readFrom: "followers"`: the node each connect of a subscription goes to. Every node of a
 * cluster serves subscriptions with the same cursors and delivers only committed frames
 * (API.md, "Cluster"), so a follower serves a reader exactly as the leader would; spreading
 * readers over the followers leaves the leader to the writes. Before each connect the
 * cluster is asked anew (`GET /v1/cluster`, on the client's normal route), so a follower that
 * died or fell out of sync is left out as soon as the cluster knows.
 */
import type { ClusterInfo, ReadFrom } from "./types.js";
/** The `readFrom` option, checked: a bad value is refused when the client is built, as other bad options are. */
export declare function readFromOf(v: unknown): ReadFrom;
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
export declare function leaderOf(info: ClusterInfo): string | undefined;
/**
 * The followers a subscription may read from, sorted by node id: online, not the leader,
 * with an HTTP door (an address that is not an http(s) URL is left out).
 */
export declare function followersOf(info: ClusterInfo): Follower[];
/**
 * Picks the follower of each connect, round robin over the followers sorted by id, from a
 * random place per client (so that many clients started together do not all begin with the
 * same follower). One per client, shared by its subscriptions.
 */
export declare class FollowerPicker {
    private readonly cluster;
    /** The next turn of the round robin; random at the first pick. */
    private turn;
    /** `cluster` asks the cluster on the client's normal route. */
    constructor(cluster: (signal: AbortSignal) => Promise<ClusterInfo>);
    /**
     * The follower the next connect goes to, or undefined for the normal route (the cluster
     * call failed, e.g. a server without it, or there is no follower: a single node).
     * `avoid` is the node whose stream just broke: left out when another follower is there;
     * when it is the only one, the normal route is taken. Never throws.
     */
    pick(avoid: string | undefined, stop: AbortSignal): Promise<Pick | undefined>;
}
//# sourceMappingURL=followers.d.ts.map