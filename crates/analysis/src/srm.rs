//! The sample-ratio-mismatch (SRM) check of an experiment: do the variants receive the shares of
//! units they were configured for? A unit is a user (a distinct bucketing key), never a request:
//! requests per user vary wildly, so one heavy user would otherwise flag a correct split. A
//! mismatch means the assignment or the counting is broken (a variant that crashes before it
//! logs exposure, a redirect that drops a cookie), and every comparison between the variants is
//! then suspect, whatever its p-value.
//!
//! # The test: a Bayes factor that may be checked at any time
//!
//! The check runs every interval on the same, growing, counts, so it must stay valid however
//! often it is looked at. A fixed-horizon test (Pearson's χ² at `p < 0.001`, which this module
//! used before) flagged 1.8 % of correctly split experiments at some look when checked every
//! 100 users up to 20,000 (docs/analysis.md, row (e)). This is instead the sequential
//! multinomial test of Lindon & Malek (2022), *Anytime-valid inference for multinomial count
//! data* (NeurIPS; arXiv:2011.03567), the one behind Optimizely's and Netflix's SRM checks.
//!
//! With `k` variants of positive weight, configured shares `θ_i = w_i / Σw`, and `n_i` units
//! observed in variant `i` (`N = Σ n_i`), the alternative draws the true shares from a Dirichlet
//! prior centred on the configured ones, `Dir(c θ_1, …, c θ_k)`, and the Bayes factor of the
//! sequence of units against the configured split is the ratio of its Dirichlet-multinomial
//! marginal likelihood to its likelihood under `θ`:
//!
//! ```text
//!         Γ(c)          k   Γ(c θ_i + n_i)        1
//! BF_N = ──────────  ·  Π  ────────────────  ·  ──────
//!        Γ(c + N)      i=1    Γ(c θ_i)          θ_i^n_i
//! ```
//!
//! computed as `ln BF_N` with `ln Γ` ([`crate::stats`]'s Lanczos approximation), so it stays
//! finite for any counts a `u64` holds and any positive weights.
//!
//! **Why it is anytime-valid.** `BF_N` is a mixture, over the prior, of the likelihood ratios
//! `Π (p_i/θ_i)^n_i`; under the configured split each of those is a non-negative martingale
//! with mean 1 as units arrive, and so is their mixture. Ville's inequality then bounds the
//! chance that it *ever* reaches `1/α`:
//!
//! ```text
//! P( ∃ N : BF_N ≥ 1/α ) ≤ α
//! ```
//!
//! so flagging at `BF_N ≥ 1/α` wrongly flags a correct split, at *any* look — after every unit,
//! every interval, or whenever someone opens the dashboard — with probability at most `α`. No
//! minimum count is needed either: the bound is exact, not asymptotic.
//!
//! **The p-value** is `p_N = min(1, 1/BF_N)` at the current counts. Stateless, yet valid: the
//! event "`p_N ≤ a` at some look" is the event "`BF_N ≥ 1/a` at some look", which Ville bounds
//! by `a`, and at any look chosen by any rule (a stopping time) `P(p_τ ≤ a) ≤ a` by optional
//! stopping. The running minimum `min(1, 1/max BF)` of the paper only makes it monotone; the
//! event that it ever crosses `a` is the same, so the flag's guarantee is the same. What the
//! stateless form gives up: under a correct split a value near the threshold may drift back up.
//!
//! **The level**, `α = 0.001` ([`SRM_ALPHA`]): a correctly split experiment is flagged with
//! probability at most 0.1 % over its whole life, checked as often as anyone likes — the same
//! strictness as the χ²'s `p < 0.001` had at a single look, because a false alarm discredits an
//! experiment.
//!
//! **The prior's concentration**, `c = 1000` ([`SRM_PRIOR_CONCENTRATION`]): `c` is the prior's
//! weight in units. Under the alternative the shares spread around the configured ones with a
//! standard deviation of `sqrt(θ(1 − θ)/(c + 1))`, 1.6 points for a 50/50 split: the size of
//! mismatch a broken assignment or exposure log produces and that matters. A smaller `c` bets
//! on gross mismatches (a variant that receives nothing is flagged sooner), a larger one on
//! subtle ones (found later). By the normal approximation
//! `ln BF ≈ ½ ln(c/(c + N)) + N/(N + c) · X²/2`, a 52/48 split of 20,000 users (`X² ≈ 32`)
//! clears `ln 1000` with the least margin needed at `c` near 1,000, and the simulator confirms
//! it: of `c` = 100, 300, 1,000, 3,000 and 10,000, `c = 1000` flags the 52/48 case by 20,000
//! users most often (docs/analysis.md).
//!
//! **Sampled counts.** Past about 12,000 units per version and worker the data plane keeps a
//! uniform sample of units, thinned by levels (`crates/proxy/src/metrics/units.rs`). Each
//! level's counts are a growing uniform subsequence of the units, so the guarantee holds along
//! each level; an experiment whose sample is thinned `L` times has at most `L · α` in all.

