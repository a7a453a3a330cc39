/**
 * TLS settings of the client's own: a private CA to trust (`caCert`) and a client
 * certificate (`clientCert`, `clientKey`) for a server started with `--tls-client-ca`.
 *
 * Node's global `fetch` takes no TLS settings, so with any of them the client sends its
 * requests through the `undici` package's `fetch` (the library Node's own is built on) and a
 * connection pool made with them, loaded when the first request is sent. A browser decides
 * TLS by itself (its trust store, its certificates): there the options are refused.
 */
/**
 * A `fetch` that uses the options' TLS settings; undefined when none is given. Throws a
 * `TypeError` for a setting that is not PEM, a certificate without its key (or the reverse),
 * a `fetch` given as well (it decides TLS itself), or a runtime other than Node.
 */
export function tlsFetch(opts) {
    const pems = {};
    const ca = pemOf(opts.caCert, "caCert", "CERTIFICATE");
    const cert = pemOf(opts.clientCert, "clientCert", "CERTIFICATE");
    const key = pemOf(opts.clientKey, "clientKey", "PRIVATE KEY");
    if (ca === undefined && cert === undefined && key === undefined)
        return undefined;
    if ((cert === undefined) !== (key === undefined)) {
        throw new TypeError("Framecast: clientCert and clientKey go together");
    }
    if (opts.fetch) {
        throw new TypeError("Framecast: give fetch or caCert/clientCert, not both (a fetch of your own decides TLS)");
    }
    const versions = globalThis.process?.versions;
    if (versions?.node === undefined) {
        throw new TypeError("Framecast: caCert and clientCert are for Node; a browser uses its own trust store and certificates");
    }
    if (ca !== undefined)
        pems.ca = ca;
    if (cert !== undefined)
        pems.cert = cert;
    if (key !== undefined)
        pems.key = key;
    let ready;
    const load = async () => {
        // A name in a variable: bundlers for the browser leave the import alone.
        const name = "undici";
        const undici = (await import(name));
        return { undici, dispatcher: new undici.Agent({ connect: pems }) };
    };
    return (async (input, init) => {
        ready ??= load();
        const { undici, dispatcher } = await ready;
        return undici.fetch(String(input), { ...init, dispatcher });
    });
}
/** `value` as PEM text naming `label` (e.g. `BEGIN CERTIFICATE`); undefined when absent. */
function pemOf(value, option, label) {
    if (value === undefined)
        return undefined;
    let text;
    if (typeof value === "string") {
        text = value;
    }
    else if (value instanceof Uint8Array) {
        text = new TextDecoder().decode(value);
    }
    else {
        throw new TypeError(`Framecast: ${option} is PEM text (a string or its bytes), not ${typeof value}`);
    }
    if (!new RegExp(`-----BEGIN [A-Z ]*${label}-----`).test(text)) {
        throw new TypeError(`Framecast: ${option} holds no "BEGIN ${label}" block: give the PEM text (e.g. readFileSync("ca.pem")), not a file name`);
    }
    return text;
}
//# sourceMappingURL=tls.js.map