//! What the peers' side shares with `framecast bench`, copied so this project stands alone:
//! the frame header, the delivery check, the pacer, HDR latency from intended send times, and
//! the report's JSON shape.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use hdrhistogram::Histogram;
use serde::Serialize;

pub const HEADER_LEN: usize = 24;
const MAGIC: &[u8; 4] = b"FCB1";

/// `[magic "FCB1"][publisher u32][counter u64][intended ns u64]` then filler, as framecast's.
pub fn encode(size: usize, publisher: u32, counter: u64, intended_ns: u64) -> Bytes {
    let mut b = BytesMut::with_capacity(size);
    b.put_slice(MAGIC);
    b.put_u32_le(publisher);
    b.put_u64_le(counter);
    b.put_u64_le(intended_ns);
    b.resize(size, b'x');
    b.freeze()
}

pub struct Header {
    pub publisher: u32,
    pub counter: u64,
    pub intended_ns: u64,
}

pub fn decode(p: &[u8]) -> Option<Header> {
    if p.len() < HEADER_LEN || &p[..4] != MAGIC {
        return None;
    }
    let u = |i: usize| u64::from_le_bytes(p[i..i + 8].try_into().unwrap_or([0; 8]));
    Some(Header {
        publisher: u32::from_le_bytes(p[4..8].try_into().unwrap_or([0; 4])),
        counter: u(8),
        intended_ns: u(16),
    })
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Faults {
    pub missing: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    pub foreign: u64,
}

impl Faults {
    pub fn add(&mut self, o: &Faults) {
        self.missing += o.missing;
        self.duplicated += o.duplicated;
        self.out_of_order += o.out_of_order;
        self.foreign += o.foreign;
    }
}

#[derive(Default, Clone)]
struct Track {
    next: u64,
    gaps: BTreeSet<u64>,
}

/// The same check as framecast's: per publisher, counters 0, 1, 2, … exactly once, in order;
/// positions (stream ids / sequences) strictly increasing.
pub struct Checker {
    tracks: Vec<Track>,
    size: usize,
    last_pos: Option<u128>,
    pub faults: Faults,
    pub received: u64,
}

impl Checker {
    pub fn new(publishers: usize, size: usize) -> Checker {
        Checker {
            tracks: vec![Track::default(); publishers],
            size,
            last_pos: None,
            faults: Faults::default(),
            received: 0,
        }
    }

    pub fn frame(&mut self, pos: u128, payload: &[u8]) -> Option<Header> {
        self.received += 1;
        if let Some(l) = self.last_pos {
            if pos <= l {
                self.faults.out_of_order += 1;
            }
        }
        self.last_pos = Some(self.last_pos.map_or(pos, |l| l.max(pos)));
        let h = match decode(payload) {
            Some(h) if payload.len() == self.size && (h.publisher as usize) < self.tracks.len() => {
                h
            }
            _ => {
                self.faults.foreign += 1;
                return None;
            }
        };
        let t = &mut self.tracks[h.publisher as usize];
        if h.counter == t.next {
            t.next += 1;
        } else if h.counter > t.next {
            t.gaps.extend(t.next..h.counter);
            t.next = h.counter + 1;
        } else if t.gaps.remove(&h.counter) {
            self.faults.out_of_order += 1;
        } else {
            self.faults.duplicated += 1;
        }
        Some(h)
    }

    pub fn complete(&self, expected: &[u64]) -> bool {
        self.tracks
            .iter()
            .zip(expected)
            .all(|(t, &e)| t.next >= e && t.gaps.range(..e).next().is_none())
    }

    pub fn finish(&mut self, expected: &[u64]) -> Faults {
        for (t, &e) in self.tracks.iter().zip(expected) {
            self.faults.missing += t.gaps.range(..e).count() as u64 + e.saturating_sub(t.next);
        }
        self.faults
    }
}

#[derive(Clone, Copy)]
pub struct Clock {
    start: Instant,
}

impl Clock {
    pub fn new() -> Clock {
        Clock {
            start: Instant::now(),
        }
    }
    pub fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }
    pub fn at(&self, ns: u64) -> tokio::time::Instant {
        (self.start + Duration::from_nanos(ns)).into()
    }
}

#[derive(Clone, Copy)]
pub struct Pacer {
    interval_ns: f64,
    publishers: u64,
    index: u64,
    origin_ns: u64,
}

