//! The latency histogram layout shared by the data plane and the analysis.
//!
//! The data plane records every response time into a per-thread array of atomic counters indexed
//! by [`bucket_of`]; the controller sums those arrays into a [`Histogram`] (with
//! [`Histogram::from_counts`]), keeps cumulative snapshots and diffs them with [`Histogram::sub`]
//! to get the requests of the window being judged.
//!
//! The layout is *log-linear*: every power of two from 2¹⁰ ns (≈ 1 µs) to 2³⁶ ns (≈ 68.7 s) is
//! cut into 8 equal sub-buckets, so bucket `[lo, hi)` always has `hi / lo ≤ 9/8`: any value is
//! known to within 12.5 % of itself. Values below 1,024 ns land in the first bucket (which
//! therefore starts at 0) and values from 2³⁶ ns up in the last one, so a time of more than
//! 68.7 s reads as 68.7 s. That is [`BUCKETS`] = 26 × 8 = 208 counters, 1,664 bytes per
//! histogram.

use std::fmt;
use std::time::Duration;

/// log2 of the smallest value with a bucket of its own (1,024 ns).
const MIN_EXP: u32 = 10;
/// log2 of the end of the last bucket (2³⁶ ns ≈ 68.7 s).
const MAX_EXP: u32 = 36;
/// Sub-buckets per power of two: 2³ = 8, hence a relative width of at most 1/8.
const SUB_BITS: u32 = 3;
const SUB: usize = 1 << SUB_BITS;

/// Number of buckets in the layout.
pub const BUCKETS: usize = (MAX_EXP - MIN_EXP) as usize * SUB;

/// The bucket a time of `nanos` nanoseconds falls into. No branch on the value beyond the clamp,
/// no allocation: this runs on the request path.
#[inline]
pub fn bucket_of(nanos: u64) -> usize {
    let v = nanos.clamp(1 << MIN_EXP, (1 << MAX_EXP) - 1);
    // `e` is the power of two the value lies in (10..=35): the top bit's position.
    let e = 63 - v.leading_zeros();
    // The three bits after the top bit pick one of the 8 sub-buckets of that power of two.
    let sub = (v >> (e - SUB_BITS)) as usize & (SUB - 1);
    (e - MIN_EXP) as usize * SUB + sub
}

/// The exclusive upper end of bucket `i` in nanoseconds (`i` past the end is read as the last
/// bucket).
pub fn bucket_upper_nanos(i: usize) -> u64 {
    let i = i.min(BUCKETS - 1);
    let e = MIN_EXP + (i / SUB) as u32;
    (SUB as u64 + 1 + (i % SUB) as u64) << (e - SUB_BITS)
}

/// The inclusive lower end of bucket `i` in nanoseconds: 0 for the first bucket, which also holds
/// everything below 1,024 ns.
pub(crate) fn bucket_lower_nanos(i: usize) -> u64 {
    match i.min(BUCKETS - 1) {
        0 => 0,
        i => bucket_upper_nanos(i - 1),
    }
}

/// Counts of response times per bucket of the layout.
#[derive(Clone, PartialEq, Eq)]
pub struct Histogram {
    counts: Box<[u64; BUCKETS]>,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: Box::new([0; BUCKETS]),
        }
    }
}

