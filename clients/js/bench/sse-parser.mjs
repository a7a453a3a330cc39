// The event-stream parser's cost, from the built package (`npm run build` first):
// `node bench/sse-parser.mjs`. One 6 MB `data:` line (a frame at the server's default
// --max-frame-bytes, as base64 and text) fed in 16 KiB chunks, and 20,000 small events in
// one chunk; the median of 5 runs of each, in ms.

import { SseParser } from "../dist/sse.js";

const median = (xs) => xs.sort((a, b) => a - b)[Math.floor(xs.length / 2)];

function time(f) {
  const runs = [];
  for (let i = 0; i < 5; i++) {
    const t = performance.now();
    f();
    runs.push(performance.now() - t);
  }
  return median(runs).toFixed(1);
}

const long = `event: frame\nid: big\ndata: ${"x".repeat(6_000_000)}\n\n`;
const large = time(() => {
  const p = new SseParser();
  let n = 0;
  for (let i = 0; i < long.length; i += 16_384) n += p.push(long.slice(i, i + 16_384)).length;
  if (n !== 1) throw new Error(`expected one event, got ${n}`);
});
const burst = Array.from({ length: 20_000 }, (_, i) => `id: s${i}\ndata: ${i}\n\n`).join("");
const small = time(() => {
  const n = new SseParser().push(burst).length;
  if (n !== 20_000) throw new Error(`expected 20000 events, got ${n}`);
});
console.log(`6 MB line in 16 KiB chunks: ${large} ms; 20,000 small events in one chunk: ${small} ms`);
