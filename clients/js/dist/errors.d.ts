/**
 * The one error type of the client: what the server refused (its `code` and HTTP status),
 * or why no answer came (`UNAVAILABLE` with status 0 once retries are spent).
 */
/**
 * The code of a keyed write (publish, broadcast) that may or may not be stored, though the
 * server refused it: an earlier attempt broke before its answer, after the request may have
 * been stored, and the retry was refused for good. Not the refusal's code: that would say
 * "not stored", and a publish sent again under a new key would store the frame twice.
 */
export declare const FATE_UNKNOWN = "FATE_UNKNOWN";
/** A call the server refused, a stream it ended, or a server that could not be reached. */
export declare class FramecastError extends Error {
    /**
     * The upper-case gRPC code name: `INVALID_ARGUMENT`, `UNAUTHENTICATED`, `UNAVAILABLE`, …;
     * or the client's own `FATE_UNKNOWN` (see {@link FramecastError.refusal}).
     */
    readonly code: string;
    /** The HTTP status; for an error inside an open stream, the status its code maps to; 0 when no response came at all. */
    readonly status: number;
    /**
     * With `code: "FATE_UNKNOWN"`: the refusal that ended the call (`PERMISSION_DENIED`,
     * `UNAUTHENTICATED`, `NOT_FOUND`, …; also the error's `cause`, and `status` is its status).
     * A publish or broadcast fails so when an earlier attempt broke before its answer (a
     * network error, no answer within `callTimeoutMs`, a 502, 503 or 504 that says nothing of
     * what was written) and the retry was refused for good: the broken attempt may have stored
     * it, once at most (every attempt carried the same key). Sending it again with
     * {@link FramecastError.idempotencyKey}, once the refusal is cured and within the server's
     * dedup window, stores it at most once. Undefined for any other error.
     */
    readonly refusal: FramecastError | undefined;
    /** With `code: "FATE_UNKNOWN"`: the idempotency key every attempt carried (the one given, or the one the client made). */
    readonly idempotencyKey: string | undefined;
    constructor(code: string, status: number, message: string, options?: {
        cause?: unknown;
        refusal?: FramecastError;
        idempotencyKey?: string;
    });
}
/**
 * What a keyed write's final `refusal` becomes after an attempt that broke (see
 * {@link FATE_UNKNOWN}): `FATE_UNKNOWN`, the refusal attached. A refusal as malformed
 * (`INVALID_ARGUMENT`, 400 or 413) stays itself: the server checks that before writing, and
 * refuses the same request alike on every attempt, the broken one too.
 */
export declare function fateUnknown(refusal: FramecastError, idempotencyKey: string): FramecastError;
/** The code the server would name for `status` (`INTERNAL` for what it does not list). */
export declare function codeOfStatus(status: number): string;
/** The HTTP status a code name maps to (API.md's table); 500 for anything else. */
export declare function statusOfCode(code: string): number;
/** The error a non-2xx response carries: its JSON body `{code, message}`, else its status. */
export declare function errorOfResponse(resp: Response): Promise<FramecastError>;
/** The error an `event: error` of an open stream carries (`data: {"code","message"}`). */
export declare function errorOfEvent(data: string): FramecastError;
/** A plain JSON object. */
export declare function isRecord(v: unknown): v is Record<string, unknown>;
//# sourceMappingURL=errors.d.ts.map