impl fmt::Debug for Histogram {
    // 208 counters, mostly zero: show only the occupied buckets, by their upper end.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(
                self.counts
                    .iter()
                    .enumerate()
                    .filter(|(_, n)| **n > 0)
                    .map(|(i, n)| (bucket_upper_nanos(i), n)),
            )
            .finish()
    }
}

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Self::default()
    }

    /// A histogram from per-bucket counts in layout order (e.g. the data plane's atomics, summed
    /// over threads). Counts past [`BUCKETS`] are added to the last bucket, missing ones are 0.
    pub fn from_counts(counts: &[u64]) -> Self {
        let mut h = Self::default();
        for (i, n) in counts.iter().enumerate() {
            let slot = &mut h.counts[i.min(BUCKETS - 1)];
            *slot = slot.saturating_add(*n);
        }
        h
    }

    /// The per-bucket counts in layout order (what [`Histogram::from_counts`] takes back).
    pub fn counts(&self) -> &[u64; BUCKETS] {
        &self.counts
    }

    /// Counts one response time.
    pub fn record(&mut self, nanos: u64) {
        let slot = &mut self.counts[bucket_of(nanos)];
        *slot = slot.saturating_add(1);
    }

    /// Adds `other`'s counts to these.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a = a.saturating_add(*b);
        }
    }

    /// What was recorded since `earlier`, a previous snapshot of the same cumulative histogram.
    /// Saturates at 0 per bucket, so a counter reset (a restarted gateway) cannot go negative.
    pub fn sub(&self, earlier: &Histogram) -> Histogram {
        let mut h = self.clone();
        for (a, b) in h.counts.iter_mut().zip(earlier.counts.iter()) {
            *a = a.saturating_sub(*b);
        }
        h
    }

    /// The number of recorded times.
    pub fn count(&self) -> u64 {
        self.counts.iter().fold(0u64, |s, n| s.saturating_add(*n))
    }

    /// The `q`-quantile (`0 ≤ q ≤ 1`, e.g. 0.99 for p99), interpolated linearly inside its
    /// bucket as Prometheus' `histogram_quantile` does, so it is off by at most the bucket's
    /// width (12.5 %). `None` when nothing was recorded or `q` is not in `[0, 1]`.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        if !(0.0..=1.0).contains(&q) {
            return None;
        }
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = q * total as f64;
        let mut before = 0u64;
        for (i, &n) in self.counts.iter().enumerate() {
            if n > 0 && before.saturating_add(n) as f64 >= rank {
                let lo = bucket_lower_nanos(i) as f64;
                let hi = bucket_upper_nanos(i) as f64;
                let within = ((rank - before as f64) / n as f64).clamp(0.0, 1.0);
                return Some(Duration::from_nanos(
                    (lo + (hi - lo) * within).round() as u64
                ));
            }
            before = before.saturating_add(n);
        }
        // Unreachable with consistent counts (rank ≤ total); answer the top of the last
        // occupied bucket rather than panic.
        let last = self.counts.iter().rposition(|n| *n > 0)?;
        Some(Duration::from_nanos(bucket_upper_nanos(last)))
    }

    /// The bucket holding the `k`-th smallest recorded time (`1 ≤ k ≤ count`).
    pub(crate) fn bucket_of_rank(&self, k: u64) -> Option<usize> {
        if k == 0 {
            return None;
        }
        let mut seen = 0u64;
        for (i, &n) in self.counts.iter().enumerate() {
            seen = seen.saturating_add(n);
            if seen >= k {
                return Some(i);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_edges() {
        assert_eq!(BUCKETS, 208);
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(1023), 0);
        assert_eq!(bucket_of(1024), 0);
        assert_eq!(bucket_of(1151), 0);
        assert_eq!(bucket_of(1152), 1);
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
        assert_eq!(bucket_upper_nanos(0), 1152);
        assert_eq!(bucket_upper_nanos(BUCKETS - 1), 1 << 36);
        assert_eq!(bucket_upper_nanos(usize::MAX), 1 << 36);
        assert_eq!(bucket_lower_nanos(0), 0);
        assert_eq!(bucket_lower_nanos(1), 1152);
        for i in 0..BUCKETS {
            // Every bucket's ends map back to it.
            let lo = bucket_lower_nanos(i).max(1024);
            assert_eq!(bucket_of(lo), i, "lower end of {i}");
            assert_eq!(bucket_of(bucket_upper_nanos(i) - 1), i, "upper end of {i}");
        }
    }

    #[test]
    fn ranks() {
        let mut h = Histogram::new();
        h.record(2_000);
        h.record(2_000);
        h.record(5_000_000);
        assert_eq!(h.bucket_of_rank(0), None);
        assert_eq!(h.bucket_of_rank(1), Some(bucket_of(2_000)));
        assert_eq!(h.bucket_of_rank(2), Some(bucket_of(2_000)));
        assert_eq!(h.bucket_of_rank(3), Some(bucket_of(5_000_000)));
        assert_eq!(h.bucket_of_rank(4), None);
    }
}