impl Pacer {
    pub fn new(rate: f64, publishers: usize, index: usize, origin_ns: u64) -> Pacer {
        Pacer {
            interval_ns: if rate > 0.0 { 1e9 / rate } else { 0.0 },
            publishers: publishers.max(1) as u64,
            index: index as u64,
            origin_ns,
        }
    }
    pub fn due_ns(&self, k: u64) -> Option<u64> {
        (self.interval_ns > 0.0).then(|| {
            self.origin_ns + ((k * self.publishers + self.index) as f64 * self.interval_ns) as u64
        })
    }
}

/// Latency histograms (µs) in a few locked shards.
#[derive(Clone)]
pub struct Recorder {
    shards: Arc<Vec<std::sync::Mutex<Histogram<u64>>>>,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).unwrap_or_else(|e| unreachable!("{e}"))
}

impl Recorder {
    pub fn new(n: usize) -> Recorder {
        Recorder {
            shards: Arc::new(
                (0..n.max(1))
                    .map(|_| std::sync::Mutex::new(histogram()))
                    .collect(),
            ),
        }
    }
    pub fn sink(&self, i: usize) -> Sink {
        Sink {
            rec: self.clone(),
            shard: i % self.shards.len(),
            buf: Vec::with_capacity(64),
        }
    }
    pub fn merged(&self) -> Histogram<u64> {
        let mut h = histogram();
        for s in self.shards.iter() {
            if let Ok(s) = s.lock() {
                let _ = h.add(&*s);
            }
        }
        h
    }
}

pub struct Sink {
    rec: Recorder,
    shard: usize,
    buf: Vec<u64>,
}

impl Sink {
    pub fn record_ns(&mut self, ns: u64) {
        self.buf.push((ns / 1000).clamp(1, 3_600_000_000));
        if self.buf.len() >= 64 {
            self.flush();
        }
    }
    pub fn flush(&mut self) {
        if let Ok(mut h) = self.rec.shards[self.shard].lock() {
            for &v in &self.buf {
                h.saturating_record(v);
            }
        }
        self.buf.clear();
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.flush();
    }
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Throughput {
    pub frames: u64,
    pub secs: f64,
    pub frames_per_s: f64,
    pub mb_per_s: f64,
}

impl Throughput {
    pub fn new(frames: u64, secs: f64, size: usize) -> Throughput {
        let fps = if secs > 0.0 {
            frames as f64 / secs
        } else {
            0.0
        };
        Throughput {
            frames,
            secs,
            frames_per_s: fps,
            mb_per_s: fps * size as f64 / 1e6,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct LatencyRow {
    pub name: String,
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl LatencyRow {
    pub fn of(name: &str, h: &Histogram<u64>) -> Option<LatencyRow> {
        (!h.is_empty()).then(|| LatencyRow {
            name: name.into(),
            count: h.len(),
            mean_us: h.mean(),
            p50_us: h.value_at_quantile(0.5),
            p90_us: h.value_at_quantile(0.9),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        })
    }
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct Resources {
    pub server_cpu_s: Option<f64>,
    pub server_peak_rss_mb: Option<f64>,
    pub client_cpu_s: f64,
}

/// The same shape as `framecast bench --json` (the fields the comparison uses).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    pub peer: String,
    pub command: String,
    pub date: String,
    pub load_before: [f64; 3],
    pub load_after: [f64; 3],
    pub fsync: String,
    pub frame_bytes: usize,
    pub publishers: usize,
    pub publish_mode: String,
    pub target_rate: f64,
    pub subscribers: usize,
    pub connections: usize,
    pub published: Option<Throughput>,
    pub delivered: Option<Throughput>,
    pub latency: Vec<LatencyRow>,
    pub errors: u64,
    pub error_samples: Vec<String>,
    pub faults: Faults,
    pub incomplete_subscribers: usize,
    pub resources: Resources,
    pub ok: bool,
}

pub fn load_average() -> [f64; 3] {
    let s = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut it = s.split_whitespace().map(|v| v.parse().unwrap_or(0.0));
    [
        it.next().unwrap_or(0.0),
        it.next().unwrap_or(0.0),
        it.next().unwrap_or(0.0),
    ]
}

pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let t: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(t / 100.0)
}

pub fn peak_rss_mb(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = s
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb * 1024.0 / 1e6)
}

pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
