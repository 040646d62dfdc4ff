//! The statistics behind the checks: confidence sequences that stay valid however often they are
//! looked at, a time-uniform bound on a quantile from histogram data, and the special functions
//! for the χ² and normal distributions. `docs/analysis.md` explains the same for users.
//!
//! # Why confidence *sequences*
//!
//! The analysis looks at the same, growing, data every interval and stops the release the first
//! time a check fails. A fixed-sample 95 % confidence interval checked every 30 s for an hour
//! excludes the truth at *some* look far more often than 5 % of the time. A `(1 − α)` confidence
//! sequence `(C_t)` is a sequence of intervals with `P(∃ t: θ ∉ C_t) ≤ α`: the guarantee holds
//! uniformly over time, so it holds at whatever moment the analysis chooses to act.
//!
//! # The asymptotic confidence sequence (rates, means, differences)
//!
//! Waudby-Smith, Arbour, Sinha, Kennedy & Ramdas (2021), *Time-uniform central limit theory and
//! asymptotic confidence sequences* (arXiv:2103.06476), Theorem 2.2: for i.i.d. observations with
//! mean `μ`, running mean `μ̂_t` and running standard deviation `σ̂_t` after `t` of them,
//!
//! ```text
//! C_t = μ̂_t ± σ̂_t · sqrt( 2(tρ² + 1) / (t²ρ²) · ln( sqrt(tρ² + 1) / α ) )
//! ```
//!
//! is a two-sided `(1 − α)` asymptotic confidence sequence. It is Robbins' normal-mixture
//! boundary (a `N(0, ρ²)` mixture of exponential martingales, which crosses it with probability
//! at most `α` by Ville's inequality) applied to the standardised sum. Written with the standard
//! error `se = σ̂_t / √t` it is `μ̂_t ± se · z_t`, with the multiplier ([`Boundary::multiplier`])
//!
//! ```text
//! z_t = sqrt( 2 (1 + 1/(tρ²)) · ln( sqrt(tρ² + 1) / α ) )
//! ```
//!
//! **Tuning.** `ρ` only decides *when* the sequence is tightest; any fixed `ρ > 0` is valid. The
//! width at time `t*` is smallest for `x = t*ρ²` solving `x = ln(1 + x) + 2 ln(1/α)`, and one
//! fixed-point step gives the closed form used here (the same approximation as the authors'
//! reference code, `best_rho2_approx`):
//!
//! ```text
//! ρ² = ( 2 ln(1/α) + ln(1 + 2 ln(1/α)) ) / t*
//! ```
//!
//! The checks tune for `t* = max(min_requests, 100)` observations: tightest around the first
//! looks the policy allows. At `α = 0.05`, `z_{t*} = 3.04` (a fixed-sample interval would use
//! 1.96): that is the price of looking at every interval, and it grows only like
//! `sqrt(ln t)` afterwards.
//!
//! **Plug-in estimators** ([`Estimate`], the interval `value ± se · z_t` at `t` observations):
//! * **a mean** of `n` values: `se² = s²/n` with the sample variance `s²`, `t = n`;
//! * **a proportion** `x/n` inside a relative change (event rates): `se² = p̃(1 − p̃)/n` with the
//!   Laplace-smoothed `p̃ = (x + 1)/(n + 2)`, so that 0 events does not claim a variance of 0;
//! * **a Poisson rate** `x/n` (several events per unit): `se² = (x + 1)/n²`, `t = n`;
//! * **throughput** `n/T`: for Poisson arrivals the gaps between requests are exponential with
//!   mean and standard deviation `1/λ`, so the mean gap `T/n` gets `se = (T/n)/√n`, `t = n`,
//!   and the interval on the gap is inverted into one on requests per second;
//! * **the ratio of two independent streams** `μ_c/μ_b` (relative changes of business metrics),
//!   by Fieller's method: `k` is in the set when the sequence for `μ_c − k μ_b` (whose
//!   `se² = se_c² + k² se_b²`) contains 0, which solves to
//!   `k ∈ [(ab ∓ sqrt(a²b² − D(a² − z²se_c²))) / D]` with `a = μ̂_c`, `b = μ̂_b`,
//!   `D = b² − z²se_b²`; when `D ≤ 0` the baseline is not distinguishable from 0 and the ratio
//!   is unbounded ([`Estimate::ratio_interval`]).
//!
//! **Two streams.** Candidate and baseline are independent streams of `n_c` and `n_b`
//! observations. A difference or a ratio uses the variance of the difference and is taken at the
//! *effective sample size* `t = n_c n_b/(n_c + n_b)`, the number of single-stream observations
//! with the same precision (`se² = σ²/t` when both have variance `σ²`). Within a step the split
//! is fixed, so `t` is a fixed multiple of the total count `n_c + n_b`: this is the paper's
//! sequential two-arm (A/B) sequence with its time rescaled, which amounts to a rescaled `ρ`.
//!
//! **Error rates** are proportions too, but small ones: at 1 % a few hundred requests hold a
//! handful of errors, where the normal approximation is poor and the plug-in variance
//! misleading. The interval of [`proportion`] takes each end from the form that errs on the safe
//! side there:
//! * the **lower end** from the plug-in form `p̂ − z_t·se` (its variance grows with the count, and
//!   the lower end is at stake when the count is unusually high);
//! * the **upper end** from the score (Wilson) form, the larger root of
//!   `|p̂ − p| = z_t sqrt(p(1 − p)/n)` (its variance is the hypothesised one, which does not
//!   collapse when the count is unusually low, as the plug-in's does);
//!
//! and [`proportion_difference`] combines two of them, both at the multiplier `z_t` of the
//! effective sample size, by MOVER (Newcombe 1998; Zou & Donner 2008):
//!
//! ```text
//! low  = d − sqrt( (p_c − low_c)² + (high_b − p_b)² ),   d = p_c − p_b
//! high = d + sqrt( (high_c − p_c)² + (p_b − low_b)² )
//! ```
//!
//! For large counts both reduce to `d ± z_t sqrt(se_c² + se_b²)`. (The plain plug-in sequence
//! missed a 1 % rate at some look in 7.75 % of simulated runs at `α = 0.05`; this one stays
//! well under `α`, see `tests/coverage.rs`.)
//!
//! **P-values.** The mixture martingale at a null value `θ₀`, with `z = (μ̂_t − θ₀)/se` and
//! `x = tρ²`, is `M_t = exp( x z² / (2(1 + x)) ) / sqrt(1 + x)`; `p = min(1, 1/M_t)` is an
//! *anytime-valid* p-value: `P(∃ t: p_t ≤ α) ≤ α`, and `p_t < α` exactly when `C_t` excludes
//! `θ₀` ([`Boundary::p_value`]). For an asymmetric interval the standard error is read off the
//! end facing `θ₀` (its distance from the estimate over `z_t`), which keeps that equivalence
//! ([`Interval::z`]).
//!
//! # Quantiles from histogram data
//!
//! For the `q`-quantile `ξ` of a continuous distribution, the number `S_t` of the first `t`
//! observations at or below `ξ` is Binomial(`t`, `q`) whatever the distribution. The
//! beta-binomial mixture of likelihood ratios (Robbins 1970; Howard & Ramdas 2022, *Sequential
//! estimation of quantiles with applications to A/B-testing and best-arm identification*,
//! Bernoulli 28(3))
//!
//! ```text
//! M_t(s) = B(a + s, b + t − s) / B(a, b) / ( q^s (1 − q)^(t − s) ),   a = r q,  b = r (1 − q)
//! ```
//!
//! is a nonnegative martingale of mean 1 at `s = S_t`, so with probability `≥ 1 − α`, at every
//! `t`, `S_t` lies in `A_t = { s : M_t(s) < 1/α }`, an interval `[s_lo, s_hi]` (`ln M_t` is convex
//! in `s`). This bound is exact, not asymptotic, which matters for a p99: its tail count is
//! small and skewed. Then `ξ ≥ X_(s_lo)` (at least `s_lo` observations are `≤ ξ`) and
//! `ξ < X_(s_hi + 1)`; with a histogram the order statistic `X_(k)` is only known to lie in the
//! bucket where the cumulative count reaches `k`, so the bound is that bucket's lower end,
//! respectively upper end ([`quantile_bounds`]). There is no lower bound when `s_lo < 1`, and no
//! upper bound when `s_hi ≥ t` (too few observations in the tail yet). The prior's concentration
//! `r = 1/ρ² − 1` gives it the variance `ρ² q(1 − q)` of the normal mixture above, so `ρ` means
//! the same thing here.
//!
//! # χ² and normal distributions
//!
//! `P(χ²_k ≥ x) = Q(k/2, x/2)`, the regularized upper incomplete gamma function, computed by its
//! series (`x < a + 1`) or its continued fraction (modified Lentz), with `ln Γ` by the Lanczos
//! approximation (`g = 7`, 9 coefficients) — Numerical Recipes §6.1–6.2. The normal CDF is
//! `Φ(z) = ½ erfc(−z/√2)` with `erfc(x) = Q(½, x²)`; its quantile is Acklam's rational
//! approximation refined by one Halley step on `Φ`.

