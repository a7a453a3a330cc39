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

/** The PEM texts of the TLS options that were given. */
interface TlsPems {
  ca?: string;
  cert?: string;
  key?: string;
}

/** `undici`'s module, as far as the client uses it. */
interface Undici {
  fetch: (input: string, init: RequestInit & { dispatcher: unknown }) => Promise<Response>;
  Agent: new (opts: { connect: TlsPems }) => unknown;
}

/**
 * A `fetch` that uses the options' TLS settings; undefined when none is given. Throws a
 * `TypeError` for a setting that is not PEM, a certificate without its key (or the reverse),
 * a `fetch` given as well (it decides TLS itself), or a runtime other than Node.
 */
export function tlsFetch(opts: FramecastOptions): typeof fetch | undefined {
  const pems: TlsPems = {};
  const ca = pemOf(opts.caCert, "caCert", "CERTIFICATE");
  const cert = pemOf(opts.clientCert, "clientCert", "CERTIFICATE");
  const key = pemOf(opts.clientKey, "clientKey", "PRIVATE KEY");
  if (ca === undefined && cert === undefined && key === undefined) return undefined;
  if ((cert === undefined) !== (key === undefined)) {
    throw new TypeError("Framecast: clientCert and clientKey go together");
  }
  if (opts.fetch) {
    throw new TypeError("Framecast: give fetch or caCert/clientCert, not both (a fetch of your own decides TLS)");
  }
  const versions = (globalThis as { process?: { versions?: { node?: string } } }).process?.versions;
  if (versions?.node === undefined) {
    throw new TypeError("Framecast: caCert and clientCert are for Node; a browser uses its own trust store and certificates");
  }
  if (ca !== undefined) pems.ca = ca;
  if (cert !== undefined) pems.cert = cert;
  if (key !== undefined) pems.key = key;

  let ready: Promise<{ undici: Undici; dispatcher: unknown }> | undefined;
  const load = async () => {
    // A name in a variable: bundlers for the browser leave the import alone.
    const name = "undici";
    const undici = (await import(name)) as Undici;
    return { undici, dispatcher: new undici.Agent({ connect: pems }) };
  };
  return (async (input: RequestInfo | URL, init?: RequestInit) => {
    ready ??= load();
    const { undici, dispatcher } = await ready;
    return undici.fetch(String(input), { ...init, dispatcher });
  }) as typeof fetch;
}

/** `value` as PEM text naming `label` (e.g. `BEGIN CERTIFICATE`); undefined when absent. */
function pemOf(value: unknown, option: string, label: string): string | undefined {
  if (value === undefined) return undefined;
  let text: string;
  if (typeof value === "string") {
    text = value;
  } else if (value instanceof Uint8Array) {
    text = new TextDecoder().decode(value);
  } else {
    throw new TypeError(`Framecast: ${option} is PEM text (a string or its bytes), not ${typeof value}`);
  }
  if (!new RegExp(`-----BEGIN [A-Z ]*${label}-----`).test(text)) {
    throw new TypeError(
      `Framecast: ${option} holds no "BEGIN ${label}" block: give the PEM text (e.g. readFileSync("ca.pem")), not a file name`,
    );
  }
  return text;
}