use serde::{Deserialize, Serialize};

use crate::stats::ln_gamma;

/// The level: a correctly split experiment is flagged, at any of however many looks, with
/// probability at most this. It flags once the Bayes factor reaches `1/SRM_ALPHA`.
pub const SRM_ALPHA: f64 = 0.001;
/// The concentration `c` of the Dirichlet prior on the true shares (its weight in units).
pub const SRM_PRIOR_CONCENTRATION: f64 = 1_000.0;

/// The outcome of the SRM check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Srm {
    /// `ln BF`, the natural logarithm of the Bayes factor for a mismatch against the configured
    /// split (0 when it cannot be computed). A logarithm because the factor itself overflows
    /// an `f64` on large, lopsided counts.
    pub statistic: f64,
    /// The anytime-valid p-value `min(1, 1/BF)` (1 when it cannot be computed).
    pub p_value: f64,
    /// Whether the split is a mismatch: the Bayes factor is at least `1/`[`SRM_ALPHA`].
    pub flagged: bool,
    /// For people: the counts against the expected shares, and the conclusion.
    pub reason: String,
}

/// One variant with a positive weight: its units and `ln θ`, the log of its configured share.
struct Variant {
    units: u64,
    ln_share: f64,
}

/// The variants with a positive weight, or why the split cannot be judged.
fn variants(observed: &[u64], expected_weights: &[f64]) -> Result<Vec<Variant>, String> {
    if observed.len() != expected_weights.len() {
        return Err(format!(
            "{} counts for {} weights",
            observed.len(),
            expected_weights.len()
        ));
    }
    if let Some(w) = expected_weights
        .iter()
        .find(|w| !(w.is_finite() && **w >= 0.0))
    {
        return Err(format!("weight {w} is not a share"));
    }
    // Shares in logs, relative to the largest weight, so that neither weights near f64::MAX
    // (the sum overflows) nor far apart (a share underflows to 0) lose a variant.
    let largest = expected_weights.iter().copied().fold(0.0, f64::max);
    let relative_total: f64 = expected_weights.iter().map(|w| w / largest).sum();
    let ln_total = largest.ln() + relative_total.ln();
    let variants: Vec<Variant> = observed
        .iter()
        .zip(expected_weights)
        .filter(|(_, w)| **w > 0.0)
        .map(|(o, w)| Variant {
            units: *o,
            ln_share: w.ln() - ln_total,
        })
        .collect();
    if variants.len() < 2 {
        return Err("fewer than two variants with a weight".into());
    }
    Ok(variants)
}

/// `ln Γ(a + n) − ln Γ(a)`, the log of the rising factorial `a (a + 1) ⋯ (a + n − 1)`.
fn ln_rising(a: f64, n: f64) -> f64 {
    if n == 0.0 {
        0.0
    } else {
        ln_gamma(a + n) - ln_gamma(a)
    }
}

fn ln_bf(variants: &[Variant], concentration: f64) -> f64 {
    // A share so small that c θ underflows gets the smallest positive prior weight instead: any
    // Dirichlet prior keeps the mixture a martingale, so the test stays valid.
    let prior: Vec<f64> = variants
        .iter()
        .map(|v| (concentration * v.ln_share.exp()).max(f64::MIN_POSITIVE))
        .collect();
    let prior_total: f64 = prior.iter().sum();
    let units: f64 = variants.iter().map(|v| v.units as f64).sum();
    let per_variant: f64 = variants
        .iter()
        .zip(&prior)
        .map(|(v, a)| {
            let n = v.units as f64;
            let null = if n == 0.0 { 0.0 } else { n * v.ln_share };
            ln_rising(*a, n) - null
        })
        .sum();
    per_variant - ln_rising(prior_total, units)
}

