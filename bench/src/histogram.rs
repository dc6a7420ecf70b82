//! Latency histograms for millions of samples: recorded from many tasks at once without a
//! lock, sent between processes as JSON, merged, and read as percentiles or a CDF.
//!
//! Buckets are log-linear, as in HdrHistogram: exact below 128 ns, then 64 buckets per power
//! of two, so any value is known to within 1/64 (1.6 %). A recording is one relaxed atomic
//! add, which is what lets every connection of a load-generating process record its own
//! deliveries without a shared mutex.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// Buckets below this value hold one nanosecond each.
const EXACT: u64 = 128;
/// Buckets per power of two above [`EXACT`].
const PER_OCTAVE: u64 = 64;
/// Enough buckets for any u64 value.
const BUCKETS: usize = 3776;

/// The bucket a value in nanoseconds falls in.
fn bucket(ns: u64) -> usize {
    if ns < EXACT {
        return ns as usize;
    }
    let octave = 63 - u64::from(ns.leading_zeros()); // 7 or more
    let shift = octave - 6; // keeps the top 7 bits: 64..=127
    (shift * PER_OCTAVE + (ns >> shift)) as usize
}

/// The middle of a bucket, in nanoseconds.
fn bucket_value(index: usize) -> u64 {
    let index = index as u64;
    if index < EXACT {
        return index;
    }
    let shift = index / PER_OCTAVE - 1;
    let low = (index % PER_OCTAVE + PER_OCTAVE) << shift;
    low + (1 << shift) / 2
}

/// A histogram many threads record into; [`Recorder::take`] empties it into [`Latencies`].
pub struct Recorder {
    buckets: Box<[AtomicU64]>,
    max: AtomicU64,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            max: AtomicU64::new(0),
        }
    }
}

impl Recorder {
    pub fn record(&self, ns: u64) {
        self.buckets[bucket(ns)].fetch_add(1, Ordering::Relaxed);
        self.max.fetch_max(ns, Ordering::Relaxed);
    }

    /// What was recorded since the last call.
    pub fn take(&self) -> Latencies {
        let counts = self
            .buckets
            .iter()
            .enumerate()
            .filter_map(|(i, b)| match b.swap(0, Ordering::Relaxed) {
                0 => None,
                n => Some((i, n)),
            })
            .collect();
        Latencies {
            counts,
            max_ns: self.max.swap(0, Ordering::Relaxed),
        }
    }
}

/// A recorded distribution: sparse bucket counts and the exact maximum.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Latencies {
    counts: BTreeMap<usize, u64>,
    max_ns: u64,
}

impl Latencies {
    pub fn merge(&mut self, other: &Latencies) {
        for (&i, &n) in &other.counts {
            *self.counts.entry(i).or_default() += n;
        }
        self.max_ns = self.max_ns.max(other.max_ns);
    }

    pub fn count(&self) -> u64 {
        self.counts.values().sum()
    }

    /// The value at quantile `q` (0..=1) in milliseconds; NaN when empty.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        let rank = ((q * self.count() as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (&i, &n) in &self.counts {
            seen += n;
            if seen >= rank {
                return ms(bucket_value(i).min(self.max_ns));
            }
        }
        f64::NAN
    }

    pub fn max_ms(&self) -> f64 {
        match self.count() {
            0 => f64::NAN,
            _ => ms(self.max_ns),
        }
    }

    /// p50, p99, p99.9 and the maximum, in milliseconds.
    fn points_ms(&self) -> [f64; 4] {
        [
            self.quantile_ms(0.5),
            self.quantile_ms(0.99),
            self.quantile_ms(0.999),
            self.max_ms(),
        ]
    }

    /// `p50 … p99 … p99.9 … max …`, in milliseconds.
    pub fn summary(&self) -> String {
        let [p50, p99, p999, max] = self.points_ms();
        format!("p50 {p50:.3} ms  p99 {p99:.3} ms  p99.9 {p999:.3} ms  max {max:.3} ms")
    }

    /// The CSV header of [`Latencies::columns`].
    pub const COLUMNS: [&'static str; 4] = ["p50_ms", "p99_ms", "p999_ms", "max_ms"];

    /// p50, p99, p99.9 and the maximum as CSV cells, in milliseconds.
    pub fn columns(&self) -> [String; 4] {
        self.points_ms().map(|ms| format!("{ms:.3}"))
    }

    /// (milliseconds, fraction of samples at or below it), one point per non-empty bucket.
    pub fn cdf(&self) -> Vec<(f64, f64)> {
        let total = self.count() as f64;
        let mut seen = 0;
        self.counts
            .iter()
            .map(|(&i, &n)| {
                seen += n;
                (ms(bucket_value(i).min(self.max_ns)), seen as f64 / total)
            })
            .collect()
    }
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_within_one_sixty_fourth() {
        let mut previous = 0;
        for ns in 0..1_000_000u64 {
            let i = bucket(ns);
            assert!(i == previous || i == previous + 1, "{ns}");
            let error = bucket_value(i).abs_diff(ns) as f64;
            assert!(
                error <= ns as f64 / 64.0,
                "{ns} read back as {}",
                bucket_value(i)
            );
            previous = i;
        }
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn quantiles_of_a_merged_distribution() {
        let (a, b) = (Recorder::default(), Recorder::default());
        (1..=900).for_each(|ms| a.record(ms * 1_000_000));
        (901..=1000).for_each(|ms| b.record(ms * 1_000_000));
        let mut all = a.take();
        all.merge(&b.take());
        assert_eq!(all.count(), 1000);
        assert!((all.quantile_ms(0.5) - 500.0).abs() < 8.0);
        assert!((all.quantile_ms(0.99) - 990.0).abs() < 16.0);
        assert_eq!(all.max_ms(), 1000.0);
        assert_eq!(all.cdf().last().map(|p| p.1), Some(1.0));
        assert_eq!(a.take().count(), 0, "take empties the recorder");
    }
}
