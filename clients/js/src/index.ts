/**
 * framecast: the JavaScript client of the framecast broadcast server's HTTP door.
 *
 * Layout:
 * - `client`: {@link Framecast}, the calls (publish, subscribe, history, topics, broadcast);
 * - `subscription`: {@link Subscription}, Server-Sent Events over `fetch` that reconnect and resume exactly;
 * - `transport`: addresses, token, `fetch`, and the retrying request loop;
 * - `sse`: the event-stream parser; `wire`: the JSON bodies (bigint figures, base64);
 * - `backoff`: backoff with jitter; `errors`: {@link FramecastError}; `types`: the public shapes.
 *
 * @packageDocumentation
 */

export { Framecast, newIdempotencyKey } from "./client.js";
export { FramecastError } from "./errors.js";
export { Subscription } from "./subscription.js";
export type {
  BackoffOptions,
  BroadcastAck,
  BroadcastOptions,
  Frame,
  FramecastOptions,
  HistoryFrame,
  HistoryOptions,
  HistoryPage,
  PublishAck,
  PublishOptions,
  SubscribeOptions,
  TokenSource,
  TopicAck,
  TopicInfo,
  TopicSettings,
} from "./types.js";
