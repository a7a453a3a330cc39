/**
 * The JSON bodies of the HTTP door (proto3 JSON mapping: 64-bit integers are decimal
 * strings, `bytes` are base64) and their conversion to the client's types, where every
 * 64-bit figure is a `bigint` so nothing loses precision.
 */

import { FramecastError, isRecord } from "./errors.js";
import type { ClusterInfo, HistoryFrame, NodeInfo, PublishAck, TopicInfo, TopicPosition } from "./types.js";

/**
 * Whether `text` is visible ASCII only (`!` to `~`): what a header value the door reads as a
 * token, an idempotency key or a resume cursor may hold. The empty string passes; callers
 * that need something check for it.
 */
export function isVisibleAscii(text: string): boolean {
  return /^[\x21-\x7e]*$/.test(text);
}

const ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/** Base64 character → its 6 bits (both the standard and the URL-safe alphabet); -1 otherwise. */
const SEXTET: Int8Array = (() => {
  const t = new Int8Array(128).fill(-1);
  for (let i = 0; i < ALPHABET.length; i++) t[ALPHABET.charCodeAt(i)] = i;
  t["-".charCodeAt(0)] = 62;
  t["_".charCodeAt(0)] = 63;
  return t;
})();

/** Standard, padded base64 (what the server's JSON expects for `bytes`). */
export function base64Encode(bytes: Uint8Array): string {
  let out = "";
  let i = 0;
  for (; i + 2 < bytes.length; i += 3) {
    const n = (bytes[i]! << 16) | (bytes[i + 1]! << 8) | bytes[i + 2]!;
    out += ALPHABET[n >> 18]! + ALPHABET[(n >> 12) & 63]! + ALPHABET[(n >> 6) & 63]! + ALPHABET[n & 63]!;
  }
  const rest = bytes.length - i;
  if (rest === 1) {
    const n = bytes[i]! << 16;
    out += ALPHABET[n >> 18]! + ALPHABET[(n >> 12) & 63]! + "==";
  } else if (rest === 2) {
    const n = (bytes[i]! << 16) | (bytes[i + 1]! << 8);
    out += ALPHABET[n >> 18]! + ALPHABET[(n >> 12) & 63]! + ALPHABET[(n >> 6) & 63]! + "=";
  }
  return out;
}

/** Base64, padded or not, standard or URL-safe. Throws on any other character. */
export function base64Decode(text: string): Uint8Array {
  let end = text.length;
  while (end > 0 && text.charCodeAt(end - 1) === 61 /* = */) end--;
  const out = new Uint8Array(Math.floor((end * 3) / 4));
  let acc = 0;
  let bits = 0;
  let o = 0;
  for (let i = 0; i < end; i++) {
    const c = text.charCodeAt(i);
    const v = c < 128 ? SEXTET[c]! : -1;
    if (v < 0) throw new SyntaxError(`not base64: character ${JSON.stringify(text[i])} at ${i}`);
    acc = ((acc << 6) | v) & 0xffffff;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out[o++] = (acc >> bits) & 0xff;
    }
  }
  return o === out.length ? out : out.subarray(0, o);
}

const encoder = new TextEncoder();

/** A payload as bytes: a string is sent as its UTF-8 encoding. */
export function payloadBytes(payload: string | Uint8Array): Uint8Array {
  if (typeof payload === "string") return encoder.encode(payload);
  if (payload instanceof Uint8Array) return payload;
  throw new TypeError("payload must be a string or a Uint8Array");
}

/** A `uint64` or `int64` argument, checked, as the decimal string the server parses. */
export function integerText(name: string, v: bigint | number, signed = false): string {
  let n: bigint;
  if (typeof v === "bigint") {
    n = v;
  } else if (typeof v === "number" && Number.isSafeInteger(v)) {
    n = BigInt(v);
  } else {
    throw new TypeError(`${name} must be a bigint or a safe integer, not ${String(v)}`);
  }
  const max = signed ? (1n << 63n) - 1n : (1n << 64n) - 1n;
  if (n < 0n || n > max) throw new RangeError(`${name} out of range: ${n}`);
  return n.toString();
}

/** A 64-bit figure of a response (a decimal string, or a number from a lenient server). */
export function toBigInt(v: unknown, field: string): bigint {
  if (typeof v === "string" && /^-?\d+$/.test(v)) return BigInt(v);
  if (typeof v === "number" && Number.isSafeInteger(v)) return BigInt(v);
  if (v === undefined || v === null) return 0n; // proto3 JSON omits zero values
  throw malformed(`${field} is not an integer: ${JSON.stringify(v)}`);
}