use std::f64::consts::PI;
use std::time::Duration;

use crate::histogram::{Histogram, bucket_lower_nanos, bucket_upper_nanos};

/// A two-sided `(1 − α)` normal-mixture boundary, tuned to be tightest after `t*` observations.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Boundary {
    alpha: f64,
    rho2: f64,
}

impl Boundary {
    /// The boundary of level `1 − alpha` tuned for `t*` = `tuned_for` observations:
    /// `ρ² = (2 ln(1/α) + ln(1 + 2 ln(1/α))) / t*`. `None` unless `0 < alpha < 1` and
    /// `tuned_for` is positive and finite.
    pub fn new(alpha: f64, tuned_for: f64) -> Option<Boundary> {
        if !(alpha > 0.0 && alpha < 1.0 && tuned_for > 0.0 && tuned_for.is_finite()) {
            return None;
        }
        let l = (1.0 / alpha).ln();
        Some(Boundary {
            alpha,
            rho2: (2.0 * l + (1.0 + 2.0 * l).ln()) / tuned_for,
        })
    }

    /// `z_t`: after `t` observations the sequence is `estimate ± z_t · standard error`.
    /// Infinite for `t ≤ 0`.
    pub fn multiplier(&self, t: f64) -> f64 {
        if t.is_nan() || t <= 0.0 {
            return f64::INFINITY;
        }
        let x = t * self.rho2;
        (2.0 * (1.0 + 1.0 / x) * ((x + 1.0).sqrt() / self.alpha).ln()).sqrt()
    }

