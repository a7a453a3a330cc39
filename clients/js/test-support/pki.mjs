// Test certificates made in process with @peculiar/x509 (WebCrypto, ECDSA P-256): a CA and
// a server certificate for localhost and 127.0.0.1 signed by it, a second CA with a client
// certificate, and a third CA nobody signed with. Written as PEM files under a directory
// for the server's --tls-* flags; the PEM texts for the client.

import { writeFileSync } from "node:fs";
import { join } from "node:path";
import "reflect-metadata"; // @peculiar/x509 needs it loaded first
import * as x509 from "@peculiar/x509";

x509.cryptoProvider.set(globalThis.crypto);

const ALG = { name: "ECDSA", namedCurve: "P-256", hash: "SHA-256" };
const DAY = 24 * 3600 * 1000;

async function keys() {
  return globalThis.crypto.subtle.generateKey(ALG, true, ["sign", "verify"]);
}

async function keyPem(key) {
  return x509.PemConverter.encode(await globalThis.crypto.subtle.exportKey("pkcs8", key), "PRIVATE KEY");
}

/** A self-signed CA: `{ cert, keys, pem }`. */
async function makeCa(name) {
  const k = await keys();
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    name: `CN=${name}`,
    notBefore: new Date(Date.now() - DAY),
    notAfter: new Date(Date.now() + DAY),
    signingAlgorithm: ALG,
    keys: k,
    extensions: [
      new x509.BasicConstraintsExtension(true, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(k.publicKey),
    ],
  });
  return { cert, keys: k, pem: cert.toString("pem") };
}

/** A certificate signed by `ca` for `names` (SAN entries) and `usage`: `{ certPem, keyPem }`. */
async function issue(ca, cn, names, usage) {
  const k = await keys();
  const extensions = [
    new x509.BasicConstraintsExtension(false, undefined, true),
    new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
    new x509.ExtendedKeyUsageExtension([usage]),
    await x509.AuthorityKeyIdentifierExtension.create(ca.keys.publicKey),
  ];
  if (names.length > 0) extensions.push(new x509.SubjectAlternativeNameExtension(names));
  const cert = await x509.X509CertificateGenerator.create({
    subject: `CN=${cn}`,
    issuer: ca.cert.subject,
    notBefore: new Date(Date.now() - DAY),
    notAfter: new Date(Date.now() + DAY),
    signingAlgorithm: ALG,
    publicKey: k.publicKey,
    signingKey: ca.keys.privateKey,
    extensions,
  });
  return { certPem: cert.toString("pem"), keyPem: await keyPem(k.privateKey) };
}

/**
 * Certificates under `dir`: `caPem` (the server's CA), `serverArgs(...extra)` (the
 * `--tls-cert`/`--tls-key` flags), `clientCaPath` (for `--tls-client-ca`), `client`
 * (`{ certPem, keyPem }` signed by that CA), `otherCaPem` (a CA that signed nothing here).
 */
export async function makePki(dir) {
  const ca = await makeCa("framecast js test CA");
  const server = await issue(
    ca,
    "localhost",
    [
      { type: "dns", value: "localhost" },
      { type: "ip", value: "127.0.0.1" },
    ],
    x509.ExtendedKeyUsage.serverAuth,
  );
  const clientCa = await makeCa("framecast js test client CA");
  const client = await issue(clientCa, "js-test-client", [], x509.ExtendedKeyUsage.clientAuth);
  const other = await makeCa("framecast js test other CA");
  const certPath = join(dir, "server.pem");
  const keyPath = join(dir, "server-key.pem");
  const clientCaPath = join(dir, "client-ca.pem");
  writeFileSync(certPath, server.certPem + "\n" + ca.pem + "\n");
  writeFileSync(keyPath, server.keyPem + "\n");
  writeFileSync(clientCaPath, clientCa.pem + "\n");
  return {
    caPem: ca.pem,
    clientCaPath,
    client,
    otherCaPem: other.pem,
    serverArgs: (...extra) => ["--tls-cert", certPath, "--tls-key", keyPath, ...extra],
  };
}
