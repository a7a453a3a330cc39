//! The standard process metrics (`process_resident_memory_bytes`, `process_cpu_seconds_total`,
//! `process_open_fds`, `process_start_time_seconds`, `process_threads`), and the memory
//! mappings this process holds against the kernel's limit (`framecast_memory_mappings`,
//! `framecast_memory_mappings_limit`: every segment and run is one, every thread four; see
//! `wal::mappings`), read from `/proc` at each scrape.
//!
//! Linux only: where `/proc` cannot be read or parsed, the metric is left out of the scrape
//! rather than made up.

use std::fmt;
use std::fs;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

/// This process's figures at one moment; `None` where they could not be read.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ProcessStats {
    /// Resident set size, in bytes.
    pub resident_memory_bytes: Option<u64>,
    /// User and system CPU time used, in seconds.
    pub cpu_seconds: Option<f64>,
    /// Open file descriptors (counting the one used to list them, as other exporters do).
    pub open_fds: Option<u64>,
    /// When the process started, in seconds since the Unix epoch.
    pub start_time_seconds: Option<f64>,
    /// Threads in the process.
    pub threads: Option<u64>,
    /// Memory mappings the process holds.
    pub memory_mappings: Option<u64>,
    /// The kernel's limit on them (`vm.max_map_count`).
    pub memory_mappings_limit: Option<u64>,
}

impl ProcessStats {
    /// Reads `/proc/self/stat`, `/proc/self/fd`, `/proc/self/maps`, `/proc/stat` and
    /// `/proc/sys/vm/max_map_count` now.
    pub fn read() -> ProcessStats {
        let stat = fs::read_to_string("/proc/self/stat").ok();
        let stat = stat.as_deref().and_then(Stat::parse);
        // Zero means the kernel did not say: better no figure than a guessed tick rate.
        let ticks = Some(rustix::param::clock_ticks_per_second()).filter(|&hz| hz > 0);
        let page_size = u64::try_from(rustix::param::page_size()).ok();
        ProcessStats {
            resident_memory_bytes: stat
                .zip(page_size)
                .map(|(s, page)| s.rss_pages.saturating_mul(page)),
            cpu_seconds: stat
                .zip(ticks)
                .map(|(s, hz)| (s.utime_ticks + s.stime_ticks) as f64 / hz as f64),
            open_fds: fs::read_dir("/proc/self/fd")
                .ok()
                .map(|entries| entries.count() as u64),
            start_time_seconds: stat
                .zip(ticks)
                .zip(boot_time_seconds())
                .map(|((s, hz), boot)| boot as f64 + s.start_ticks as f64 / hz as f64),
            threads: stat.map(|s| s.threads),
            memory_mappings: crate::wal::mappings::in_use(),
            memory_mappings_limit: crate::wal::mappings::limit(),
        }
    }
}

/// The fields of `/proc/self/stat` used here; see proc_pid_stat(5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stat {
    /// Field 14.
    utime_ticks: u64,
    /// Field 15.
    stime_ticks: u64,
    /// Field 20.
    threads: u64,
    /// Field 22: clock ticks after boot.
    start_ticks: u64,
    /// Field 24.
    rss_pages: u64,
}

impl Stat {
    fn parse(stat: &str) -> Option<Stat> {
        // Field 2, the command name, is in parentheses and may itself hold spaces and
        // parentheses: the fields resume after the last ')'.
        let (_, rest) = stat.rsplit_once(')')?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // `fields[0]` is field 3.
        let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
        Some(Stat {
            utime_ticks: field(14)?,
            stime_ticks: field(15)?,
            threads: field(20)?,
            start_ticks: field(22)?,
            rss_pages: field(24)?,
        })
    }
}

/// The boot time, in seconds since the Unix epoch (`btime` in `/proc/stat`).
fn boot_time_seconds() -> Option<u64> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    parse_btime(&stat)
}