    /// The anytime-valid p-value `min(1, 1/M_t)` of a null value `z` standard errors away from
    /// the estimate after `t` observations. Below `alpha` exactly when the sequence excludes it.
    pub fn p_value(&self, z: f64, t: f64) -> f64 {
        if z.is_nan() || t.is_nan() || t <= 0.0 {
            return 1.0;
        }
        let x = t * self.rho2;
        let ln_m = x * z * z / (2.0 * (1.0 + x)) - 0.5 * (1.0 + x).ln();
        (-ln_m).exp().min(1.0)
    }
}

/// An estimate with its standard error and the number of observations `t` behind it (the time
/// of the confidence sequence).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    /// The point estimate.
    pub value: f64,
    /// Its standard error.
    pub se: f64,
    /// The observations behind it: the time of the confidence sequence.
    pub t: f64,
}

impl Estimate {
    /// The proportion `successes / n`, its variance from the smoothed `(x + 1)/(n + 2)`. `None`
    /// when `n` is 0 or `successes > n`.
    pub fn proportion(successes: u64, n: u64) -> Option<Estimate> {
        if n == 0 || successes > n {
            return None;
        }
        let (x, n) = (successes as f64, n as f64);
        let smoothed = (x + 1.0) / (n + 2.0);
        Some(Estimate {
            value: x / n,
            se: (smoothed * (1.0 - smoothed) / n).sqrt(),
            t: n,
        })
    }