/** A 32-bit figure of a response. */
function toNumber(v: unknown, field: string): number {
  if (typeof v === "number") return v;
  if (typeof v === "string" && /^-?\d+$/.test(v)) return Number(v);
  if (v === undefined || v === null) return 0;
  throw malformed(`${field} is not a number: ${JSON.stringify(v)}`);
}

/** A response the client cannot read (not the server's documented shape). */
export function malformed(what: string): FramecastError {
  return new FramecastError("INTERNAL", 0, `unexpected response from the server: ${what}`);
}

/** An object of a response, or a malformed-response error. */
export function record(v: unknown, what: string): Record<string, unknown> {
  if (!isRecord(v)) throw malformed(`${what} is not a JSON object`);
  return v;
}

/** A `PublishAck` body. */
export function ackOf(v: unknown): PublishAck {
  const a = record(v, "ack");
  return {
    offset: toBigInt(a["offset"], "offset"),
    timestamp: toBigInt(a["timestamp"], "timestamp"),
    duplicate: a["duplicate"] === true,
  };
}

/** A stored frame of a history page or an SSE event (`payload` base64, `text` when UTF-8). */
export function frameOf(v: unknown): HistoryFrame {
  const f = record(v, "frame");
  const payloadText = f["payload"];
  let payload: Uint8Array;
  if (typeof payloadText === "string") {
    try {
      payload = base64Decode(payloadText);
    } catch (e) {
      throw malformed(`payload: ${(e as Error).message}`);
    }
  } else if (typeof f["text"] === "string") {
    payload = encoder.encode(f["text"]);
  } else {
    payload = new Uint8Array(0);
  }
  const frame: HistoryFrame = {
    seqNo: toBigInt(f["seq_no"], "seq_no"),
    timestamp: toBigInt(f["timestamp"], "timestamp"),
    offset: toBigInt(f["offset"], "offset"),
    payload,
  };
  if (typeof f["text"] === "string") frame.text = f["text"];
  return frame;
}

/** A `TopicInfo` body. */
export function topicOf(v: unknown): TopicInfo {
  const t = record(v, "topic");
  const info: TopicInfo = {
    name: typeof t["name"] === "string" ? t["name"] : "",
    epoch: toBigInt(t["epoch"], "epoch"),
    frames: toBigInt(t["frames"], "frames"),
    bytes: toBigInt(t["bytes"], "bytes"),
    firstOffset: toBigInt(t["first_offset"], "first_offset"),
    nextOffset: toBigInt(t["next_offset"], "next_offset"),
    minSeqNo: toBigInt(t["min_seq_no"], "min_seq_no"),
    maxSeqNo: toBigInt(t["max_seq_no"], "max_seq_no"),
    subscribers: toNumber(t["subscribers"], "subscribers"),
    segments: toNumber(t["segments"], "segments"),
  };
  if (t["subscriber_max_lag_frames"] !== undefined) {
    info.subscriberMaxLagFrames = toBigInt(t["subscriber_max_lag_frames"], "subscriber_max_lag_frames");
  }
  return info;
}

/** A string field of a response (`""` when absent: proto3 JSON omits empty strings). */
function text(v: unknown, field: string): string {
  if (typeof v === "string") return v;
  if (v === undefined || v === null) return "";
  throw malformed(`${field} is not a string: ${JSON.stringify(v)}`);
}

/** A `ClusterInfo` body (`GET /v1/cluster`). */
export function clusterOf(v: unknown): ClusterInfo {
  const c = record(v, "cluster");
  const nodes = c["nodes"] ?? [];
  if (!Array.isArray(nodes)) throw malformed("cluster nodes is not a list");
  return {
    term: toBigInt(c["term"], "term"),
    leader: text(c["leader"], "leader"),
    nodes: nodes.map(nodeOf),
  };
}

/** A `NodeInfo` of a cluster. */
function nodeOf(v: unknown): NodeInfo {
  const n = record(v, "node");
  const topics = n["topics"] ?? [];
  if (!Array.isArray(topics)) throw malformed("node topics is not a list");
  return {
    id: text(n["id"], "id"),
    address: text(n["address"], "address"),
    httpAddress: text(n["http_address"], "http_address"),
    leader: n["leader"] === true,
    inSync: n["in_sync"] === true,
    online: n["online"] === true,
    topics: topics.map(positionOf),
  };
}

/** A `TopicPosition` of a node. */
function positionOf(v: unknown): TopicPosition {
  const t = record(v, "topic position");
  return {
    topic: text(t["topic"], "topic"),
    nextOffset: toBigInt(t["next_offset"], "next_offset"),
    commitOffset: toBigInt(t["commit_offset"], "commit_offset"),
  };
}
