//! The sample-ratio-mismatch (SRM) check of an experiment: do the variants receive the shares of
//! units they were configured for? A unit is a user (a distinct bucketing key), never a request:
//! requests per user vary wildly, so one heavy user would otherwise flag a correct split. A mismatch means the assignment or the counting is broken (a
//! variant that crashes before it logs exposure, a redirect that drops a cookie), and every
//! comparison between the variants is then suspect, whatever its p-value.
//!
//! Pearson's χ² goodness-of-fit test: with `N` units in all and variant `i` expected to receive
//! the share `w_i / Σw`, so `E_i = N w_i / Σw` units,
//!
//! ```text
//! X² = Σ (O_i − E_i)² / E_i,     p = P(χ²_{k−1} ≥ X²)
//! ```
//!
//! over the `k` variants with a positive weight. The check is run every interval; it flags at
//! `p < 0.001` — strict, because it is looked at again and again and a false alarm discredits an
//! experiment — and only once every variant is *expected* to have at least 8 units, where the χ²
//! approximation holds. (Expected rather than observed: a variant that receives nothing at all is
//! the worst mismatch there is, and must not be exempt.)

use serde::{Deserialize, Serialize};

use crate::stats::chi_square_sf;

/// The p-value below which a mismatch is flagged.
pub const SRM_P_VALUE: f64 = 0.001;
/// The expected units every variant needs before a mismatch is flagged.
pub const SRM_MIN_UNITS: f64 = 8.0;

/// The outcome of the SRM check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Srm {
    /// Pearson's X² (0 when it cannot be computed).
    pub statistic: f64,
    /// Its p-value with `k − 1` degrees of freedom (1 when it cannot be computed).
    pub p_value: f64,
    /// Whether the split is a mismatch: `p_value` below [`SRM_P_VALUE`] once every variant is
    /// expected to have [`SRM_MIN_UNITS`] units.
    pub flagged: bool,
    /// For people: the counts against the expected shares, and the conclusion.
    pub reason: String,
}

/// Checks `observed` units per variant against the configured `expected_weights` (in the same
/// order; any positive scale). Variants with weight 0 take no part: they are meant to get only
/// forced traffic.
pub fn sample_ratio_mismatch(observed: &[u64], expected_weights: &[f64]) -> Srm {
    let unjudged = |reason: String| Srm {
        statistic: 0.0,
        p_value: 1.0,
        flagged: false,
        reason,
    };
    if observed.len() != expected_weights.len() {
        return unjudged(format!(
            "{} counts for {} weights",
            observed.len(),
            expected_weights.len()
        ));
    }
    if let Some(w) = expected_weights
        .iter()
        .find(|w| !(w.is_finite() && **w >= 0.0))
    {
        return unjudged(format!("weight {w} is not a share"));
    }
    let variants: Vec<(u64, f64)> = observed
        .iter()
        .zip(expected_weights)
        .filter(|(_, w)| **w > 0.0)
        .map(|(o, w)| (*o, *w))
        .collect();
    if variants.len() < 2 {
        return unjudged("fewer than two variants with a weight".into());
    }
    let total_weight: f64 = variants.iter().map(|(_, w)| w).sum();
    let units: f64 = variants.iter().map(|(o, _)| *o as f64).sum();
    if units == 0.0 {
        return unjudged("no units yet".into());
    }
    let expected: Vec<f64> = variants
        .iter()
        .map(|(_, w)| units * w / total_weight)
        .collect();
    let statistic: f64 = variants
        .iter()
        .zip(&expected)
        .map(|((o, _), e)| (*o as f64 - e).powi(2) / e)
        .sum();
    let df = (variants.len() - 1) as u32;
    let p_value = chi_square_sf(statistic, df);
    let fewest = expected.iter().copied().fold(f64::INFINITY, f64::min);
    let shares = variants
        .iter()
        .map(|(o, _)| format!("{:.1}%", *o as f64 / units * 100.0))
        .collect::<Vec<_>>()
        .join(" / ");
    let wanted = variants
        .iter()
        .map(|(_, w)| format!("{:.1}%", w / total_weight * 100.0))
        .collect::<Vec<_>>()
        .join(" / ");
    let (flagged, verdict) = if fewest < SRM_MIN_UNITS {
        (
            false,
            format!(
                "too few units to judge (a variant expects {fewest:.1}, needs {SRM_MIN_UNITS})"
            ),
        )
    } else if p_value < SRM_P_VALUE {
        (true, format!("sample ratio mismatch (p < {SRM_P_VALUE})"))
    } else {
        (false, "consistent with the configured split".into())
    };
    Srm {
        statistic,
        p_value,
        flagged,
        reason: format!(
            "{shares} of {units} units vs {wanted} configured: χ² = {statistic:.2}, df = {df}, \
             p = {p_value:.3e}: {verdict}"
        ),
    }
}