    /// The Poisson rate `count / units` (events per unit), its variance from `count + 1`.
    /// `None` when `units` is 0.
    pub fn poisson_rate(count: u64, units: u64) -> Option<Estimate> {
        if units == 0 {
            return None;
        }
        let (x, n) = (count as f64, units as f64);
        Some(Estimate {
            value: x / n,
            se: (x + 1.0).sqrt() / n,
            t: n,
        })
    }

    /// The mean of `n` values from their sum and sum of squares. `None` for fewer than 2 values
    /// or non-finite sums.
    pub fn mean(n: u64, sum: f64, sum_sq: f64) -> Option<Estimate> {
        if n < 2 || !sum.is_finite() || !sum_sq.is_finite() {
            return None;
        }
        let nf = n as f64;
        let mean = sum / nf;
        let var = ((sum_sq - sum * mean) / (nf - 1.0)).max(0.0);
        let se = (var / nf).sqrt();
        se.is_finite().then_some(Estimate {
            value: mean,
            se,
            t: nf,
        })
    }

    /// The mean gap between `requests` Poisson arrivals over `seconds` (the reciprocal of the
    /// throughput): `se = (T/n)/√n`. `None` without requests or a positive finite duration.
    pub fn mean_gap(requests: u64, seconds: f64) -> Option<Estimate> {
        if requests == 0 || !(seconds > 0.0 && seconds.is_finite()) {
            return None;
        }
        let n = requests as f64;
        let gap = seconds / n;
        Some(Estimate {
            value: gap,
            se: gap / n.sqrt(),
            t: n,
        })
    }

    /// The confidence sequence's interval at this look: `value ± se · z_t`.
    pub fn interval(&self, boundary: &Boundary) -> Interval {
        let r = self.se * boundary.multiplier(self.t);
        let r = if r.is_nan() { f64::INFINITY } else { r };
        Interval {
            value: self.value,
            low: self.value - r,
            high: self.value + r,
            t: self.t,
        }
    }

    /// Fieller's interval for the ratio `self / baseline` of two independent streams, at the
    /// effective sample size. `None` when the baseline is not distinguishable from 0 (the ratio
    /// is unbounded).
    pub fn ratio_interval(&self, baseline: &Estimate, boundary: &Boundary) -> Option<Interval> {
        let t = effective_t(self.t, baseline.t);
        let z = boundary.multiplier(t);
        let (a, sa, b, sb) = (self.value, self.se, baseline.value, baseline.se);
        let d = b * b - z * z * sb * sb;
        if d.is_nan() || d <= 0.0 {
            return None;
        }
        // k = a/b always satisfies the inequality, so the discriminant is ≥ 0 but for rounding.
        let disc = (a * a * b * b - d * (a * a - z * z * sa * sa))
            .max(0.0)
            .sqrt();
        let i = Interval {
            value: a / b,
            low: (a * b - disc) / d,
            high: (a * b + disc) / d,
            t,
        };
        (i.low.is_finite() && i.high.is_finite()).then_some(i)
    }
}

/// An estimate and its confidence sequence's interval at this look (ends may be infinite), with
/// the number of observations `t` behind it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Interval {
    /// The point estimate.
    pub value: f64,
    /// The interval's lower end; may be `-inf`.
    pub low: f64,
    /// The interval's upper end; may be `+inf`.
    pub high: f64,
    /// The observations behind it: the time of the confidence sequence.
    pub t: f64,
}

impl Interval {
    /// How many standard errors the estimate lies above `threshold`, the standard error being
    /// read off the end of the interval that faces the threshold (`distance / z_t`). With
    /// [`Boundary::p_value`] this gives a p-value below `alpha` exactly when the interval
    /// excludes the threshold, also for asymmetric intervals.
    pub fn z(&self, threshold: f64, boundary: &Boundary) -> f64 {
        let d = self.value - threshold;
        if d == 0.0 || d.is_nan() {
            return 0.0;
        }
        let reach = if d > 0.0 {
            self.value - self.low
        } else {
            self.high - self.value
        };
        d * boundary.multiplier(self.t) / reach
    }
}

