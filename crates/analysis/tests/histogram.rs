//! The latency layout: monotone, within 12.5 %, and accurate quantiles.

mod common;

use std::time::Duration;

use common::Rng;
use graylane_analysis::Histogram;
use graylane_analysis::histogram::{BUCKETS, bucket_of, bucket_upper_nanos};

fn lower(i: usize) -> u64 {
    if i == 0 { 0 } else { bucket_upper_nanos(i - 1) }
}

#[test]
fn bucket_of_is_monotone_and_covers_every_bucket() {
    let mut rng = Rng::new(1);
    let mut values: Vec<u64> = (0..100_000u64).collect();
    values.extend((0..100_000).map(|_| rng.next_u64() >> (rng.next_u64() % 64)));
    values.extend([u64::MAX, 1 << 36, (1 << 36) - 1, 1 << 40]);
    values.sort_unstable();
    let mut last = 0;
    for v in values {
        let b = bucket_of(v);
        assert!(b >= last, "bucket_of({v}) = {b} after {last}");
        assert!(b < BUCKETS);
        last = b;
    }
    assert_eq!(last, BUCKETS - 1);
    // Upper ends strictly increase.
    for i in 1..BUCKETS {
        assert!(bucket_upper_nanos(i) > bucket_upper_nanos(i - 1));
    }
}

#[test]
fn relative_error_is_at_most_one_eighth() {
    let mut rng = Rng::new(2);
    for _ in 0..200_000 {
        // Log-uniform between 1 µs and 68 s.
        let v = (1024.0 * (rng.uniform() * 26.0 * std::f64::consts::LN_2).exp()) as u64;
        let v = v.clamp(1024, (1 << 36) - 1);
        let i = bucket_of(v);
        let (lo, hi) = (lower(i), bucket_upper_nanos(i));
        assert!(lo <= v && v < hi, "{v} not in bucket {i} [{lo}, {hi})");
        assert!(
            hi as f64 / lo.max(1024) as f64 <= 1.125 + 1e-12,
            "bucket {i}"
        );
    }
    // The ends clamp.
    assert_eq!(bucket_of(0), 0);
    assert_eq!(bucket_of(999), 0);
    assert_eq!(bucket_of(100 * 1_000_000_000), BUCKETS - 1);
}

#[test]
fn quantiles_are_within_a_bucket_of_the_exact_ones() {
    let mut rng = Rng::new(3);
    let mut h = Histogram::new();
    let mut exact: Vec<u64> = (0..100_000).map(|_| rng.latency_nanos(40.0, 0.8)).collect();
    for v in &exact {
        h.record(*v);
    }
    exact.sort_unstable();
    assert_eq!(h.count(), 100_000);
    for q in [0.01, 0.1, 0.5, 0.9, 0.95, 0.99, 0.999] {
        let want = exact[(q * exact.len() as f64) as usize] as f64;
        let got = h.quantile(q).unwrap().as_nanos() as f64;
        assert!(
            (got / want - 1.0).abs() <= 0.125,
            "q {q}: {got} vs exact {want}"
        );
    }
    // A single value: every quantile is in its bucket.
    let mut one = Histogram::new();
    one.record(5_000_000);
    let b = bucket_of(5_000_000);
    for q in [0.0, 0.5, 1.0] {
        let got = one.quantile(q).unwrap().as_nanos() as u64;
        assert!(
            lower(b) <= got && got <= bucket_upper_nanos(b),
            "q {q}: {got}"
        );
    }
}

#[test]
fn empty_and_bad_quantiles_are_none() {
    let h = Histogram::new();
    assert_eq!(h.count(), 0);
    assert_eq!(h.quantile(0.5), None);
    let mut h = Histogram::new();
    h.record(1_000_000);
    assert_eq!(h.quantile(f64::NAN), None);
    assert_eq!(h.quantile(-0.1), None);
    assert_eq!(h.quantile(1.1), None);
}

#[test]
fn merge_sub_and_from_counts() {
    let mut a = Histogram::new();
    let mut b = Histogram::new();
    for ms in 1..=100u64 {
        a.record(ms * 1_000_000);
        b.record(ms * 2_000_000);
    }
    let mut both = a.clone();
    both.merge(&b);
    assert_eq!(both.count(), 200);
    assert_eq!(both.sub(&a), b);
    assert_eq!(both.sub(&b), a);
    // Saturating: a snapshot from before a counter reset.
    assert_eq!(a.sub(&both).count(), 0);

    let mut counts = [0u64; BUCKETS + 3];
    counts[bucket_of(7_000_000)] = 5;
    counts[BUCKETS + 2] = 2; // past the end: folded into the last bucket
    let h = Histogram::from_counts(&counts);
    assert_eq!(h.count(), 7);
    assert_eq!(
        h.quantile(1.0),
        Some(Duration::from_nanos(bucket_upper_nanos(BUCKETS - 1)))
    );
    // Huge counts saturate instead of overflowing.
    let mut huge = Histogram::from_counts(&[u64::MAX, u64::MAX]);
    huge.merge(&huge.clone());
    assert_eq!(huge.count(), u64::MAX);
    assert!(huge.quantile(0.99).is_some());
}
