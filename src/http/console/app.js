// The framecast web console: topics, a live tail, a publish form and a history pager,
// over the public HTTP API only (see API.md, "Two front doors"). No framework and no build
// step: the server embeds this file as it is.

// Same origin by default. A development copy of index.html may name another API origin in
// <html data-api="…"> (the server then needs --cors-origin). It is deliberately not read from
// the URL: a crafted link must not be able to send the stored token to another origin.
const API = document.documentElement.dataset.api ?? '';
const POLL_MS = 1000;
const SAMPLES = 60; // points per sparkline
const TAIL_MAX_ROWS = 500;
const CLIP = 300; // characters of a payload shown in a table cell
const TOKEN_KEY = 'framecast.token';

const $ = (id) => document.getElementById(id);
const enc = encodeURIComponent;

// ---------------------------------------------------------------- token and requests

let token = tokenFromUrl() ?? sessionStorage.getItem(TOKEN_KEY) ?? '';

/** `?access_token=` in the page URL: kept in sessionStorage, then removed from the address
 * bar so that it does not linger in the browser history or get copied along with the link. */
function tokenFromUrl() {
  const url = new URL(location.href);
  const t = url.searchParams.get('access_token');
  if (t === null) return null;
  sessionStorage.setItem(TOKEN_KEY, t);
  url.searchParams.delete('access_token');
  history.replaceState(null, '', url);
  return t;
}

function setToken(t) {
  token = t.trim();
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  else sessionStorage.removeItem(TOKEN_KEY);
  $('token').value = token;
  startPolling();
}

function askForToken() {
  const panel = $('token-panel');
  if (panel.hidden) {
    panel.hidden = false;
    $('token').focus();
  }
}

/** An error answer of the API: `{code, message}` with its HTTP status. */
class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
  toString() {
    return `${this.status ? this.status + ' ' : ''}${this.code}: ${this.message}`;
  }
}

/** One API call: adds the token, parses the JSON answer, throws ApiError on any failure. */
async function api(path, { method = 'GET', body, headers = {} } = {}) {
  const h = new Headers(headers);
  if (token) h.set('Authorization', `Bearer ${token}`);
  let res;
  try {
    res = await fetch(API + path, { method, body, headers: h, signal: AbortSignal.timeout(10_000) });
  } catch (e) {
    throw new ApiError(0, e.name === 'TimeoutError' ? 'TIMEOUT' : 'NETWORK', e.message);
  }
  const text = await res.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    // not JSON: reported below if it was an error
  }
  if (!res.ok) {
    if (res.status === 401) askForToken();
    const code = data?.code ?? `HTTP_${res.status}`;
    throw new ApiError(res.status, code, data?.message ?? clip(text || res.statusText, 200));
  }
  return data;
}

// ---------------------------------------------------------------- formatting

