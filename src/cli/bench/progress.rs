//! Live counters shared by all tasks, and the progress bar that shows their rates.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Counters every task adds to (in batches, so they are not contended per frame).
#[derive(Debug, Default)]
pub struct Counters {
    /// Frames acknowledged to publishers.
    pub acked: AtomicU64,
    /// Frames delivered to subscribers (all subscribers together).
    pub delivered: AtomicU64,
    /// Failed calls and broken streams.
    pub errors: AtomicU64,
}

impl Counters {
    /// Adds `n` to `c`.
    pub fn add(c: &AtomicU64, n: u64) {
        if n > 0 {
            c.fetch_add(n, Ordering::Relaxed);
        }
    }

    fn snapshot(&self) -> (u64, u64, u64) {
        (
            self.acked.load(Ordering::Relaxed),
            self.delivered.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed),
        )
    }
}

/// One task's share of a counter, added to the shared atomic in batches: after 1,024 events or
/// 50 ms, whichever comes first (by count alone, subscribers that receive the same frames
/// would all flush in the same instant and the live rate would flicker between 0 and a peak).
#[derive(Debug, Default)]
pub struct Tally {
    unreported: u64,
    last_flush_ns: u64,
}

impl Tally {
    /// Counts one event at run-clock time `now_ns`.
    pub fn one(&mut self, counter: &AtomicU64, now_ns: u64) {
        self.unreported += 1;
        if self.unreported >= 1024 || now_ns.saturating_sub(self.last_flush_ns) >= 50_000_000 {
            self.last_flush_ns = now_ns;
            self.flush(counter);
        }
    }

    /// Counts one event, reading the run clock (`now_ns`) only every 64th: for a loop with
    /// no clock of its own (replay), where a clock read per frame was a tenth of the bench.
    pub fn one_reading_clock(&mut self, counter: &AtomicU64, now_ns: impl FnOnce() -> u64) {
        if (self.unreported + 1).is_multiple_of(64) {
            self.one(counter, now_ns());
        } else {
            self.unreported += 1;
        }
    }

    /// Adds what is not yet counted.
    pub fn flush(&mut self, counter: &AtomicU64) {
        Counters::add(counter, std::mem::take(&mut self.unreported));
    }
}

/// A progress bar over a phase of known length (frames or milliseconds), redrawn with live
/// rates four times a second. Hidden with `--quiet`, `--json`, or when stderr is no terminal.
pub struct Progress {
    bar: ProgressBar,
    task: tokio::task::JoinHandle<()>,
}

impl Progress {
    /// Starts showing `counters` for a phase named `phase` of length `len` in `unit`s
    /// (`position` is read from `pos`).
    pub fn start(
        visible: bool,
        phase: &str,
        len: u64,
        counters: Arc<Counters>,
        pos: impl Fn(&Counters, Duration) -> u64 + Send + 'static,
    ) -> Progress {
        let target = if visible {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let bar = ProgressBar::with_draw_target(Some(len), target);
        let style = ProgressStyle::with_template(
            "{prefix:>8} [{elapsed_precise}] {wide_bar} {percent:>3}% {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        bar.set_prefix(phase.to_string());
        let b = bar.clone();
        let task = tokio::spawn(async move {
            let started = Instant::now();
            // Rates over the last second (four ticks), so they read steadily.
            let mut window =
                std::collections::VecDeque::from([(Instant::now(), counters.snapshot())]);
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                tick.tick().await;
                let now = counters.snapshot();
                window.push_back((Instant::now(), now));
                if window.len() > 5 {
                    window.pop_front();
                }
                let (then, old) = window[0];
                let dt = then.elapsed().as_secs_f64().max(1e-3);
                let rate = |a: u64, b: u64| human((a.saturating_sub(b)) as f64 / dt);
                b.set_message(format!(
                    "acked {}/s  delivered {}/s  errors {}",
                    rate(now.0, old.0),
                    rate(now.1, old.1),
                    now.2
                ));
                b.set_position(pos(&counters, started.elapsed()));
            }
        });
        Progress { bar, task }
    }

    /// Removes the bar.
    pub fn finish(self) {
        self.task.abort();
        self.bar.finish_and_clear();
    }
}

/// `1234567.0` → `1.23M`.
pub fn human(v: f64) -> String {
    if v >= 1e9 {
        format!("{:.2}G", v / 1e9)
    } else if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}
