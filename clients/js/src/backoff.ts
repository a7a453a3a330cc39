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
export const MAX_TIMER_MS = 2_147_483_647;

/** A timer option (`name`), checked: a whole number of ms a timer can wait. */
export function timerMs(name: string, ms: unknown): number {
  if (!(typeof ms === "number" && Number.isInteger(ms) && ms > 0 && ms <= MAX_TIMER_MS)) {
    throw new TypeError(`Framecast: ${name} must be a whole number of ms from 1 to ${MAX_TIMER_MS}, got ${String(ms)}`);
  }
  return ms;
}

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
export function backoffOf(o: BackoffOptions | undefined): Backoff {
  const initialMs = o?.initialMs ?? 100;
  const maxMs = o?.maxMs ?? 5000;
  if (typeof initialMs !== "number" || typeof maxMs !== "number") {
    throw new TypeError(`backoff: initialMs and maxMs are numbers of ms, got ${typeof initialMs} and ${typeof maxMs}`);
  }
  if (!(initialMs >= 1 && maxMs >= initialMs && maxMs <= MAX_TIMER_MS)) {
    throw new RangeError(`backoff: need 1 <= initialMs <= maxMs <= ${MAX_TIMER_MS}, got ${initialMs} and ${maxMs}`);
  }
  return { initialMs, maxMs };
}

/**
 * The delay before retry number `attempt` (0 for the first retry): the doubled delay,
 * capped, of which a random half is taken off ("equal jitter") so that many clients that
 * lost the same server do not come back in step, while none retries in a tight loop.
 */
export function delayMs(b: Backoff, attempt: number): number {
  const d = Math.min(b.maxMs, b.initialMs * 2 ** Math.min(attempt, 30));
  return d / 2 + Math.random() * (d / 2);
}

/** Resolves after `ms`, or rejects with the signal's reason as soon as it aborts. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(abortReason(signal));
      return;
    }
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(abortReason(signal!));
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/** Why `signal` aborted: its reason, or an `AbortError`. */
export function abortReason(signal: AbortSignal): unknown {
  return signal.reason ?? new DOMException("This operation was aborted", "AbortError");
}
