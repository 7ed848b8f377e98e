//! What a run counts: latencies, errors by kind, and the measured interval.
//!
//! Connections record into small local batches that are merged into one shared
//! histogram now and then, so that thousands of connections do not each carry a
//! histogram and the hot loop does not take a lock per message.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// The run's timeline: traffic starts when it is made, is counted from
/// `measure_from` (after the warm-up) and stops at `until`.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub measure_from: Instant,
    pub until: Instant,
}

impl Window {
    pub fn new(warmup: Duration, duration: Duration) -> Window {
        let start = Instant::now();
        Window {
            measure_from: start + warmup,
            until: start + warmup + duration,
        }
    }

    /// Whether an operation finishing at `t` counts.
    pub fn measuring(&self, t: Instant) -> bool {
        t >= self.measure_from && t < self.until
    }

    pub fn measured(&self) -> Duration {
        self.until - self.measure_from
    }
}

/// Why an operation failed: a short, stable kind (the JSON key) and what happened.
#[derive(Debug, Clone)]
pub struct Failure {
    pub kind: &'static str,
    pub detail: String,
}

impl Failure {
    pub fn new(kind: &'static str, detail: impl Into<String>) -> Failure {
        Failure {
            kind,
            detail: detail.into(),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.detail)
    }
}

/// Errors counted by kind, keeping the first detail of each kind for the summary.
#[derive(Debug, Default, Clone)]
pub struct Errors {
    kinds: BTreeMap<&'static str, (u64, String)>,
}

impl Errors {
    pub fn add(&mut self, f: &Failure) {
        self.kinds
            .entry(f.kind)
            .or_insert_with(|| (0, f.detail.clone()))
            .0 += 1;
    }

    /// Counts `n` failures of one kind at once, as a tool that reports totals gives them.
    pub fn add_n(&mut self, f: &Failure, n: u64) {
        if n > 0 {
            self.kinds
                .entry(f.kind)
                .or_insert_with(|| (0, f.detail.clone()))
                .0 += n;
        }
    }

    pub fn merge(&mut self, other: &Errors) {
        for (kind, (n, detail)) in &other.kinds {
            self.kinds
                .entry(kind)
                .or_insert_with(|| (0, detail.clone()))
                .0 += n;
        }
    }

    pub fn total(&self) -> u64 {
        self.kinds.values().map(|(n, _)| n).sum()
    }

    pub fn to_json(&self) -> serde_json::Value {
        self.kinds
            .iter()
            .map(|(k, (n, _))| ((*k).to_owned(), serde_json::Value::from(*n)))
            .collect::<serde_json::Map<_, _>>()
            .into()
    }

    /// One line per kind: count and the first detail seen.
    pub fn describe(&self) -> Vec<String> {
        self.kinds
            .iter()
            .map(|(k, (n, d))| format!("{n} × {k} (first: {d})"))
            .collect()
    }
}

/// The shared latency histogram, in nanoseconds.
#[derive(Clone)]
pub struct Latencies {
    hist: Arc<Mutex<Histogram<u64>>>,
}

impl fmt::Debug for Latencies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Latencies")
            .field("count", &self.lock().len())
            .finish()
    }
}

/// Samples above this are clamped; nothing in a bounded run waits longer.
const MAX_NANOS: u64 = 3_600_000_000_000;

impl Latencies {
    pub fn new() -> Latencies {
        // Three significant digits from 1 ns to an hour: a fixed size of a few
        // hundred KiB, allocated once.
        let hist = Histogram::new_with_bounds(1, MAX_NANOS, 3)
            .unwrap_or_else(|_| unreachable!("the bounds are constants that are valid"));
        Latencies {
            hist: Arc::new(Mutex::new(hist)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Histogram<u64>> {
        // A panic elsewhere cannot leave a histogram half-updated in a harmful way.
        self.hist.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A local recorder that flushes into this histogram.
    pub fn recorder(&self) -> Recorder {
        Recorder {
            shared: self.clone(),
            batch: Vec::with_capacity(BATCH),
        }
    }

    pub fn summary(&self) -> LatencySummary {
        let h = self.lock();
        let us = |n: u64| n as f64 / 1000.0;
        LatencySummary {
            count: h.len(),
            p50: us(h.value_at_quantile(0.50)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
            mean: h.mean() / 1000.0,
        }
    }
}

const BATCH: usize = 256;

/// Per-connection latency batch; flushed when full and when dropped.
pub struct Recorder {
    shared: Latencies,
    batch: Vec<u64>,
}

impl Recorder {
    pub fn record(&mut self, d: Duration) {
        self.batch
            .push(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1));
        if self.batch.len() >= BATCH {
            self.flush();
        }
    }

    pub fn flush(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let mut h = self.shared.lock();
        for &v in &self.batch {
            h.saturating_record(v);
        }
        self.batch.clear();
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy)]
pub struct LatencySummary {
    pub count: u64,
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

impl LatencySummary {
    pub fn to_json(self) -> serde_json::Value {
        serde_json::json!({
            "count": self.count,
            "p50": round(self.p50, 1),
            "p99": round(self.p99, 1),
            "p999": round(self.p999, 1),
            "max": round(self.max, 1),
            "mean": round(self.mean, 1),
        })
    }
}

/// Rounds to `digits` decimals for the JSON output.
pub fn round(x: f64, digits: i32) -> f64 {
    let p = 10f64.powi(digits);
    (x * p).round() / p
}