fn parse_btime(stat: &str) -> Option<u64> {
    stat.lines()
        .find_map(|line| line.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

/// Writes the process metrics of this moment at each scrape (standard names, no prefix).
#[derive(Debug)]
pub struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let stats = ProcessStats::read();
        if let Some(bytes) = stats.resident_memory_bytes {
            ConstGauge::new(bytes).encode(encoder.encode_descriptor(
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                None,
                MetricType::Gauge,
            )?)?;
        }
        if let Some(seconds) = stats.cpu_seconds {
            ConstCounter::new(seconds).encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds.",
                None,
                MetricType::Counter,
            )?)?;
        }
        if let Some(fds) = stats.open_fds {
            ConstGauge::new(fds).encode(encoder.encode_descriptor(
                "process_open_fds",
                "Number of open file descriptors.",
                None,
                MetricType::Gauge,
            )?)?;
        }
        if let Some(threads) = stats.threads {
            ConstGauge::new(threads).encode(encoder.encode_descriptor(
                "process_threads",
                "Number of OS threads in the process.",
                None,
                MetricType::Gauge,
            )?)?;
        }
        if let Some(n) = stats.memory_mappings {
            ConstGauge::new(n).encode(encoder.encode_descriptor(
                "framecast_memory_mappings",
                "Memory mappings the process holds: one per segment and sorted run, four per thread.",
                None,
                MetricType::Gauge,
            )?)?;
        }
        if let Some(n) = stats.memory_mappings_limit {
            ConstGauge::new(n).encode(encoder.encode_descriptor(
                "framecast_memory_mappings_limit",
                "The kernel's limit on a process's memory mappings (vm.max_map_count).",
                None,
                MetricType::Gauge,
            )?)?;
        }
        if let Some(seconds) = stats.start_time_seconds {
            ConstGauge::new(seconds).encode(encoder.encode_descriptor(
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
                None,
                MetricType::Gauge,
            )?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a failed unwrap is the test failing

    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        // A command name with spaces and a ')' of its own must not shift the fields.
        let line = "4242 (a b) c)) S 1 4242 4242 0 -1 4194560 1234 0 0 0 \
                    711 222 0 0 20 0 9 0 98765 123456789 3000 18446744073709551615 \
                    1 1 0 0 0 0 0 4096 17663 0 0 0 17 1 0 0 0 0 0\n";
        assert_eq!(
            Stat::parse(line),
            Some(Stat {
                utime_ticks: 711,
                stime_ticks: 222,
                threads: 9,
                start_ticks: 98765,
                rss_pages: 3000,
            })
        );
        assert_eq!(Stat::parse("4242 (truncated) S 1 2 3"), None);
        assert_eq!(Stat::parse("no parenthesis at all"), None);
    }

    #[test]
    fn btime_is_found_among_the_lines() {
        let stat = "cpu  1 2 3\nintr 5 6\nctxt 77\nbtime 1700000000\nprocesses 9\n";
        assert_eq!(parse_btime(stat), Some(1_700_000_000));
        assert_eq!(parse_btime("cpu 1 2 3\n"), None);
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn this_process_has_sane_figures() {
        let before = ProcessStats::read();
        // Burn CPU until the counter moves (it advances by whole clock ticks, and this
        // thread may be descheduled on a busy machine).
        let start = std::time::Instant::now();
        let mut x = 0u64;
        let after = loop {
            for _ in 0..1_000_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
            let now = ProcessStats::read();
            if now.cpu_seconds.unwrap() > before.cpu_seconds.unwrap() {
                break now;
            }
            assert!(start.elapsed().as_secs() < 30, "CPU time never moved");
        };

        let rss = after.resident_memory_bytes.unwrap();
        assert!(rss > 1 << 20, "a test binary holds more than 1 MiB: {rss}");
        assert!(
            after.open_fds.unwrap() >= 3,
            "stdin, stdout, stderr at least"
        );
        assert_eq!(after.start_time_seconds, before.start_time_seconds);
        assert!(after.threads.unwrap() >= 1);
        assert!(after.memory_mappings.unwrap() < after.memory_mappings_limit.unwrap());
    }
}
