//! The sample-ratio-mismatch check under simulated traffic: looked at again and again, it flags
//! a correct split in at most α of runs (where a fixed-horizon χ² looked at as often does not),
//! and it still finds a real 52/48 skew. Seeded, bounded.

mod common;

use common::Rng;
use graylane_analysis::sample_ratio_mismatch;
use graylane_analysis::srm::{SRM_PRIOR_CONCENTRATION, ln_bayes_factor};
use graylane_analysis::stats::chi_square_sf;

const RUNS: u64 = 1_000;
const UNITS: u64 = 5_000;
const EVERY: u64 = 5;

/// Draws a variant by its share.
fn draw(rng: &mut Rng, shares: &[f64]) -> usize {
    let mut u = rng.uniform();
    for (i, s) in shares.iter().enumerate() {
        if u <= *s {
            return i;
        }
        u -= s;
    }
    shares.len() - 1
}

/// Per run of a correctly split experiment, the largest `ln BF` and the smallest χ² p-value
/// over a look every `EVERY` units.
fn correct_splits(shares: &[f64], seed: u64) -> Vec<(f64, f64)> {
    (0..RUNS)
        .map(|run| {
            let mut rng = Rng::new(seed + run);
            let mut counts = vec![0u64; shares.len()];
            let (mut most, mut least_p) = (f64::NEG_INFINITY, 1.0f64);
            for unit in 1..=UNITS {
                counts[draw(&mut rng, shares)] += 1;
                if unit % EVERY == 0 {
                    let ln_bf = ln_bayes_factor(&counts, shares, SRM_PRIOR_CONCENTRATION)
                        .expect("a valid split");
                    most = most.max(ln_bf);
                    let n = unit as f64;
                    let x2: f64 = counts
                        .iter()
                        .zip(shares)
                        .map(|(o, s)| (*o as f64 - n * s).powi(2) / (n * s))
                        .sum();
                    least_p = least_p.min(chi_square_sf(x2, shares.len() as u32 - 1));
                }
            }
            (most, least_p)
        })
        .collect()
}

#[test]
fn a_correct_split_reaches_a_bayes_factor_of_1_over_alpha_in_at_most_alpha_of_runs() {
    for (shares, seed) in [
        (vec![0.5, 0.5], 1),
        (vec![0.9, 0.1], 10_000),
        (vec![0.2, 0.3, 0.5], 20_000),
    ] {
        let runs = correct_splits(&shares, seed);
        for alpha in [0.2, 0.05, 0.01] {
            let flagged = runs.iter().filter(|(m, _)| *m >= -f64::ln(alpha)).count();
            assert!(
                flagged as f64 <= alpha * RUNS as f64,
                "{shares:?}: {flagged} of {RUNS} runs reached 1/{alpha} at some look"
            );
        }
        // The χ² it replaces, looked at as often, flags far more than its level.
        let chi2 = runs.iter().filter(|(_, p)| *p < 0.05).count();
        assert!(
            chi2 as f64 > 2.0 * 0.05 * RUNS as f64,
            "{shares:?}: χ² at p < 0.05 flagged {chi2} of {RUNS}"
        );
    }
}

#[test]
fn a_52_48_skew_is_flagged_by_20000_users_in_most_runs() {
    let runs = 200usize;
    let flagged = (0..runs)
        .filter(|run| {
            let mut rng = Rng::new(30_000 + *run as u64);
            let mut counts = [0u64; 2];
            (1..=20_000).any(|unit| {
                counts[usize::from(rng.uniform() >= 0.52)] += 1;
                unit % 100 == 0 && sample_ratio_mismatch(&counts, &[50.0, 50.0]).flagged
            })
        })
        .count();
    assert!(flagged >= runs * 9 / 10, "{flagged} of {runs}");
}