/// The sequence for a proportion `x / n` (an error rate): the lower end from the plug-in form
/// (`p̂ − z_t·se`, `se` from the smoothed `(x + 1)/(n + 2)`), the upper end from the score
/// (Wilson) form — the solution of `|p̂ − p| ≤ z_t sqrt(p(1 − p)/n)` — clipped to `[0, 1]`.
///
/// An end is reached when the count is unusually high (lower end) or low (upper end). The
/// plug-in variance shrinks with a low count, so its upper end is too optimistic with few
/// events; the score form's variance does not, but it treats a skewed count as symmetric, so its
/// lower end is too optimistic at rare rates. Each end takes the form that errs on the safe
/// side. `None` when `n` is 0 or `x > n`.
pub fn proportion(x: u64, n: u64, boundary: &Boundary) -> Option<Interval> {
    proportion_at(x, n, boundary.multiplier(n as f64))
}

/// [`proportion`] with the multiplier `z` given.
fn proportion_at(x: u64, n: u64, z: f64) -> Option<Interval> {
    let plug_in = Estimate::proportion(x, n)?;
    let (p, nf) = (plug_in.value, n as f64);
    let shrink = 1.0 + z * z / nf;
    let centre = (p + z * z / (2.0 * nf)) / shrink;
    let half = z / shrink * (p * (1.0 - p) / nf + z * z / (4.0 * nf * nf)).sqrt();
    Some(Interval {
        value: p,
        low: (p - z * plug_in.se).max(0.0),
        high: (centre + half).min(1.0),
        t: nf,
    })
}

/// The sequence for the difference of two independent proportions `x_c/n_c − x_b/n_b`:
/// MOVER (Newcombe 1998; Zou & Donner 2008) on the two [`proportion`] intervals, both taken at
/// the multiplier of the effective sample size `t`:
///
/// ```text
/// low  = d − sqrt( (p_c − low_c)² + (high_b − p_b)² )
/// high = d + sqrt( (high_c − p_c)² + (p_b − low_b)² )
/// ```
///
/// For large counts this is `d ± z_t sqrt(se_c² + se_b²)`, the plug-in sequence of the
/// difference. `None` when a version has no observations or more successes than observations.
pub fn proportion_difference(
    (xc, nc): (u64, u64),
    (xb, nb): (u64, u64),
    boundary: &Boundary,
) -> Option<Interval> {
    if nc == 0 || nb == 0 {
        return None;
    }
    let t = effective_t(nc as f64, nb as f64);
    // Both arms at the difference's multiplier, not at their own.
    let z = boundary.multiplier(t);
    let c = proportion_at(xc, nc, z)?;
    let b = proportion_at(xb, nb, z)?;
    let (pc, lc, uc, pb, lb, ub) = (c.value, c.low, c.high, b.value, b.low, b.high);
    let d = pc - pb;
    Some(Interval {
        value: d,
        low: d - ((pc - lc).powi(2) + (ub - pb).powi(2)).sqrt(),
        high: d + ((uc - pc).powi(2) + (pb - lb).powi(2)).sqrt(),
        t,
    })
}

/// The effective sample size of a difference: `t₁t₂/(t₁ + t₂)`.
fn effective_t(t1: f64, t2: f64) -> f64 {
    if t1 > 0.0 && t2 > 0.0 {
        t1 * t2 / (t1 + t2)
    } else {
        0.0
    }
}

