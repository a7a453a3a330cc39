/**
 * The one error type of the client: what the server refused (its `code` and HTTP status),
 * or why no answer came (`UNAVAILABLE` with status 0 once retries are spent).
 */
/** A call the server refused, a stream it ended, or a server that could not be reached. */
export declare class FramecastError extends Error {
    /** The upper-case gRPC code name: `INVALID_ARGUMENT`, `UNAUTHENTICATED`, `UNAVAILABLE`, … */
    readonly code: string;
    /** The HTTP status; for an error inside an open stream, the status its code maps to; 0 when no response came at all. */
    readonly status: number;
    constructor(code: string, status: number, message: string, options?: {
        cause?: unknown;
    });
}
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