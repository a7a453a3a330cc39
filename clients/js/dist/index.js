/**
 * framecast: the JavaScript client of the framecast broadcast server's HTTP door.
 *
 * Layout:
 * - `client`: {@link Framecast}, the calls (publish, subscribe, history, topics, broadcast, cluster);
 * - `subscription`: {@link Subscription}, Server-Sent Events over `fetch` that reconnect and resume exactly;
 * - `followers`: with `readFrom: "followers"`, the follower each connect of a subscription goes to;
 * - `transport`: addresses, token, `fetch`, and the retrying request loop;
 * - `tls`: a private CA and a client certificate in Node (the `undici` package's `fetch`);
 * - `sse`: the event-stream parser; `wire`: the JSON bodies (bigint figures, base64);
 * - `backoff`: backoff with jitter; `errors`: {@link FramecastError}; `types`: the public shapes.
 *
 * @packageDocumentation
 */
export { Framecast, newIdempotencyKey } from "./client.js";
export { FATE_UNKNOWN, FramecastError } from "./errors.js";
export { Subscription } from "./subscription.js";
//# sourceMappingURL=index.js.map