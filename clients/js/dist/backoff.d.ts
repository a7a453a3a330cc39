/**
 * Waiting between attempts: exponential backoff with jitter, a sleep that an `AbortSignal`
 * cuts short, and the bounds every timer option is held to.
 */
import type { BackoffOptions } from "./types.js";
/**
 * A timer's delay is a signed 32-bit count of ms in every runtime: a longer one (or
 * `Infinity`) is not refused but fires at once (Node clamps it to 1 ms), so a bound past it
 * would end every attempt or connection as soon as it starts.
 */
export declare const MAX_TIMER_MS = 2147483647;
/** A timer option (`name`), checked: a whole number of ms a timer can wait. */
export declare function timerMs(name: string, ms: unknown): number;
/** The backoff settings with their defaults filled in. */
export interface Backoff {
    initialMs: number;
    maxMs: number;
}
/**
 * Defaults: 100 ms, doubling, at most 5 s. A first delay under 1 ms is refused: every delay
 * would be (about) 0, and a subscription to a dead node would reconnect in a busy loop; a
 * largest delay past a timer's bound would not wait at all.
 */
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