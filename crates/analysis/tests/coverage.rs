//! The confidence sequences cover the truth at *every* look in at least 1 − α of simulated runs.
//! Each run looks after every batch of observations, from `FIRST` on (as the analysis does after
//! min_requests), and counts as a miss if any look excludes the true value. Seeded, bounded.

mod common;

use common::Rng;
use graylane_analysis::Histogram;
use graylane_analysis::stats::{
    Boundary, Estimate, normal_quantile, proportion, proportion_difference, quantile_bounds,
};

const ALPHA: f64 = 0.05;
const RUNS: usize = 400;
const FIRST: u64 = 100;
const LAST: u64 = 5_000;
const EVERY: u64 = 25;

fn boundary() -> Boundary {
    Boundary::new(ALPHA, FIRST as f64).unwrap()
}

/// Misses over `RUNS` runs of `look(rng, n) -> covered?`, called with n = FIRST, FIRST+EVERY, ….
fn misses(seed: u64, mut step: impl FnMut(&mut Rng, u64, bool) -> bool) -> usize {
    let mut missed = 0;
    for run in 0..RUNS {
        let mut rng = Rng::new(seed + run as u64);
        let mut covered = true;
        for n in 1..=LAST {
            let look = n >= FIRST && n % EVERY == 0;
            covered &= step(&mut rng, n, look);
        }
        missed += usize::from(!covered);
    }
    missed
}

fn assert_coverage(what: &str, missed: usize) {
    let allowed = (ALPHA * RUNS as f64) as usize;
    assert!(
        missed <= allowed,
        "{what}: missed the truth in {missed} of {RUNS} runs (α allows {allowed})"
    );
}

#[test]
fn proportion_sequence_covers_the_rate() {
    let b = boundary();
    for (p, seed) in [(0.001, 10), (0.01, 10_000), (0.05, 20_000), (0.3, 40_000)] {
        let mut x = 0;
        let missed = misses(seed, |rng, n, look| {
            if n == 1 {
                x = 0;
            }
            x += u64::from(rng.bernoulli(p));
            if !look {
                return true;
            }
            let i = proportion(x, n, &b).unwrap();
            i.low <= p && p <= i.high
        });
        assert_coverage(&format!("rate {p}"), missed);
    }
}

#[test]
fn difference_sequence_covers_the_difference() {
    let b = boundary();
    // Two streams of different sizes (a 20% canary), like the error-rate comparison.
    let (pc, pb) = (0.03, 0.02);
    let (mut xc, mut nc, mut xb, mut nb) = (0, 0, 0, 0);
    let missed = misses(60_000, |rng, n, look| {
        if n == 1 {
            (xc, nc, xb, nb) = (0, 0, 0, 0);
        }
        // Each step brings one candidate and four baseline observations.
        nc += 1;
        xc += u64::from(rng.bernoulli(pc));
        for _ in 0..4 {
            nb += 1;
            xb += u64::from(rng.bernoulli(pb));
        }
        if !look {
            return true;
        }
        let i = proportion_difference((xc, nc), (xb, nb), &b).unwrap();
        i.low <= pc - pb && pc - pb <= i.high
    });
    assert_coverage("difference", missed);
}

#[test]
fn mean_sequence_covers_a_skewed_mean() {
    let b = boundary();
    // Exponential values (skewed, like order amounts) with mean 1.
    let (mut sum, mut sum_sq) = (0.0, 0.0);
    let missed = misses(80_000, |rng, n, look| {
        if n == 1 {
            (sum, sum_sq) = (0.0, 0.0);
        }
        let v = -rng.uniform().ln();
        sum += v;
        sum_sq += v * v;
        if !look {
            return true;
        }
        let i = Estimate::mean(n, sum, sum_sq).unwrap().interval(&b);
        i.low <= 1.0 && 1.0 <= i.high
    });
    assert_coverage("mean", missed);
}

#[test]
fn quantile_bounds_contain_the_true_quantile() {
    let b = boundary();
    let (median_ms, sigma) = (50.0, 0.5);
    for (q, seed) in [(0.5, 100_000), (0.99, 200_000)] {
        let truth = median_ms * 1e6 * (sigma * normal_quantile(q)).exp();
        let mut h = Histogram::new();
        let mut bounded_above = 0;
        let missed = misses(seed, |rng, n, look| {
            if n == 1 {
                h = Histogram::new();
            }
            h.record(rng.latency_nanos(median_ms, sigma));
            if !look {
                return true;
            }
            let (lo, hi) = quantile_bounds(&h, q, &b).unwrap();
            if n == LAST && hi.is_some() {
                bounded_above += 1;
            }
            lo.as_nanos() as f64 <= truth && hi.is_none_or(|hi| truth < hi.as_nanos() as f64)
        });
        assert_coverage(&format!("quantile {q}"), missed);
        // And the bounds are informative by the end, not merely (0, ∞).
        assert_eq!(bounded_above, RUNS, "q {q}: no upper bound after {LAST}");
    }
}

#[test]
fn quantile_bounds_tighten_and_handle_edges() {
    let b = boundary();
    let mut rng = Rng::new(7);
    let mut h = Histogram::new();
    assert_eq!(quantile_bounds(&h, 0.5, &b), None);
    h.record(1_000_000);
    assert_eq!(quantile_bounds(&h, 0.0, &b), None);
    assert_eq!(quantile_bounds(&h, 1.0, &b), None);
    assert_eq!(quantile_bounds(&h, f64::NAN, &b), None);
    // One observation says nothing about a p99.
    let (lo, hi) = quantile_bounds(&h, 0.99, &b).unwrap();
    assert_eq!((lo.as_nanos(), hi), (0, None));
    let mut widths = Vec::new();
    for n in 1..=100_000u64 {
        h.record(rng.latency_nanos(50.0, 0.5));
        if n % 20_000 == 0 {
            let (lo, hi) = quantile_bounds(&h, 0.99, &b).unwrap();
            widths.push(hi.unwrap().as_secs_f64() / lo.as_secs_f64());
        }
    }
    assert!(widths.windows(2).all(|w| w[1] <= w[0]), "{widths:?}");
    // After 100,000 observations the p99 is known to within two buckets or so.
    assert!(*widths.last().unwrap() < 1.4, "{widths:?}");
}

#[test]
fn relative_change_sequence_covers_the_ratio() {
    let b = boundary();
    // Conversion rates of 5% and 4% (a 25% lift), both streams the same size.
    for (pc, pb, seed) in [(0.05, 0.04, 120_000), (0.2, 0.2, 140_000)] {
        let (mut xc, mut xb) = (0, 0);
        let missed = misses(seed, |rng, n, look| {
            if n == 1 {
                (xc, xb) = (0, 0);
            }
            xc += u64::from(rng.bernoulli(pc));
            xb += u64::from(rng.bernoulli(pb));
            if !look {
                return true;
            }
            let c = Estimate::proportion(xc, n).unwrap();
            let base = Estimate::proportion(xb, n).unwrap();
            // An unbounded ratio (baseline not yet distinguishable from 0) covers everything.
            c.ratio_interval(&base, &b)
                .is_none_or(|r| r.low <= pc / pb && pc / pb <= r.high)
        });
        assert_coverage(&format!("ratio {pc}/{pb}"), missed);
    }
}
