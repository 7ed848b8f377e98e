//! `sluice_websocket_message_size_bytes`: a histogram of plain atomics, rendered by a
//! collector of its own.
//!
//! The prometheus crate's `Histogram::observe` searches its buckets and adds three
//! atomics per value, and its `LocalHistogram` still does the search per value behind
//! a `RefCell`: 5 of the 12 ns a frame cost to track at 64 B (benches/hot_paths.rs,
//! frames). Here the buckets are powers of four from 64 bytes, so a size's bucket is
//! a leading-zeros count, and a read's sizes are gathered on the stack
//! ([`LocalSizes`]) and added with one atomic per bucket used.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, MetricFamily, MetricType};

/// Upper bounds: 64 B, 256 B, 1 KiB ... 16 MiB (64 · 4^k), then +Inf.
const BOUNDS: usize = 10;

/// The bucket a size falls in: 0 for up to 64 bytes, k for up to 64 · 4^k, BOUNDS
/// past 16 MiB.
fn bucket(size: u64) -> usize {
    if size <= 64 {
        return 0;
    }
    // Bits of (size - 1) / 64, halved (rounding up): log4 of size / 64, rounded up.
    let bits = 64 - ((size - 1) >> 6).leading_zeros() as usize;
    bits.div_ceil(2).min(BOUNDS)
}

fn upper_bound(k: usize) -> f64 {
    (64u64 << (2 * k)) as f64
}

/// One series: counts per bucket (not cumulative), the sum and the count.
#[derive(Default)]
pub struct Sizes {
    buckets: [AtomicU64; BOUNDS + 1],
    sum: AtomicU64,
    count: AtomicU64,
}

impl Sizes {
    /// Adds what a read gathered.
    pub fn add(&self, local: &LocalSizes) {
        if local.count == 0 {
            return;
        }
        for (b, &n) in self.buckets.iter().zip(&local.buckets) {
            if n > 0 {
                b.fetch_add(u64::from(n), Ordering::Relaxed);
            }
        }
        self.sum.fetch_add(local.sum, Ordering::Relaxed);
        self.count
            .fetch_add(u64::from(local.count), Ordering::Relaxed);
    }
}

/// Sizes gathered on the stack during one read.
#[derive(Default)]
pub struct LocalSizes {
    buckets: [u32; BOUNDS + 1],
    sum: u64,
    count: u32,
}

impl LocalSizes {
    pub fn observe(&mut self, size: u64) {
        self.buckets[bucket(size)] += 1;
        self.sum += size;
        self.count += 1;
    }
}

/// Series by route and direction.
type Series = HashMap<(String, &'static str), Arc<Sizes>>;

/// The family: every route's two series, rendered on scrape. Clones share the
/// series (one is registered, one hands out series).
#[derive(Clone)]
pub struct SizesFamily {
    desc: Desc,
    series: Arc<Mutex<Series>>,
}

pub const NAME: &str = "sluice_websocket_message_size_bytes";

impl SizesFamily {
    pub fn new() -> SizesFamily {
        SizesFamily {
            desc: Desc::new(
                NAME.to_owned(),
                "Sizes of the WebSocket messages tunnels carried (payload bytes, as sent: compressed where permessage-deflate is on).".to_owned(),
                vec!["route".to_owned(), "direction".to_owned()],
                HashMap::new(),
            )
            .expect("a valid description"),
            series: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// The series of `route` and `direction`; routes that share a name share it.
    pub fn series(&self, route: &str, direction: &'static str) -> Arc<Sizes> {
        let mut series = self.series.lock().unwrap_or_else(|p| p.into_inner());
        series
            .entry((route.to_owned(), direction))
            .or_default()
            .clone()
    }
}

impl Collector for SizesFamily {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let series = self.series.lock().unwrap_or_else(|p| p.into_inner());
        let mut keys: Vec<&(String, &'static str)> = series.keys().collect();
        keys.sort();
        let mut metrics = Vec::with_capacity(keys.len());
        for key in keys {
            let s = &series[key];
            let mut cumulative = 0;
            let mut buckets = Vec::with_capacity(BOUNDS);
            for k in 0..BOUNDS {
                cumulative += s.buckets[k].load(Ordering::Relaxed);
                let mut b = proto::Bucket::new();
                b.set_upper_bound(upper_bound(k));
                b.set_cumulative_count(cumulative);
                buckets.push(b);
            }
            let mut h = proto::Histogram::new();
            h.set_bucket(buckets);
            // The count is read after the buckets: a scrape may see a value in the
            // count that no bucket shows yet, never the reverse.
            h.set_sample_count(s.count.load(Ordering::Relaxed));
            h.set_sample_sum(s.sum.load(Ordering::Relaxed) as f64);
            let mut m =
                proto::Metric::from_label(vec![label("direction", key.1), label("route", &key.0)]);
            m.set_histogram(h);
            metrics.push(m);
        }
        let mut family = MetricFamily::new();
        family.set_name(NAME.to_owned());
        family.set_help(self.desc.help.clone());
        family.set_field_type(MetricType::HISTOGRAM);
        family.set_metric(metrics);
        vec![family]
    }
}

fn label(name: &str, value: &str) -> proto::LabelPair {
    let mut l = proto::LabelPair::new();
    l.set_name(name.to_owned());
    l.set_value(value.to_owned());
    l
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_fall_in_powers_of_four_from_64() {
        for (size, k) in [
            (0, 0),
            (64, 0),
            (65, 1),
            (256, 1),
            (257, 2),
            (1024, 2),
            (1025, 3),
            (16 << 20, 9),
            ((16 << 20) + 1, 10),
            (u64::MAX, 10),
        ] {
            assert_eq!(bucket(size), k, "{size}");
            if k < BOUNDS {
                assert!(size as f64 <= upper_bound(k));
            }
            if k > 0 && k <= BOUNDS {
                assert!(size as f64 > upper_bound(k - 1));
            }
        }
    }
}
