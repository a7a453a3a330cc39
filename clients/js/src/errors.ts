/**
 * The one error type of the client: what the server refused (its `code` and HTTP status),
 * or why no answer came (`UNAVAILABLE` with status 0 once retries are spent).
 */

/** HTTP status → the gRPC code name the server uses in its error bodies (API.md). */
const CODE_OF_STATUS: Readonly<Record<number, string>> = {
  400: "INVALID_ARGUMENT",
  401: "UNAUTHENTICATED",
  403: "PERMISSION_DENIED",
  404: "NOT_FOUND",
  408: "DEADLINE_EXCEEDED",
  409: "ALREADY_EXISTS",
  412: "FAILED_PRECONDITION",
  413: "INVALID_ARGUMENT",
  416: "OUT_OF_RANGE",
  429: "RESOURCE_EXHAUSTED",
  501: "UNIMPLEMENTED",
  // A proxy's answers for a node it cannot reach: UNAVAILABLE, as gRPC reads them.
  502: "UNAVAILABLE",
  503: "UNAVAILABLE",
  504: "UNAVAILABLE",
};

/** Code name → HTTP status, for errors that arrive inside a stream (`event: error`). */
const STATUS_OF_CODE: Readonly<Record<string, number>> = {
  INVALID_ARGUMENT: 400,
  UNAUTHENTICATED: 401,
  PERMISSION_DENIED: 403,
  NOT_FOUND: 404,
  ALREADY_EXISTS: 409,
  FAILED_PRECONDITION: 412,
  OUT_OF_RANGE: 416,
  RESOURCE_EXHAUSTED: 429,
  UNAVAILABLE: 503,
  DEADLINE_EXCEEDED: 504,
  UNIMPLEMENTED: 501,
  INTERNAL: 500,
};

/**
 * The code of a keyed write (publish, broadcast) that may or may not be stored, though the
 * server refused it: an earlier attempt broke before its answer, after the request may have
 * been stored, and the retry was refused for good. Not the refusal's code: that would say
 * "not stored", and a publish sent again under a new key would store the frame twice.
 */
export const FATE_UNKNOWN = "FATE_UNKNOWN";

/** A call the server refused, a stream it ended, or a server that could not be reached. */
export class FramecastError extends Error {
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

  constructor(
    code: string,
    status: number,
    message: string,
    options?: { cause?: unknown; refusal?: FramecastError; idempotencyKey?: string },
  ) {
    super(message, options && "cause" in options ? { cause: options.cause } : undefined);
    this.name = "FramecastError";
    this.code = code;
    this.status = status;
    this.refusal = options?.refusal;
    this.idempotencyKey = options?.idempotencyKey;
  }
}

/**
 * What a keyed write's final `refusal` becomes after an attempt that broke (see
 * {@link FATE_UNKNOWN}): `FATE_UNKNOWN`, the refusal attached. A refusal as malformed
 * (`INVALID_ARGUMENT`, 400 or 413) stays itself: the server checks that before writing, and
 * refuses the same request alike on every attempt, the broken one too.
 */
export function fateUnknown(refusal: FramecastError, idempotencyKey: string): FramecastError {
  if (refusal.code === "INVALID_ARGUMENT") return refusal;
  return new FramecastError(
    FATE_UNKNOWN,
    refusal.status,
    `stored or not (never twice): an attempt broke before its answer, and the retry was refused: ${refusal.code}: ${refusal.message}`,
    { cause: refusal, refusal, idempotencyKey },
  );
}

/** The code the server would name for `status` (`INTERNAL` for what it does not list). */
export function codeOfStatus(status: number): string {
  return CODE_OF_STATUS[status] ?? (status >= 500 ? "INTERNAL" : "UNKNOWN");
}

/** The HTTP status a code name maps to (API.md's table); 500 for anything else. */
export function statusOfCode(code: string): number {
  return STATUS_OF_CODE[code] ?? 500;
}

/** The error a non-2xx response carries: its JSON body `{code, message}`, else its status. */
export async function errorOfResponse(resp: Response): Promise<FramecastError> {
  let text = "";
  try {
    text = await resp.text();
  } catch {
    // The body broke off: the status alone still says what happened.
  }
  let code = codeOfStatus(resp.status);
  let message = text.trim() || `HTTP ${resp.status} ${resp.statusText}`.trim();
  try {
    const body: unknown = JSON.parse(text);
    if (isRecord(body)) {
      if (typeof body["code"] === "string" && body["code"] !== "") code = body["code"];
      if (typeof body["message"] === "string") message = body["message"];
    }
  } catch {
    // Not JSON (a proxy's page, say): keep the status's code and the text.
  }
  return new FramecastError(code, resp.status, message);
}

/** The error an `event: error` of an open stream carries (`data: {"code","message"}`). */
export function errorOfEvent(data: string): FramecastError {
  let code = "UNKNOWN";
  let message = data;
  try {
    const body: unknown = JSON.parse(data);
    if (isRecord(body)) {
      if (typeof body["code"] === "string") code = body["code"];
      if (typeof body["message"] === "string") message = body["message"];
    }
  } catch {
    // Keep the raw data as the message.
  }
  return new FramecastError(code, statusOfCode(code), message);
}

/** A plain JSON object. */
export function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}
