//! Statistics over latency samples: nearest-rank percentiles and the spread of a burst.
//!
//! Nearest rank (the smallest sample with at least p% of the samples at or below it) is what
//! latency reports usually mean by p99, and it never invents a value that was not measured.

use serde::{Deserialize, Serialize};

/// p50, p99 and max of a set of durations, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Summary {
    pub count: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

/// Nearest-rank percentile `p` (0–100) of `sorted` (ascending). `None` when empty.
pub fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

/// Summarizes durations in nanoseconds (sorts them in place).
pub fn summarize(samples_ns: &mut [u64]) -> Summary {
    samples_ns.sort_unstable();
    let n = samples_ns.len();
    if n == 0 {
        return Summary::default();
    }
    let sum: u128 = samples_ns.iter().map(|&v| u128::from(v)).sum();
    Summary {
        count: n,
        p50_ms: percentile(samples_ns, 50.0).map_or(0.0, ms),
        p99_ms: percentile(samples_ns, 99.0).map_or(0.0, ms),
        max_ms: samples_ns.last().copied().map_or(0.0, ms),
        mean_ms: (sum / n as u128) as f64 / 1e6,
    }
}

/// How a burst of events (reconnects) spread in time.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Spread {
    pub count: usize,
    /// From the first event to the last.
    pub spread_ms: f64,
    /// The most events that fell in one 10 ms bucket (counted from the first event).
    pub max_per_10ms: usize,
}

/// Spread of absolute timestamps in nanoseconds (any order).
pub fn spread(timestamps_ns: &[u64]) -> Spread {
    let (Some(&first), Some(&last)) = (timestamps_ns.iter().min(), timestamps_ns.iter().max())
    else {
        return Spread::default();
    };
    const BUCKET: u64 = 10_000_000;
    let mut buckets = vec![0usize; ((last - first) / BUCKET) as usize + 1];
    for &t in timestamps_ns {
        buckets[((t - first) / BUCKET) as usize] += 1;
    }
    Spread {
        count: timestamps_ns.len(),
        spread_ms: ms(last - first),
        max_per_10ms: buckets.into_iter().max().unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), Some(50));
        assert_eq!(percentile(&v, 99.0), Some(99));
        assert_eq!(percentile(&v, 100.0), Some(100));
        assert_eq!(percentile(&v, 0.0), Some(1));
        assert_eq!(percentile(&[7], 99.0), Some(7));
        assert_eq!(percentile(&[], 50.0), None);
        // Ten samples: p99 is the largest (rank ceil(9.9) = 10), p50 the fifth.
        let v: Vec<u64> = (1..=10).collect();
        assert_eq!(percentile(&v, 99.0), Some(10));
        assert_eq!(percentile(&v, 50.0), Some(5));
    }

    #[test]
    fn summary_in_milliseconds() {
        let mut v = vec![3_000_000, 1_000_000, 2_000_000, 10_000_000];
        let s = summarize(&mut v);
        assert_eq!(s.count, 4);
        assert_eq!(s.p50_ms, 2.0);
        assert_eq!(s.p99_ms, 10.0);
        assert_eq!(s.max_ms, 10.0);
        assert_eq!(s.mean_ms, 4.0);
        assert_eq!(summarize(&mut []), Summary::default());
    }

    #[test]
    fn spread_counts_the_busiest_10ms() {
        let base = 5_000_000_000u64;
        let ms = 1_000_000;
        let t = [
            base,
            base + 2 * ms,
            base + 9 * ms,
            base + 10 * ms,
            base + 55 * ms,
        ];
        let s = spread(&t);
        assert_eq!(s.count, 5);
        assert_eq!(s.spread_ms, 55.0);
        assert_eq!(s.max_per_10ms, 3);
        assert_eq!(spread(&[]), Spread::default());
        assert_eq!(spread(&[base]).max_per_10ms, 1);
    }
}
