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
export function backoffOf(o: BackoffOptions | undefined): Backoff {
  const initialMs = o?.initialMs ?? 100;
  const maxMs = o?.maxMs ?? 5000;
  if (!(initialMs >= 0) || !(maxMs >= initialMs)) {
    throw new RangeError(`backoff: need 0 <= initialMs <= maxMs, got ${initialMs} and ${maxMs}`);
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
