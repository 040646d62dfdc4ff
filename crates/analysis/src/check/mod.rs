//! Checks: one comparison of the candidate with the baseline (or with a fixed threshold), judged
//! every interval as pass, fail or inconclusive, with the figures behind the verdict.
//!
//! Every threshold is judged against a confidence sequence ([`crate::stats`]), never against the
//! bare estimate:
//! * an upper bound (`max`, `max_increase`, `max_ms`, `max_ratio`) **fails** only when the whole
//!   interval lies above it and **passes** only when the whole interval lies below it;
//! * a lower bound (`min_rps`, `min_change`) the other way round;
//! * anything else — the interval straddles the threshold — is **inconclusive**: the data does
//!   not tell yet, and more data will.
//!
//! A check with several bounds fails when one fails and passes when all pass. A check whose
//! versions have fewer than `min_requests` observations is inconclusive with
//! `enough_data: false` and says so ("not enough data: 37 of 200 requests (candidate)"); the
//! [`crate::analyzer`] holds the step on that. A check with no bound compares with the baseline
//! without tolerance: `error_rate` as `max_increase: 0`, a latency as `max_ratio: 1`, an event
//! as `min_change: 0`. Bad input (NaN, errors above requests, a percentile of 120) never panics:
//! it is inconclusive with a reason.
//!
//! This file holds the check specifications, the results and the verdict over a check's tests;
//! `kinds.rs` has the judge of each kind of check and `format.rs` how figures read in reasons.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::sample::Sample;
use crate::stats::{Boundary, Interval};

mod format;
mod kinds;

/// The confidence sequences are tuned to be tightest after `max(min_requests, MIN_TUNING)`
/// observations; fewer than 100 are too few for the normal approximation to matter anyway.
const MIN_TUNING: u64 = 100;

/// What to compare, with its thresholds (the `analysis.checks` of a release).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "metric", rename_all = "snake_case")]
pub enum CheckSpec {
    /// The share of requests that are errors. `max`: an absolute ceiling on the candidate's rate
    /// (0.05 = 5 %); `max_increase`: how far above the baseline's it may be, in absolute terms
    /// (0.02 = 2 percentage points).
    ErrorRate {
        /// The highest error rate the candidate may have, a fraction.
        max: Option<f64>,
        /// The most the candidate's rate may exceed the baseline's, in absolute terms.
        max_increase: Option<f64>,
    },
    /// A latency percentile (99.0 for p99). `max_ms`: an absolute ceiling in milliseconds;
    /// `max_ratio`: the most the candidate's percentile may be as a multiple of the baseline's.
    Latency {
        /// The percentile, from 0 to 100 (99.0 for p99).
        percentile: f64,
        /// The highest candidate percentile, in milliseconds.
        max_ms: Option<f64>,
        /// The highest candidate percentile as a multiple of the baseline's.
        max_ratio: Option<f64>,
    },
    /// The candidate's requests per second must be at least `min_rps`.
    Throughput {
        /// The fewest requests per second that pass.
        min_rps: f64,
    },
    /// Occurrences of `event` per unit (see [`Events`](crate::Events)). `min_change`: the lowest
    /// acceptable relative change of the candidate against the baseline (−0.05 = at most 5 %
    /// lower).
    EventRate {
        /// The event's name, as posted to the events API.
        event: String,
        /// The lowest acceptable relative change against the baseline; `None`: no drop at all.
        min_change: Option<f64>,
    },
    /// The mean value of `event` (see [`Events`](crate::Events)), with `min_change` as for
    /// `EventRate`.
    EventMean {
        /// The event's name, as posted to the events API.
        event: String,
        /// The lowest acceptable relative change of the mean against the baseline; `None`: no
        /// drop at all.
        min_change: Option<f64>,
    },
}

impl CheckSpec {
    /// The check's name as the configuration writes it: `error_rate`, `latency_p99`,
    /// `throughput`, `event_rate:NAME`, `event_mean:NAME`.
    pub fn name(&self) -> String {
        match self {
            CheckSpec::ErrorRate { .. } => "error_rate".into(),
            CheckSpec::Latency { percentile, .. } => format!("latency_p{percentile}"),
            CheckSpec::Throughput { .. } => "throughput".into(),
            CheckSpec::EventRate { event, .. } => format!("event_rate:{event}"),
            CheckSpec::EventMean { event, .. } => format!("event_mean:{event}"),
        }
    }
}

/// How one check (or one of its bounds) came out this interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The interval lies wholly on the passing side of every threshold.
    Pass,
    /// The interval lies wholly on the failing side of a threshold.
    Fail,
    /// The interval straddles the threshold, there is not enough data, or the input is unusable.
    Inconclusive,
}

/// One check's verdict this interval, why, and the figures behind it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckResult {
    /// [`CheckSpec::name`].
    pub check: String,
    /// The check's verdict: fail if any bound fails, pass if every bound passes, else
    /// inconclusive.
    pub verdict: Verdict,
    /// False while a version has fewer observations than `min_requests` (the verdict is then
    /// inconclusive): the analyzer holds instead of judging.
    pub enough_data: bool,
    /// For people: the figures and the conclusion in one line.
    pub reason: String,
    /// The numbers behind the verdict.
    pub figures: Figures,
}

