/**
 * TLS settings of the client's own: a private CA to trust (`caCert`) and a client
 * certificate (`clientCert`, `clientKey`) for a server started with `--tls-client-ca`.
 *
 * Node's global `fetch` takes no TLS settings, so with any of them the client sends its
 * requests through the `undici` package's `fetch` (the library Node's own is built on) and a
 * connection pool made with them, loaded when the first request is sent. A browser decides
 * TLS by itself (its trust store, its certificates): there the options are refused.
 */
import type { FramecastOptions } from "./types.js";
/** PEM text: a string, or its bytes (a file's contents). */
export type Pem = string | Uint8Array;
/**
 * A `fetch` that uses the options' TLS settings; undefined when none is given. Throws a
 * `TypeError` for a setting that is not PEM, a certificate without its key (or the reverse),
 * a `fetch` given as well (it decides TLS itself), or a runtime other than Node.
 */
export declare function tlsFetch(opts: FramecastOptions): typeof fetch | undefined;
//# sourceMappingURL=tls.d.ts.map