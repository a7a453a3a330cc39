/**
 * The JSON bodies of the HTTP door (proto3 JSON mapping: 64-bit integers are decimal
 * strings, `bytes` are base64) and their conversion to the client's types, where every
 * 64-bit figure is a `bigint` so nothing loses precision.
 */
import { FramecastError } from "./errors.js";
import type { ClusterInfo, HistoryFrame, PublishAck, TopicInfo } from "./types.js";
/**
 * Whether `text` is visible ASCII only (`!` to `~`): what a header value the door reads as a
 * token, an idempotency key or a resume cursor may hold. The empty string passes; callers
 * that need something check for it.
 */
export declare function isVisibleAscii(text: string): boolean;
/** Standard, padded base64 (what the server's JSON expects for `bytes`). */
export declare function base64Encode(bytes: Uint8Array): string;
/** Base64, padded or not, standard or URL-safe. Throws on any other character. */
export declare function base64Decode(text: string): Uint8Array;
/** A payload as bytes: a string is sent as its UTF-8 encoding. */
export declare function payloadBytes(payload: string | Uint8Array): Uint8Array;
/** A `uint64` or `int64` argument, checked, as the decimal string the server parses. */
export declare function integerText(name: string, v: bigint | number, signed?: boolean): string;
/** A 64-bit figure of a response (a decimal string, or a number from a lenient server). */
export declare function toBigInt(v: unknown, field: string): bigint;
/** A response the client cannot read (not the server's documented shape). */
export declare function malformed(what: string): FramecastError;
/** An object of a response, or a malformed-response error. */
export declare function record(v: unknown, what: string): Record<string, unknown>;
/** A `PublishAck` body. */
export declare function ackOf(v: unknown): PublishAck;
/** A stored frame of a history page or an SSE event (`payload` base64, `text` when UTF-8). */
export declare function frameOf(v: unknown): HistoryFrame;
/** A `TopicInfo` body. */
export declare function topicOf(v: unknown): TopicInfo;
/** A `ClusterInfo` body (`GET /v1/cluster`). */
export declare function clusterOf(v: unknown): ClusterInfo;
//# sourceMappingURL=wire.d.ts.map