/// `ln BF`: the log of the Dirichlet-multinomial Bayes factor of `observed` units per variant
/// against the configured `expected_weights` (same order, any positive scale; weight-0 variants
/// take no part), with a `Dir(c θ)` prior of the given `concentration` `c` (see the module
/// documentation). `None` when the split cannot be judged: mismatched lengths, a weight that is
/// not finite and non-negative, fewer than two positive weights, or a concentration that is not
/// finite and positive. Finite for any counts.
pub fn ln_bayes_factor(
    observed: &[u64],
    expected_weights: &[f64],
    concentration: f64,
) -> Option<f64> {
    if !(concentration.is_finite() && concentration > 0.0) {
        return None;
    }
    let variants = variants(observed, expected_weights).ok()?;
    Some(ln_bf(&variants, concentration))
}

/// Checks `observed` units per variant against the configured `expected_weights` (in the same
/// order; any positive scale), with the anytime-valid test of the module documentation:
/// [`SRM_PRIOR_CONCENTRATION`], flagged at a Bayes factor of `1/`[`SRM_ALPHA`]. Variants with
/// weight 0 take no part: they are meant to get only forced traffic.
pub fn sample_ratio_mismatch(observed: &[u64], expected_weights: &[f64]) -> Srm {
    let unjudged = |reason: String| Srm {
        statistic: 0.0,
        p_value: 1.0,
        flagged: false,
        reason,
    };
    let variants = match variants(observed, expected_weights) {
        Ok(v) => v,
        Err(reason) => return unjudged(reason),
    };
    let units: f64 = variants.iter().map(|v| v.units as f64).sum();
    if units == 0.0 {
        return unjudged("no units yet".into());
    }
    let statistic = ln_bf(&variants, SRM_PRIOR_CONCENTRATION);
    let p_value = (-statistic).exp().min(1.0);
    let flagged = p_value <= SRM_ALPHA;
    let shares = variants
        .iter()
        .map(|v| format!("{:.1}%", v.units as f64 / units * 100.0))
        .collect::<Vec<_>>()
        .join(" / ");
    let wanted = variants
        .iter()
        .map(|v| format!("{:.1}%", v.ln_share.exp() * 100.0))
        .collect::<Vec<_>>()
        .join(" / ");
    // e^709 is the largest power of e an f64 holds; past it, say the power.
    let factor = if statistic < 709.0 {
        format!("{:.3e}", statistic.exp())
    } else {
        format!("e^{statistic:.0}")
    };
    let threshold = 1.0 / SRM_ALPHA;
    let verdict = if flagged {
        format!("sample ratio mismatch (Bayes factor ≥ {threshold})")
    } else {
        "consistent with the configured split".into()
    };
    Srm {
        statistic,
        p_value,
        flagged,
        reason: format!(
            "{shares} of {units} units vs {wanted} configured: Bayes factor {factor} for a \
             mismatch (flags at {threshold}), p = {p_value:.3e}: {verdict}"
        ),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn counts_exactly_in_the_configured_shares_never_flag() {
        // At the configured shares the null is the maximum-likelihood split, which no mixture
        // beats: the Bayes factor is below 1, whatever the number of units.
        for n in [1u64, 10, 100, 1_000, 10_000, 1_000_000, 1_000_000_000] {
            for (observed, weights) in [
                (vec![n, n], vec![50.0, 50.0]),
                (vec![9 * n, n], vec![90.0, 10.0]),
                (vec![2 * n, 3 * n, 5 * n], vec![20.0, 30.0, 50.0]),
            ] {
                let srm = sample_ratio_mismatch(&observed, &weights);
                assert!(!srm.flagged, "{}", srm.reason);
                assert!(srm.statistic < 0.0, "{}", srm.reason);
                assert_eq!(srm.p_value, 1.0, "{}", srm.reason);
                assert!(
                    srm.reason.ends_with("consistent with the configured split"),
                    "{}",
                    srm.reason
                );
            }
        }
    }

    #[test]
    fn a_gross_mismatch_flags() {
        let srm = sample_ratio_mismatch(&[600, 400], &[50.0, 50.0]);
        assert!(srm.flagged, "{}", srm.reason);
        assert!(srm.p_value < SRM_ALPHA, "{}", srm.reason);
        assert!(
            srm.reason
                .starts_with("60.0% / 40.0% of 1000 units vs 50.0% / 50.0% configured"),
            "{}",
            srm.reason
        );
        assert!(
            srm.reason
                .ends_with("sample ratio mismatch (Bayes factor ≥ 1000)"),
            "{}",
            srm.reason
        );
    }

    #[test]
    fn a_52_48_split_is_flagged_at_20000_users_not_yet_at_10000() {
        let srm = sample_ratio_mismatch(&[10_400, 9_600], &[50.0, 50.0]);
        assert!(srm.flagged, "{}", srm.reason);
        // The formula evaluated independently with Python's math.lgamma.
        assert!(
            (srm.statistic - 13.720_009_946).abs() < 1e-6,
            "{}",
            srm.statistic
        );
        assert!((srm.p_value - (-13.720_009_946f64).exp()).abs() < 1e-12);
        // The price of looking at any time: at 10,000 users the same skew is not yet evidence
        // enough (a fixed-horizon χ² would say p = 6e-5 there, but only for a single look).
        let srm = sample_ratio_mismatch(&[5_200, 4_800], &[50.0, 50.0]);
        assert!(!srm.flagged, "{}", srm.reason);
        assert!(
            srm.p_value > SRM_ALPHA && srm.p_value < 0.01,
            "{}",
            srm.p_value
        );
    }

    #[test]
    fn a_variant_that_receives_nothing_flags() {
        let srm = sample_ratio_mismatch(&[200, 0], &[1.0, 1.0]);
        assert!(srm.flagged, "{}", srm.reason);
        assert!(
            srm.reason.starts_with("100.0% / 0.0% of 200 units"),
            "{}",
            srm.reason
        );
        let srm = sample_ratio_mismatch(&[0, 0, 300], &[1.0, 1.0, 1.0]);
        assert!(srm.flagged, "{}", srm.reason);
        // 50 users all on one side happen once in 2^49 correct splits, but the prior expects
        // mismatches of a few points, so this is not yet enough to say.
        let srm = sample_ratio_mismatch(&[50, 0], &[1.0, 1.0]);
        assert!(!srm.flagged, "{}", srm.reason);
    }

    #[test]
    fn unequal_weights_are_judged_against_their_own_shares() {
        let srm = sample_ratio_mismatch(&[9_000, 1_000], &[90.0, 10.0]);
        assert!(!srm.flagged, "{}", srm.reason);
        // 7% where 10% were configured.
        let srm = sample_ratio_mismatch(&[9_300, 700], &[90.0, 10.0]);
        assert!(srm.flagged, "{}", srm.reason);
        assert!(
            srm.reason.contains("vs 90.0% / 10.0% configured"),
            "{}",
            srm.reason
        );
        // An even split is right for 50/50 and wrong for 90/10.
        assert!(!sample_ratio_mismatch(&[5_000, 5_000], &[50.0, 50.0]).flagged);
        assert!(sample_ratio_mismatch(&[5_000, 5_000], &[90.0, 10.0]).flagged);
        // The scale of the weights does not matter.
        let a = sample_ratio_mismatch(&[9_100, 900], &[90.0, 10.0]);
        let b = sample_ratio_mismatch(&[9_100, 900], &[0.9, 0.1]);
        assert!((a.statistic - b.statistic).abs() < 1e-9);
    }

    #[test]
    fn three_variants_are_judged_together() {
        // 20/30/50 configured; the first gains what the others lose.
        let srm = sample_ratio_mismatch(&[2_300, 2_900, 4_800], &[0.2, 0.3, 0.5]);
        assert!(srm.flagged, "{}", srm.reason);
        let srm = sample_ratio_mismatch(&[2_010, 2_990, 5_000], &[0.2, 0.3, 0.5]);
        assert!(!srm.flagged, "{}", srm.reason);
        // A weight-0 variant (forced traffic only) takes no part.
        let srm = sample_ratio_mismatch(&[5_000, 5_000, 40], &[1.0, 1.0, 0.0]);
        assert!(!srm.flagged);
        assert!(srm.reason.contains("of 10000 units"), "{}", srm.reason);
    }

    #[test]
    fn huge_counts_stay_finite() {
        let even = sample_ratio_mismatch(&[1_000_000_000, 1_000_000_000], &[1.0, 1.0]);
        assert!(
            even.statistic.is_finite() && !even.flagged,
            "{}",
            even.reason
        );
        // 50.05 / 49.95 of two billion: small, but certain.
        let skew = sample_ratio_mismatch(&[1_001_000_000, 999_000_000], &[1.0, 1.0]);
        assert!(
            skew.statistic.is_finite() && skew.flagged,
            "{}",
            skew.reason
        );
        let huge = sample_ratio_mismatch(&[u64::MAX, u64::MAX / 2], &[1.0, 1.0]);
        assert!(
            huge.statistic.is_finite() && huge.flagged,
            "{}",
            huge.reason
        );
        assert_eq!(huge.p_value, 0.0);
        assert!(huge.reason.contains("Bayes factor e^"), "{}", huge.reason);
        // JSON has no infinity: the result must serialize as numbers.
        let json = serde_json::to_string(&huge).unwrap();
        assert_eq!(serde_json::from_str::<Srm>(&json).unwrap(), huge);
    }

    #[test]
    fn bad_input_is_not_judged() {
        for (observed, weights, why) in [
            (vec![1, 2], vec![1.0], "2 counts for 1 weights"),
            (vec![1, 2], vec![1.0, f64::NAN], "weight NaN is not a share"),
            (vec![1, 2], vec![1.0, -1.0], "weight -1 is not a share"),
            (
                vec![1, 2],
                vec![1.0, f64::INFINITY],
                "weight inf is not a share",
            ),
            (
                vec![100, 2],
                vec![1.0, 0.0],
                "fewer than two variants with a weight",
            ),
            (vec![], vec![], "fewer than two variants with a weight"),
            (vec![0, 0], vec![1.0, 1.0], "no units yet"),
        ] {
            let srm = sample_ratio_mismatch(&observed, &weights);
            assert_eq!(
                (srm.statistic, srm.p_value, srm.flagged, srm.reason.as_str()),
                (0.0, 1.0, false, why)
            );
        }
        assert_eq!(ln_bayes_factor(&[1, 2], &[1.0, 1.0], 0.0), None);
        assert_eq!(ln_bayes_factor(&[1, 2], &[1.0, 1.0], f64::NAN), None);
    }

    fn weight() -> impl Strategy<Value = f64> {
        prop_oneof![Just(0.0), 1e-300..1e-10f64, 0.01..100.0f64, 1e10..f64::MAX,]
    }

    proptest! {
        #[test]
        fn the_bayes_factor_is_finite_and_not_negative_for_any_counts(
            split in prop::collection::vec((any::<u64>(), weight()), 0..6),
            small in prop::collection::vec(0u64..1_000, 0..6),
            concentration in prop_oneof![Just(SRM_PRIOR_CONCENTRATION), 1e-6..1e9f64],
        ) {
            let (mut observed, weights): (Vec<u64>, Vec<f64>) = split.into_iter().unzip();
            // Small counts too, where rounding near Γ's poles would show.
            for (o, s) in observed.iter_mut().zip(&small) {
                *o = *s;
            }
            if let Some(ln_bf) = ln_bayes_factor(&observed, &weights, concentration) {
                prop_assert!(ln_bf.is_finite(), "{observed:?} {weights:?}: {ln_bf}");
                let bf = ln_bf.exp();
                prop_assert!(bf >= 0.0, "{observed:?} {weights:?}: {bf}");
            }
            let srm = sample_ratio_mismatch(&observed, &weights);
            prop_assert!(srm.statistic.is_finite(), "{}", srm.reason);
            prop_assert!((0.0..=1.0).contains(&srm.p_value), "{}", srm.reason);
            prop_assert_eq!(srm.flagged, srm.statistic >= -SRM_ALPHA.ln() - 1e-9 && srm.p_value <= SRM_ALPHA);
        }
    }
}