impl CheckResult {
    /// Whether the candidate looks worse than the check allows: it failed, or with enough data
    /// one of its bounds is not yet clear and the point estimate is already past it (the
    /// interval straddles the threshold on the failing side). An adaptive release shrinks on
    /// this and counts the interval's requests against its exposure budget.
    pub fn leans_worse(&self) -> bool {
        if self.verdict == Verdict::Fail {
            return true;
        }
        self.enough_data
            && self.figures.tests.iter().any(|t| {
                // Bounds on the candidate alone read its estimate; the others the effect.
                let estimate = match t.bound.as_str() {
                    "max" | "max_ms" | "min_rps" => self.figures.candidate.value,
                    _ => self.figures.effect.as_ref().and_then(|e| e.value),
                };
                let past = estimate.is_some_and(|e| {
                    if t.bound.starts_with("min") {
                        e < t.threshold
                    } else {
                        e > t.threshold
                    }
                });
                t.verdict != Verdict::Pass && past
            })
    }
}

/// The numbers behind a verdict. Units: rates as fractions (0.012 = 1.2 %), latencies in
/// milliseconds, throughput in requests per second, event means in the event's unit.
/// Intervals are the confidence sequence at this look; `None` ends are unbounded.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    /// The level: each interval misses the truth at some look with probability at most `alpha`.
    /// A latency ratio gives each version's percentile `alpha / 2`. 0 when `alpha` was unusable.
    pub alpha: f64,
    /// The candidate's estimate.
    pub candidate: Measure,
    /// Absent for checks of the candidate alone (throughput).
    pub baseline: Option<Measure>,
    /// Candidate against baseline: a difference (error rates), a ratio (latencies) or a relative
    /// change (events).
    pub effect: Option<Effect>,
    /// One entry per threshold judged.
    pub tests: Vec<Test>,
}

/// One version's estimate.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Measure {
    /// Observations: requests, latencies, units or events.
    pub n: u64,
    /// The point estimate; `None` without data.
    pub value: Option<f64>,
    /// The interval's lower end; `None`: unbounded.
    pub low: Option<f64>,
    /// The interval's upper end; `None`: unbounded.
    pub high: Option<f64>,
}

/// The candidate compared with the baseline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Effect {
    /// What the effect measures: a difference, a ratio or a relative change.
    pub kind: EffectKind,
    /// The point estimate; `None` when it cannot be computed.
    pub value: Option<f64>,
    /// The interval's lower end; `None`: unbounded.
    pub low: Option<f64>,
    /// The interval's upper end; `None`: unbounded.
    pub high: Option<f64>,
}

/// How the candidate is set against the baseline in an [`Effect`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EffectKind {
    /// Candidate − baseline.
    Difference,
    /// Candidate / baseline.
    Ratio,
    /// Candidate / baseline − 1.
    RelativeChange,
}

/// One threshold and how the interval lies against it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Test {
    /// The configuration key: `max`, `max_increase`, `max_ms`, `max_ratio`, `min_rps`,
    /// `min_change`.
    pub bound: String,
    /// The configured threshold, in the check's unit.
    pub threshold: f64,
    /// How the interval lies against the threshold.
    pub verdict: Verdict,
    /// Standard errors between the estimate and the threshold, positive on the failing side
    /// (absent for latencies, judged by ranks).
    pub statistic: Option<f64>,
    /// The anytime-valid p-value of "the truth is exactly at the threshold": below `alpha`
    /// exactly when the interval excludes the threshold.
    pub p_value: Option<f64>,
}

/// Judges `spec` on the data since the step started. `min_requests` applies to each version the
/// check looks at; `alpha` is the level of the confidence sequences (see [`crate::stats`]).
pub fn evaluate(
    spec: &CheckSpec,
    candidate: &Sample,
    baseline: &Sample,
    min_requests: u64,
    alpha: f64,
) -> CheckResult {
    let name = spec.name();
    let tuning = min_requests.max(MIN_TUNING) as f64;
    let mut j = Judge {
        name,
        min: min_requests.max(1),
        figures: Figures::default(),
    };
    let Some(boundary) = Boundary::new(alpha, tuning) else {
        // Figures keep alpha 0: a NaN would not survive a round trip through JSON.
        return j.unusable(format!("alpha {alpha} is not between 0 and 1"));
    };
    j.figures.alpha = alpha;
    match spec {
        CheckSpec::ErrorRate { max, max_increase } => {
            j.error_rate(*max, *max_increase, candidate, baseline, &boundary)
        }
        CheckSpec::Latency {
            percentile,
            max_ms,
            max_ratio,
        } => {
            let relative = max_ratio.is_some() || max_ms.is_none();
            // A ratio needs both percentiles: each gets half the error budget (Bonferroni).
            // (alpha / 2 is valid whenever alpha is.)
            let side = if relative {
                Boundary::new(alpha / 2.0, tuning).unwrap_or(boundary)
            } else {
                boundary
            };
            j.latency(
                *percentile,
                *max_ms,
                relative.then(|| max_ratio.unwrap_or(1.0)),
                candidate,
                baseline,
                &side,
            )
        }
        CheckSpec::Throughput { min_rps } => j.throughput(*min_rps, candidate, &boundary),
        CheckSpec::EventRate { event, min_change } => {
            j.event(event, false, *min_change, candidate, baseline, &boundary)
        }
        CheckSpec::EventMean { event, min_change } => {
            j.event(event, true, *min_change, candidate, baseline, &boundary)
        }
    }
}