/// Time-uniform bounds `(lower, upper)` on the `q`-quantile of the distribution the histogram's
/// times are drawn from, at the boundary's level; `upper` is `None` while the tail holds too few
/// observations to bound it. `None` for an empty histogram or `q` not strictly between 0 and 1.
pub fn quantile_bounds(
    h: &Histogram,
    q: f64,
    boundary: &Boundary,
) -> Option<(Duration, Option<Duration>)> {
    if !(q > 0.0 && q < 1.0) {
        return None;
    }
    let n = h.count();
    if n == 0 {
        return None;
    }
    let t = n as f64;
    let r = (1.0 / boundary.rho2 - 1.0).max(1e-3);
    let (a, b) = (r * q, r * (1.0 - q));
    let (ln_q, ln_1q) = (q.ln(), (1.0 - q).ln());
    let base = ln_beta(a, b);
    let ln_m = |s: u64| {
        let s = s as f64;
        ln_beta(a + s, b + t - s) - base - s * ln_q - (t - s) * ln_1q
    };
    let limit = (1.0 / boundary.alpha).ln();
    let mid = ((t * q).round() as u64).min(n);
    if ln_m(mid).is_nan() || ln_m(mid) >= limit {
        // Cannot happen for valid parameters (M ≤ 1 near t·q); claim nothing rather than panic.
        return Some((Duration::ZERO, None));
    }
    // `ln M` is convex in s, so {s : ln M(s) < limit} is an interval around `mid`: search each
    // side for its end.
    let s_lo = first_inside(0, mid, |s| ln_m(s) < limit);
    let s_hi = last_inside(mid, n, |s| ln_m(s) < limit);
    let lower = h.bucket_of_rank(s_lo).map_or(0, bucket_lower_nanos);
    let upper = if s_hi < n {
        h.bucket_of_rank(s_hi + 1).map(bucket_upper_nanos)
    } else {
        None
    };
    Some((Duration::from_nanos(lower), upper.map(Duration::from_nanos)))
}

/// The smallest `s` in `[lo, hi]` with `inside(s)`, given that `inside(hi)` and that the
/// points inside form a suffix of the range.
fn first_inside(mut lo: u64, mut hi: u64, inside: impl Fn(u64) -> bool) -> u64 {
    while lo < hi {
        let m = lo + (hi - lo) / 2;
        if inside(m) { hi = m } else { lo = m + 1 }
    }
    hi
}

/// The largest `s` in `[lo, hi]` with `inside(s)`, given that `inside(lo)` and that the points
/// inside form a prefix of the range.
fn last_inside(mut lo: u64, mut hi: u64, inside: impl Fn(u64) -> bool) -> u64 {
    while lo < hi {
        let m = hi - (hi - lo) / 2;
        if inside(m) { lo = m } else { hi = m - 1 }
    }
    lo
}

/// `P(χ²_df ≥ statistic)`: the p-value of a Pearson χ² statistic with `df` degrees of freedom.
/// 1 for a statistic ≤ 0, NaN for NaN or `df = 0`.
pub fn chi_square_sf(statistic: f64, df: u32) -> f64 {
    if df == 0 {
        return f64::NAN;
    }
    gamma_q(f64::from(df) / 2.0, statistic / 2.0)
}

/// The standard normal CDF `Φ(z)`.
pub fn normal_cdf(z: f64) -> f64 {
    if z.is_nan() {
        return f64::NAN;
    }
    let tail = 0.5 * gamma_q(0.5, z * z / 2.0);
    if z < 0.0 { tail } else { 1.0 - tail }
}

/// The standard normal quantile `Φ⁻¹(p)`: −∞ at 0, +∞ at 1, NaN outside `[0, 1]`.
pub fn normal_quantile(p: f64) -> f64 {
    if !(0.0..=1.0).contains(&p) {
        return f64::NAN;
    }
    if p == 0.0 {
        return f64::NEG_INFINITY;
    }
    if p == 1.0 {
        return f64::INFINITY;
    }
    // Acklam's approximation (relative error < 1.15e-9) ...
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    const P_LOW: f64 = 0.02425;
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    let x = if p < P_LOW {
        tail((-2.0 * p.ln()).sqrt())
    } else if p <= 1.0 - P_LOW {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    } else {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    };
    // ... and one Halley step on Φ brings it to full double precision.
    let e = normal_cdf(x) - p;
    let u = e * (2.0 * PI).sqrt() * (x * x / 2.0).exp();
    let refined = x - u / (1.0 + x * u / 2.0);
    if refined.is_finite() { refined } else { x }
}

/// `ln B(x, y) = ln Γ(x) + ln Γ(y) − ln Γ(x + y)`.
fn ln_beta(x: f64, y: f64) -> f64 {
    ln_gamma(x) + ln_gamma(y) - ln_gamma(x + y)
}

