/**
 * Waiting between attempts: exponential backoff with jitter, and a sleep that an
 * `AbortSignal` cuts short.
 */
import type { BackoffOptions } from "./types.js";
/** The backoff settings with their defaults filled in. */
export interface Backoff {
    initialMs: number;
    maxMs: number;
}
/** Defaults: 100 ms, doubling, at most 5 s. */
export declare function backoffOf(o: BackoffOptions | undefined): Backoff;
/**
 * The delay before retry number `attempt` (0 for the first retry): the doubled delay,
 * capped, of which a random half is taken off ("equal jitter") so that many clients that
 * lost the same server do not come back in step, while none retries in a tight loop.
 */
export declare function delayMs(b: Backoff, attempt: number): number;
/** Resolves after `ms`, or rejects with the signal's reason as soon as it aborts. */
export declare function sleep(ms: number, signal?: AbortSignal): Promise<void>;
/** Why `signal` aborted: its reason, or an `AbortError`. */
export declare function abortReason(signal: AbortSignal): unknown;
//# sourceMappingURL=backoff.d.ts.map