/// Judges `spec` for every variant of an experiment against the control. The error budget is
/// split evenly (Bonferroni: `alpha / variants`), so the chance that *any* variant's interval
/// misses stays at most `alpha`.
pub fn evaluate_variants(
    spec: &CheckSpec,
    control: &Sample,
    variants: &[Sample],
    min_requests: u64,
    alpha: f64,
) -> Vec<CheckResult> {
    let each = alpha / variants.len().max(1) as f64;
    variants
        .iter()
        .map(|v| evaluate(spec, v, control, min_requests, each))
        .collect()
}

/// Which side of a threshold fails.
#[derive(Clone, Copy)]
enum Side {
    /// An upper bound: failing means above it.
    Max,
    /// A lower bound: failing means below it.
    Min,
}

/// A threshold judged against an interval. With a boundary, the test also gets its statistic
/// and anytime-valid p-value (intervals from ranks, the latencies, have none).
fn test(
    bound: &str,
    side: Side,
    threshold: f64,
    i: &Interval,
    boundary: Option<&Boundary>,
) -> Test {
    let (fail, pass) = match side {
        Side::Max => (i.low > threshold, i.high < threshold),
        Side::Min => (i.high < threshold, i.low > threshold),
    };
    let z = boundary.map(|b| {
        let z = i.z(threshold, b);
        // Positive on the failing side.
        let toward_failure = match side {
            Side::Max => z,
            Side::Min => -z,
        };
        (toward_failure, b.p_value(z, i.t))
    });
    Test {
        bound: bound.into(),
        threshold,
        verdict: if fail {
            Verdict::Fail
        } else if pass {
            Verdict::Pass
        } else {
            Verdict::Inconclusive
        },
        statistic: z.map(|(z, _)| z).filter(|z| z.is_finite()),
        p_value: z.map(|(_, p)| p),
    }
}

/// Builds one check's result.
struct Judge {
    name: String,
    /// `min_requests`, at least 1.
    min: u64,
    figures: Figures,
}

impl Judge {
    fn result(self, verdict: Verdict, enough_data: bool, reason: String) -> CheckResult {
        CheckResult {
            check: self.name,
            verdict,
            enough_data,
            reason,
            figures: self.figures,
        }
    }

    /// Input the check cannot judge (a bad threshold, inconsistent counts).
    fn unusable(self, why: String) -> CheckResult {
        self.result(Verdict::Inconclusive, true, format!("cannot judge: {why}"))
    }

    /// The reason to wait when a version has fewer than `min_requests` observations.
    fn short(&self, what: &str, counts: &[(&str, u64)]) -> Option<String> {
        let (who, n) = counts.iter().find(|(_, n)| *n < self.min)?;
        Some(format!(
            "not enough data: {n} of {} {what} ({who})",
            self.min
        ))
    }

    fn waiting(self, reason: String) -> CheckResult {
        self.result(Verdict::Inconclusive, false, reason)
    }

    /// The verdict of all tests and the reason: "summary, test; test".
    fn conclude(mut self, summary: String, tests: Vec<(Test, String)>) -> CheckResult {
        let verdict = if tests.iter().any(|(t, _)| t.verdict == Verdict::Fail) {
            Verdict::Fail
        } else if !tests.is_empty() && tests.iter().all(|(t, _)| t.verdict == Verdict::Pass) {
            Verdict::Pass
        } else {
            Verdict::Inconclusive
        };
        let mut reason = summary;
        for (i, (t, shown)) in tests.iter().enumerate() {
            let sep = if i == 0 { ", " } else { "; " };
            let word = match (t.verdict, t.bound.starts_with("min")) {
                (Verdict::Fail, false) | (Verdict::Pass, true) => "above",
                (Verdict::Pass, false) | (Verdict::Fail, true) => "below",
                (Verdict::Inconclusive, _) => "not yet clear against",
            };
            let _ = write!(reason, "{sep}{word} {} {shown}", t.bound);
        }
        self.figures.tests = tests.into_iter().map(|(t, _)| t).collect();
        self.result(verdict, true, reason)
    }
}

fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

fn measure(n: u64, i: Option<&Interval>) -> Measure {
    Measure {
        n,
        value: i.and_then(|i| finite(i.value)),
        low: i.and_then(|i| finite(i.low)),
        high: i.and_then(|i| finite(i.high)),
    }
}

fn effect(kind: EffectKind, i: &Interval) -> Effect {
    Effect {
        kind,
        value: finite(i.value),
        low: finite(i.low),
        high: finite(i.high),
    }
}