/// `ln Γ(x)` for `x > 0` (Lanczos, g = 7, n = 9; relative error ~1e-15).
pub(crate) fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const COEF: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x.is_nan() || x <= 0.0 {
        return f64::INFINITY;
    }
    if x < 0.5 {
        // Γ(x) = Γ(x + 1)/x keeps the approximation on its accurate range.
        return ln_gamma(x + 1.0) - x.ln();
    }
    let x = x - 1.0;
    let t = x + G + 0.5;
    let series = COEF
        .iter()
        .enumerate()
        .skip(1)
        .fold(COEF[0], |acc, (i, c)| acc + c / (x + i as f64));
    0.5 * (2.0 * PI).ln() + (x + 0.5) * t.ln() - t + series.ln()
}

const MAX_ITER: usize = 10_000;

/// The regularized upper incomplete gamma function `Q(a, x) = Γ(a, x)/Γ(a)`.
fn gamma_q(a: f64, x: f64) -> f64 {
    if x.is_nan() || a.is_nan() || a <= 0.0 {
        return f64::NAN;
    }
    if x <= 0.0 {
        return 1.0;
    }
    if x.is_infinite() {
        return 0.0;
    }
    // ln of x^a e^-x / Γ(a), the common factor of both expansions.
    let front = a * x.ln() - x - ln_gamma(a);
    if x < a + 1.0 {
        // Series for P(a, x) = e^-x x^a / Γ(a) · Σ xⁿ / (a (a+1) … (a+n)).
        let (mut ap, mut term) = (a, 1.0 / a);
        let mut sum = term;
        for _ in 0..MAX_ITER {
            ap += 1.0;
            term *= x / ap;
            sum += term;
            if term.abs() < sum.abs() * f64::EPSILON {
                break;
            }
        }
        (1.0 - sum * front.exp()).clamp(0.0, 1.0)
    } else {
        // Continued fraction for Q(a, x), evaluated by the modified Lentz method.
        const TINY: f64 = 1e-300;
        let mut b = x + 1.0 - a;
        let mut c = 1.0 / TINY;
        let mut d = 1.0 / b;
        let mut h = d;
        for i in 1..MAX_ITER {
            let an = -(i as f64) * (i as f64 - a);
            b += 2.0;
            d = an * d + b;
            if d.abs() < TINY {
                d = TINY;
            }
            c = b + an / c;
            if c.abs() < TINY {
                c = TINY;
            }
            d = 1.0 / d;
            let delta = d * c;
            h *= delta;
            if (delta - 1.0).abs() < f64::EPSILON {
                break;
            }
        }
        (front.exp() * h).clamp(0.0, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ln_gamma_known_values() {
        // Γ(1) = Γ(2) = 1, Γ(0.5) = √π, Γ(10) = 9! = 362880.
        assert!(ln_gamma(1.0).abs() < 1e-14);
        assert!(ln_gamma(2.0).abs() < 1e-14);
        assert!((ln_gamma(0.5) - PI.sqrt().ln()).abs() < 1e-14);
        assert!((ln_gamma(10.0) - 362_880f64.ln()).abs() < 1e-12);
        // Stirling territory: ln Γ(1e6) = 12815504.569147611…
        assert!((ln_gamma(1e6) - 12_815_504.569_147_61).abs() < 1e-6);
        assert!((ln_gamma(1e-3) - 6.907_178_885_383_854).abs() < 1e-12);
    }

    #[test]
    fn incomplete_gamma_known_values() {
        // Q(1, x) = e^-x
        for x in [0.1, 1.0, 5.0, 30.0] {
            assert!((gamma_q(1.0, x) - (-x).exp()).abs() < 1e-14 * (1.0 + (-x).exp()));
        }
        assert_eq!(gamma_q(2.0, 0.0), 1.0);
        assert_eq!(gamma_q(2.0, f64::INFINITY), 0.0);
        assert!(gamma_q(0.0, 1.0).is_nan());
    }

    #[test]
    fn boundary_tuning_minimises_width_at_t_star() {
        let b = Boundary::new(0.05, 200.0).unwrap();
        let at = b.multiplier(200.0);
        assert!((at - 3.04).abs() < 0.01, "{at}");
        for t in [50.0, 100.0, 150.0, 300.0, 1000.0] {
            assert!(b.multiplier(t) > at - 1e-3, "t = {t}");
        }
        assert!(Boundary::new(0.0, 200.0).is_none());
        assert!(Boundary::new(f64::NAN, 200.0).is_none());
        assert!(Boundary::new(0.05, 0.0).is_none());
        assert_eq!(b.multiplier(0.0), f64::INFINITY);
    }

    #[test]
    fn p_value_crosses_alpha_at_the_boundary() {
        let b = Boundary::new(0.05, 200.0).unwrap();
        for t in [10.0, 200.0, 10_000.0] {
            let z = b.multiplier(t);
            assert!((b.p_value(z, t) - 0.05).abs() < 1e-9);
            assert!(b.p_value(z * 1.01, t) < 0.05);
            assert!(b.p_value(z * 0.99, t) > 0.05);
        }
        assert_eq!(b.p_value(0.0, 200.0), 1.0);
        assert_eq!(b.p_value(f64::NAN, 200.0), 1.0);
        assert_eq!(b.p_value(f64::INFINITY, 200.0), 0.0);
    }

    #[test]
    fn fieller_matches_the_linear_test() {
        let b = Boundary::new(0.05, 100.0).unwrap();
        let c = Estimate::proportion(120, 1000).unwrap();
        let base = Estimate::proportion(100, 1000).unwrap();
        let r = c.ratio_interval(&base, &b).unwrap();
        assert!(r.low < 1.2 && 1.2 < r.high);
        assert_eq!(r.t, 500.0);
        // At the ends, `c − k·base` is exactly z_t standard errors from 0.
        for k in [r.low, r.high] {
            let gap = (c.value - k * base.value).abs();
            let se = c.se.hypot(k * base.se);
            assert!((gap / se - b.multiplier(r.t)).abs() < 1e-9);
        }
        let zero = Estimate::proportion(0, 10).unwrap();
        assert_eq!(c.ratio_interval(&zero, &b), None);
    }

    #[test]
    fn statistic_and_p_value_agree_with_asymmetric_intervals() {
        let b = Boundary::new(0.05, 100.0).unwrap();
        let i = proportion(3, 400, &b).unwrap();
        assert!(i.high - i.value > i.value - i.low, "{i:?}");
        for threshold in [0.0, 0.001, 0.005, 0.01, 0.02, 0.03, 0.05] {
            let z = i.z(threshold, &b);
            let outside = threshold < i.low || threshold > i.high;
            assert_eq!(b.p_value(z, i.t) < 0.05, outside, "threshold {threshold}");
        }
        assert_eq!(i.z(i.value, &b), 0.0);
        let d = proportion_difference((30, 400), (4, 400), &b).unwrap();
        assert_eq!(d.t, 200.0);
        assert!(d.low > 0.0 && d.low < d.value && d.value < d.high);
        assert_eq!(proportion_difference((0, 0), (4, 400), &b), None);
        assert_eq!(proportion(5, 4, &b), None);
        // Zero events: the interval starts at 0 and still has a useful upper end.
        let none = proportion(0, 10_000, &b).unwrap();
        assert_eq!((none.value, none.low), (0.0, 0.0));
        assert!(none.high > 0.0 && none.high < 0.002, "{none:?}");
    }

    #[test]
    fn degenerate_estimates() {
        assert_eq!(Estimate::proportion(1, 0), None);
        assert_eq!(Estimate::proportion(5, 4), None);
        assert_eq!(Estimate::mean(1, 1.0, 1.0), None);
        assert_eq!(Estimate::mean(5, f64::NAN, 1.0), None);
        assert_eq!(Estimate::mean_gap(5, 0.0), None);
        assert_eq!(Estimate::mean_gap(0, 1.0), None);
        assert_eq!(Estimate::poisson_rate(3, 0), None);
        let e = Estimate::mean(3, 6.0, 12.0).unwrap();
        assert_eq!((e.value, e.se), (2.0, 0.0));
        let b = Boundary::new(0.05, 100.0).unwrap();
        let i = e.interval(&b);
        assert_eq!((i.low, i.high), (2.0, 2.0));
        assert_eq!(i.z(1.0, &b), f64::INFINITY);
    }
}