function cell(tr, text = '', cls = '') {
  const td = tr.insertCell();
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

const intFmt = new Intl.NumberFormat('en-US');
const fmtInt = (n) => intFmt.format(n);
const fmtRate = (n) => (n >= 100 ? intFmt.format(Math.round(n)) : n.toFixed(1));

function fmtBytes(n) {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return i === 0 ? `${n} B` : `${n.toFixed(1)} ${units[i]}`;
}

/** A nanosecond timestamp (decimal string) in UTC, `YYYY-MM-DD hh:mm:ss.mmm`. */
function fmtTime(ns) {
  try {
    const ms = Number(BigInt(ns) / 1_000_000n);
    return new Date(ms).toISOString().replace('T', ' ').replace('Z', '');
  } catch {
    return String(ns);
  }
}

const clip = (s, n = CLIP) => (s.length > n ? s.slice(0, n) + '…' : s);

/** One row of a frame table: seq_no, offset, timestamp, [live], payload (text or base64). */
function frameRow(f, withLive) {
  const tr = document.createElement('tr');
  tr.dataset.seq = f.seq_no ?? '0';
  tr.dataset.offset = f.offset ?? '0';
  cell(tr, tr.dataset.seq, 'num');
  cell(tr, tr.dataset.offset, 'num');
  cell(tr, fmtTime(f.timestamp ?? '0')).title = `${f.timestamp ?? 0} ns since the Unix epoch`;
  if (withLive) {
    tr.classList.add(f.live ? 'live' : 'replay');
    cell(tr, f.live ? 'live' : 'replay', 'flag');
  }
  const p = cell(tr, '', 'payload');
  if (typeof f.text === 'string') {
    p.textContent = f.text === '' ? '(empty)' : clip(f.text);
    if (f.text === '') p.classList.add('muted');
    p.title = clip(f.text, 4096);
  } else {
    p.textContent = clip(f.payload ?? '');
    p.classList.add('b64');
    p.title = 'base64 (not UTF-8)';
  }
  return tr;
}

// ---------------------------------------------------------------- topics table

const SVG_NS = 'http://www.w3.org/2000/svg';

/** The columns after the name: how to read a sample, how to show it, and whether the
 * sparkline starts at zero (rates, gauges) or spans min..max (growing counters). */
const METRICS = [
  { key: 'frames', read: (t) => Number(t.frames ?? 0), fmt: fmtInt, zero: false },
  { key: 'bytes', read: (t) => Number(t.bytes ?? 0), fmt: fmtBytes, zero: false },
  { key: 'subscribers', read: (t) => Number(t.subscribers ?? 0), fmt: fmtInt, zero: true },
  { key: 'rate', read: null, fmt: fmtRate, zero: true },
  { key: 'lag', read: (t) => Number(t.subscriber_max_lag_frames ?? 0), fmt: fmtInt, zero: true },
];

/** name → { row, cells, series, prev: {epoch, next, at} } */
const topics = new Map();

function sparkline() {
  const svg = document.createElementNS(SVG_NS, 'svg');
  svg.setAttribute('viewBox', `0 0 ${SAMPLES - 1} 20`);
  svg.setAttribute('preserveAspectRatio', 'none');
  svg.setAttribute('class', 'spark');
  svg.setAttribute('aria-hidden', 'true');
  svg.append(document.createElementNS(SVG_NS, 'polyline'));
  return svg;
}

function drawSparkline(svg, values, zero) {
  const lo = zero ? 0 : Math.min(...values);
  const hi = Math.max(...values);
  const x0 = SAMPLES - values.length; // newest sample at the right edge
  const y = (v) => (hi === lo ? (v === 0 ? 19 : 10) : 19 - ((v - lo) / (hi - lo)) * 18);
  const points = values.map((v, i) => `${x0 + i},${y(v).toFixed(2)}`).join(' ');
  svg.firstChild.setAttribute('points', points);
}

function topicEntry(name) {
  const row = document.createElement('tr');
  row.dataset.topic = name;
  const nameCell = cell(row, '', 'name');
  const link = document.createElement('button');
  link.type = 'button';
  link.className = 'link';
  link.textContent = name;
  link.title = 'use this topic in the forms below';
  link.addEventListener('click', () => {
    for (const id of ['tail-topic', 'pub-topic', 'hist-topic']) $(id).value = name;
  });
  nameCell.append(link);
  const cells = {};
  const series = {};
  for (const m of METRICS) {
    const td = cell(row, '', `metric ${m.key}`);
    td.dataset.metric = m.key;
    const value = document.createElement('span');
    value.className = 'value';
    td.append(value, sparkline());
    cells[m.key] = td;
    series[m.key] = [];
  }
  const actions = cell(row, '', 'actions');
  actions.append(
    button('tail', () => {
      $('tail-topic').value = name;
      startTail(name, $('tail-from').value || '0');
    }),
    button('history', () => {
      $('hist-topic').value = name;
      loadHistory(true);
    }),
  );
  return { row, cells, series, prev: null, info: nameCell };
}

function button(text, onClick) {
  const b = document.createElement('button');
  b.type = 'button';
  b.textContent = text;
  b.addEventListener('click', onClick);
  return b;
}

function renderTopics(list, at) {
  const body = $('topics').tBodies[0];
  const seen = new Set();
  list.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  for (const t of list) {
    seen.add(t.name);
    let e = topics.get(t.name);
    if (!e) topics.set(t.name, (e = topicEntry(t.name)));
    // A re-created topic (new epoch) starts its charts over.
    if (e.prev && e.prev.epoch !== t.epoch) {
      for (const k in e.series) e.series[k].length = 0;
      e.prev = null;
    }
    // The publish rate counts appended frames (next_offset), which retention does not lower.
    const next = Number(t.next_offset ?? 0);
    const rate = e.prev ? Math.max(0, next - e.prev.next) / ((at - e.prev.at) / 1000) : 0;
    e.prev = { epoch: t.epoch, next, at };
    for (const m of METRICS) {
      const v = m.read ? m.read(t) : rate;
      const s = e.series[m.key];
      s.push(v);
      if (s.length > SAMPLES) s.shift();
      e.cells[m.key].firstChild.textContent = m.fmt(v);
      drawSparkline(e.cells[m.key].lastChild, s, m.zero);
    }
    e.info.title =
      `epoch ${t.epoch} · offsets ${t.first_offset ?? 0}..${t.next_offset ?? 0}` +
      ` · seq_no ${t.min_seq_no ?? 0}..${t.max_seq_no ?? 0} · ${t.segments ?? 0} segment(s)`;
    body.append(e.row); // appending in sorted order keeps the rows sorted
  }
  for (const [name, e] of topics) {
    if (!seen.has(name)) {
      e.row.remove();
      topics.delete(name);
    }
  }
  let empty = body.querySelector('tr.empty');
  if (list.length === 0 && !empty) {
    empty = body.insertRow();
    empty.className = 'empty';
    cell(empty, 'no topics yet: publish to one to create it', 'muted').colSpan = 7;
  } else if (list.length > 0 && empty) {
    empty.remove();
  }
}

let pollGeneration = 0;

/** Polls `GET /v1/topics` every second; a new call (a new token) replaces the old loop. */
function startPolling() {
  const gen = ++pollGeneration;
  const loop = async () => {
    const started = performance.now();
    const status = $('topics-status');
    const conn = $('conn');
    try {
      const data = await api('/v1/topics');
      if (gen !== pollGeneration) return;
      const list = data?.topics ?? [];
      renderTopics(list, performance.now());
      status.textContent = `${list.length} topic${list.length === 1 ? '' : 's'} · every ${POLL_MS / 1000} s`;
      conn.textContent = 'connected';
      conn.className = 'ok';
    } catch (e) {
      if (gen !== pollGeneration) return;
      conn.className = 'err';
      if (e.status === 401) {
        // Show nothing stale, and wait for a token instead of knocking every second.
        topics.clear();
        $('topics').tBodies[0].replaceChildren();
        conn.textContent = 'this server needs a token';
        status.textContent = e.toString();
        return;
      }
      conn.textContent = e.status ? 'error' : 'unreachable';
      status.textContent = e.toString();
    }
    const wait = Math.max(0, POLL_MS - (performance.now() - started));
    setTimeout(() => gen === pollGeneration && loop(), wait);
  };
  loop();
}

// ---------------------------------------------------------------- live tail

/** The running tail: { es, topic, pending, received, timer } or null. */
let tail = null;

function setTailStatus(text, cls = 'muted') {
  const s = $('tail-status');
  s.textContent = text;
  s.className = cls;
}

function startTail(topic, from) {
  stopTail();
  $('tail').replaceChildren();
  const snap = $('tail-snapshot');
  snap.textContent = '';
  delete snap.dataset.snapshotOffset;
  const q = new URLSearchParams({ from: String(from) });
  if (token) q.set('access_token', token); // EventSource cannot send headers
  // On a dropped connection EventSource reconnects by itself and sends Last-Event-ID (a
  // cursor token), which the server resumes exactly: no gap and no duplicate.
  const es = new EventSource(`${API}/v1/topics/${enc(topic)}/events?${q}`);
  const t = { es, topic, pending: [], received: 0, timer: 0 };
  tail = t;
  $('tail-stop').disabled = false;
  setTailStatus(`connecting to ${topic}…`);

  es.addEventListener('open', () => tail === t && setTailStatus(`following ${topic}`, 'ok'));
  es.addEventListener('snapshot', (ev) => {
    if (tail !== t) return;
    const s = JSON.parse(ev.data);
    snap.dataset.snapshotOffset = s.snapshot_offset ?? '0';
    snap.textContent = `snapshot_offset ${s.snapshot_offset ?? 0} · epoch ${s.epoch ?? 0}`;
  });
  es.addEventListener('frame', (ev) => {
    if (tail !== t) return;
    t.pending.push(JSON.parse(ev.data));
    t.received++;
    // Only the newest rows are ever shown: drop the rest early during a large replay.
    if (t.pending.length > 2 * TAIL_MAX_ROWS) t.pending.splice(0, t.pending.length - TAIL_MAX_ROWS);
    if (!t.timer) t.timer = setTimeout(() => flushTail(t), 30);
  });
  es.addEventListener('error', (ev) => {
    if (tail !== t) return;
    if (ev instanceof MessageEvent) {
      // The server's `event: error`: the stream is over (deleted topic, retention, expired
      // token, shutdown). Do not let EventSource reconnect.
      let err;
      try {
        err = JSON.parse(ev.data);
      } catch {
        err = { code: 'UNKNOWN', message: ev.data };
      }
      stopTail(`ended: ${err.code}: ${err.message}`, 'err');
    } else if (es.readyState === EventSource.CLOSED) {
      stopTail('refused by the server (topic, from or token? on a cluster, a follower refuses a topic it does not hold: use the leader)', 'err');
    } else {
      setTailStatus('connection lost: reconnecting, resuming after the last frame…', 'warn');
    }
  });
}

function flushTail(t) {
  clearTimeout(t.timer);
  t.timer = 0;
  const frames = t.pending.splice(0).slice(-TAIL_MAX_ROWS);
  const frag = document.createDocumentFragment();
  for (let i = frames.length - 1; i >= 0; i--) frag.append(frameRow(frames[i], true));
  const body = $('tail');
  body.prepend(frag); // newest at the top
  while (body.rows.length > TAIL_MAX_ROWS) body.lastElementChild.remove();
  if (tail === t) setTailStatus(`following ${t.topic} · ${fmtInt(t.received)} frames received`, 'ok');
}

function stopTail(why = 'stopped', cls = 'muted') {
  const t = tail;
  if (!t) return;
  tail = null;
  t.es.close();
  flushTail(t);
  $('tail-stop').disabled = true;
  setTailStatus(`${why} · ${fmtInt(t.received)} frames received`, cls);
}

// ---------------------------------------------------------------- publish

async function publish() {
  const topic = $('pub-topic').value.trim();
  const seq = $('pub-seq').value.trim();
  const key = $('pub-key').value;
  const out = $('pub-result');
  out.className = 'result';
  for (const k of Object.keys(out.dataset)) delete out.dataset[k];
  out.textContent = 'publishing…';
  const headers = key ? { 'Idempotency-Key': key } : {};
  try {
    const ack = await api(`/v1/topics/${enc(topic)}/frames?seq_no=${enc(seq)}`, {
      method: 'POST',
      body: $('pub-payload').value, // the raw body is the payload (UTF-8)
      headers,
    });
    const duplicate = Boolean(ack?.duplicate);
    out.className = 'result ok';
    out.dataset.offset = ack?.offset ?? '0';
    out.dataset.duplicate = String(duplicate);
    const ts = ack?.timestamp ?? '0';
    out.textContent =
      `ack  offset ${ack?.offset ?? 0} · timestamp ${ts} (${fmtTime(ts)}) · duplicate ${duplicate}` +
      (duplicate ? '\nthis key was already stored: the first ack is returned, nothing was appended' : '');
    if (!duplicate && /^\d+$/.test(seq)) $('pub-seq').value = String(BigInt(seq) + 1n);
  } catch (e) {
    out.className = 'result err';
    out.dataset.code = e.code;
    out.textContent = e.toString();
  }
}

// ---------------------------------------------------------------- history

/** The pager's query, fixed by its first page: { topic, from, limit, reverse, next, page }. */
let hist = null;

async function loadHistory(first) {
  const status = $('hist-status');
  if (first) {
    hist = {
      topic: $('hist-topic').value.trim(),
      from: $('hist-from').value || '0',
      limit: $('hist-limit').value || '100',
      reverse: $('hist-reverse').checked,
      next: '',
      page: 0,
    };
  }
  if (!hist) return;
  const q = new URLSearchParams({ from: hist.from, limit: hist.limit });
  if (hist.reverse) q.set('reverse', 'true');
  if (!first) q.set('after', hist.next); // pages never overlap and never skip
  $('hist-next').disabled = true;
  $('hist-load').disabled = true;
  const h = hist;
  try {
    const page = await api(`/v1/topics/${enc(h.topic)}/history?${q}`);
    if (h !== hist) return;
    const frames = page?.frames ?? [];
    const more = Boolean(page?.more);
    h.page++;
    h.next = page?.next ?? '';
    $('hist-rows').replaceChildren(...frames.map((f) => frameRow(f, false)));
    status.className = 'muted';
    status.dataset.page = String(h.page);
    status.dataset.more = String(more);
    status.textContent =
      `${h.topic} · page ${h.page} · ${frames.length} frame${frames.length === 1 ? '' : 's'}` +
      ` · more: ${more ? 'yes' : 'no'}` +
      ` · snapshot_offset ${page?.snapshot_offset ?? 0} · epoch ${page?.epoch ?? 0}`;
    $('hist-next').disabled = !more;
  } catch (e) {
    if (h !== hist) return;
    status.className = 'err';
    status.textContent = e.toString();
    $('hist-next').disabled = first || !h.next; // a failed next page may be retried
  } finally {
    $('hist-load').disabled = false;
  }
}

// ---------------------------------------------------------------- wiring

function onSubmit(id, fn) {
  $(id).addEventListener('submit', (ev) => {
    ev.preventDefault();
    fn();
  });
}

onSubmit('token-panel', () => setToken($('token').value));
$('token-clear').addEventListener('click', () => setToken(''));
onSubmit('tail-form', () => startTail($('tail-topic').value.trim(), $('tail-from').value || '0'));
$('tail-stop').addEventListener('click', () => stopTail());
onSubmit('pub-form', publish);
onSubmit('hist-form', () => loadHistory(true));
$('hist-next').addEventListener('click', () => loadHistory(false));

if (token) {
  $('token').value = token;
  $('token-panel').hidden = false;
}
startPolling();
