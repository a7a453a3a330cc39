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

/** A call the server refused, a stream it ended, or a server that could not be reached. */
export class FramecastError extends Error {
  /** The upper-case gRPC code name: `INVALID_ARGUMENT`, `UNAUTHENTICATED`, `UNAVAILABLE`, … */
  readonly code: string;
  /** The HTTP status; for an error inside an open stream, the status its code maps to; 0 when no response came at all. */
  readonly status: number;

  constructor(code: string, status: number, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "FramecastError";
    this.code = code;
    this.status = status;
  }
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
