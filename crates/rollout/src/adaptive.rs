//! The pace of a canary with `steps: adaptive`: what each analysis interval's verdict does to the
//! candidate's weight, and the exposure budget. Pure: [`decide`] takes the bounds, the state and
//! the interval and returns a [`Move`] with the reason; [`Rollout::adapt`](crate::Rollout::adapt)
//! applies it and records it as a transition.
//!
//! Each interval judges the checks twice: on the data since the release started (the *release*
//! view, which the [`Analyzer`](graylane_analysis::Analyzer) counts passes and failures on), and
//! on the data since the weight last changed alone (the *recent* view). The release view has
//! the most data, so it clears a healthy candidate soonest; the recent view is not diluted by
//! the data gathered at lower weights, so it sees a regression that appears only at the current
//! weight (under load). The recent view can only slow the release down or speed up a growth the
//! release view allows; only the release view fails it (at the analysis's `alpha`, whatever the
//! number of weights tried), or the budget stops it.
//!
//! ```text
//!  every check clear ──► weight × grow (× grow² when the recent view is clear too: proven at
//!                        this very weight), capped at max; clear at max, or grown to 100%:
//!                        complete
//!  inconclusive ───────► hold; shrink if the budget left is less than the next interval
//!                        would spend (estimated from the last interval's candidate requests)
//!  leaning worse ──────► weight × shrink, floored at start; its requests count against the
//!  (either view, or a    budget; at the floor, stop if the next interval would overspend
//!  recent failure)
//!  failed ─────────────► stop: abort, or pause by on_failure
//!  budget spent ───────► stop, the same way
//!  leaning worse again ► stop, the same way (see the ceiling below)
//! ```
//!
//! The release remembers the lowest weight at which an interval leaned worse, its *ceiling*
//! ([`AdaptiveState::ceiling`], stored with the release): a regression that appears only under
//! load would otherwise flap — grow past it, shrink, grow back — serving bad traffic at the
//! higher weight every time. Growth stays below the ceiling (a `grow²` falls back to `grow`, or
//! the release holds, and says once why: "held below 32%, where it leaned worse") until the
//! candidate is proven just below it — the recent view clear on its own [`REPROVEN`] intervals
//! in a row — and then goes back to the ceiling itself, no further. Proven there (the recent
//! view clear at the ceiling), the ceiling is lifted; leaning worse there again, on data
//! gathered after the first time, stops the release. A pass of the release view alone does not
//! lift it: its data is diluted by the weights below.
//!
//! A check *leans worse* when one of its bounds is not yet clear and its estimate is already past
//! it ([`CheckResult::leans_worse`]). The weight changes at most once per `min_pause` (a stop
//! never waits). Without a conclusive verdict for `max_pause` since the last change, the release
//! holds and says so once. A weight set by hand (`set-weight`) is kept until `resume`; failures
//! and the budget still stop the release meanwhile.
//!
//! The weight is the same bucket threshold as a fixed step's (a user is on the candidate while
//! its bucket is below the weight): a grown weight keeps every user already on the candidate
//! there and adds the next buckets, a shrink sends the most recently added users (the highest
//! buckets) back to the baseline first.

use graylane_analysis::{CheckResult, Decision, Verdict};
use graylane_config::{Adaptive, Weight};
use serde::{Deserialize, Serialize};

/// How one analysis interval judged the candidate, as the adaptive pace reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every check passed (as many intervals in a row as `success_needed`).
    Clear,
    /// Neither clear nor leaning worse.
    Unclear,
    /// A check leans worse, or failed short of `failure_limit`.
    Worse,
    /// The analysis failed the candidate (`failure_limit` reached).
    Failed,
    /// Not enough data to judge.
    Waiting,
}

/// One analysis interval: its outcome, what the candidate served during it, and the figures.
#[derive(Debug, Clone, PartialEq)]
pub struct Interval {
    /// How the interval judged the candidate.
    pub outcome: Outcome,
    /// The recent view (the data since the weight last changed) is clear on its own too: the
    /// candidate is proven at its current weight, and a clear interval grows it by `grow²`.
    pub proven: bool,
    /// Requests the candidate served since the previous interval.
    pub candidate_requests: u64,
    /// For people: the checks' figures ("check: reason; check: reason").
    pub figures: String,
}

impl Interval {
    /// The interval the analyzer's `decision` on the release view's `results` makes, with the
    /// checks' `recent` results on the data since the weight last changed (empty: none). A
    /// recent check leaning worse (or failing) makes the interval lean worse, however clear the
    /// release view is: the regression may be new at this weight.
    pub fn judged(
        decision: &Decision,
        results: &[CheckResult],
        recent: &[CheckResult],
        candidate_requests: u64,
    ) -> Self {
        let recent_worse = recent.iter().any(CheckResult::leans_worse);
        let outcome = match decision {
            Decision::Fail { .. } => Outcome::Failed,
            Decision::Hold { .. } | Decision::Pause { .. } => Outcome::Waiting,
            _ if recent_worse => Outcome::Worse,
            Decision::Promote => Outcome::Clear,
            Decision::Continue if results.iter().any(CheckResult::leans_worse) => Outcome::Worse,
            Decision::Continue => Outcome::Unclear,
        };
        let proven = outcome == Outcome::Clear
            && !recent.is_empty()
            && recent.iter().all(|r| r.verdict == Verdict::Pass);
        let list = |results: &[CheckResult]| {
            results
                .iter()
                .map(|r| format!("{}: {}", r.check, r.reason))
                .collect::<Vec<_>>()
                .join("; ")
        };
        let mut figures = match decision {
            Decision::Fail { reason } => reason.clone(),
            _ => list(results),
        };
        // The recent view is worth reading when it changed the outcome or the pace.
        if (recent_worse && outcome == Outcome::Worse) || proven {
            figures.push_str(" | since the weight last changed: ");
            figures.push_str(&list(recent));
        }
        Interval {
            outcome,
            proven,
            candidate_requests,
            figures,
        }
    }
}

/// An adaptive release's own state, beside its weight.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdaptiveState {
    /// When the weight last changed (Unix milliseconds).
    pub changed_ms: i64,
    /// The spent exposure budget: requests the candidate served in intervals where it looked
    /// worse than the baseline.
    pub spent: u64,
    /// Requests the candidate served in the last interval judged.
    pub last_requests: u64,
    /// The release has said it holds at `max_pause` since the last change.
    pub held_noted: bool,
    /// The lowest weight at which an interval leaned worse: growth stays below it until the
    /// candidate is proven just below it ([`REPROVEN`] intervals in a row), and is lifted once
    /// the candidate is proven at it. (Absent from states stored before it existed: none.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ceiling: Option<Weight>,
    /// Intervals in a row at the current weight whose data since the weight last changed was
    /// clear on its own.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub proven: u32,
    /// The weight went back to the ceiling after the candidate was proven below it: leaning
    /// worse there again stops the release.
    #[serde(default, skip_serializing_if = "is_false")]
    pub retried: bool,
    /// The release has said its growth is held below the ceiling at the current weight.
    #[serde(default, skip_serializing_if = "is_false")]
    pub capped_noted: bool,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Intervals in a row the candidate must be proven at the weight just below its ceiling (the
/// data since the weight last changed clear on its own) before it may go back to the ceiling.
pub const REPROVEN: u32 = 2;

impl AdaptiveState {
    /// The state of an adaptive release whose weight was set at `now_ms`.
    pub fn new(now_ms: i64) -> Self {
        AdaptiveState {
            changed_ms: now_ms,
            ..AdaptiveState::default()
        }
    }
}

/// What an interval does to an adaptive release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Move {
    /// A higher weight.
    Grow(Weight),
    /// A lower weight.
    Shrink(Weight),
    /// Everything to the candidate: the release is complete.
    Complete,
    /// The weight stays; `record`: the hold is worth a transition (the budget was spent, or the
    /// first hold at `max_pause`).
    Hold {
        /// Whether to record the hold.
        record: bool,
    },
    /// Stop as a failed analysis does (abort, or pause by `on_failure`); `budget`: because of
    /// the exposure budget.
    Stop {
        /// The budget, not a failed check, stopped it.
        budget: bool,
    },
    /// Stop the same way: the candidate leaned worse again at its ceiling after it was proven
    /// just below it (see [`AdaptiveState::ceiling`]).
    WorseAgain,
}

/// Judges one interval of an adaptive release at `weight` (`overridden`: set by hand): updates
/// the budget in `state` and returns the move with its reason. The caller applies the move and
/// sets [`AdaptiveState::changed_ms`] when the weight changes.
pub fn decide(
    bounds: &Adaptive,
    weight: Weight,
    overridden: bool,
    state: &mut AdaptiveState,
    interval: &Interval,
    now_ms: i64,
) -> (Move, String) {
    let figures = &interval.figures;
    let worse = matches!(interval.outcome, Outcome::Worse | Outcome::Failed);
    if worse {
        state.spent = state.spent.saturating_add(interval.candidate_requests);
    }
    if interval.outcome != Outcome::Waiting {
        state.last_requests = interval.candidate_requests;
    }
    let budget = bounds.max_bad_requests;
    let spent = state.spent;
    // A hold that spent some of a budget is recorded (and so saved): at most one per request.
    let recorded_spend = budget.is_some() && worse && interval.candidate_requests > 0;
    let spend = match budget {
        Some(max) => format!("budget {spent} of {max} spent"),
        None => format!("{spent} requests served while worse"),
    };
    if interval.outcome == Outcome::Failed {
        return (
            Move::Stop { budget: false },
            format!("analysis failed at {weight} ({spend}): {figures}"),
        );
    }
    if let Some(max) = budget
        && worse
        && spent >= max
    {
        return (
            Move::Stop { budget: true },
            format!(
                "exposure budget spent: the candidate served {spent} requests while it looked worse than the baseline (max_bad_requests {max}): {figures}"
            ),
        );
    }
    // What the next interval at this weight would spend if the candidate keeps looking worse.
    let short = budget.and_then(|max| {
        let left = max.saturating_sub(spent);
        (left < state.last_requests).then_some(left)
    });
    let since = now_ms.saturating_sub(state.changed_ms);
    let ready = since >= crate::millis(bounds.min_pause);
    if overridden {
        return (
            Move::Hold { record: false },
            format!("weight {weight} set by hand; `resume` hands the pace back to the analysis"),
        );
    }
    let next = state.last_requests;
    if interval.proven {
        state.proven = state.proven.saturating_add(1);
    } else if interval.outcome != Outcome::Waiting {
        state.proven = 0;
    }
    // The ceiling: where the candidate leaned worse. Back at it after being proven below it,
    // leaning worse again is the same regression twice, on fresh data: stop rather than flap.
    if worse {
        match state.ceiling {
            Some(c) if weight >= c && state.retried => {
                return (
                    Move::WorseAgain,
                    format!(
                        "leaning worse again at {weight}, where it leaned worse before it was proven below ({spend}): {figures}"
                    ),
                );
            }
            Some(c) if weight >= c => {}
            _ => {
                state.ceiling = Some(weight);
                state.retried = false;
            }
        }
    }
    let mut lifted = String::new();
    if let Some(c) = state.ceiling
        && weight >= c
        && interval.outcome == Outcome::Clear
    {
        if !interval.proven {
            // Only the data gathered here, not the release's, can show it is fine here.
            return capped_hold(
                state,
                format!(
                    "holding at {weight}, where it leaned worse, until the data since the weight last changed is clear on its own ({spend}): {figures}"
                ),
            );
        }
        state.ceiling = None;
        state.retried = false;
        lifted = format!(", proven at {c} where it had leaned worse");
    }
    match interval.outcome {
        Outcome::Clear if weight >= bounds.max => {
            if ready {
                return (
                    Move::Complete,
                    format!(
                        "every check clear at max {}: complete ({spend}): {figures}",
                        bounds.max
                    ),
                );
            }
        }
        Outcome::Clear => {
            if ready {
                // Proven at this very weight too: the evidence is strong, take two steps.
                let (factor, how) = if interval.proven {
                    (
                        bounds.grow * bounds.grow,
                        format!("grow {}², proven at this weight", bounds.grow),
                    )
                } else {
                    (bounds.grow, format!("grow {}", bounds.grow))
                };
                let grown = |factor| {
                    Weight::from_milli_percent(
                        scaled(weight, factor)
                            .max(weight.milli_percent() + 1)
                            .min(bounds.max.milli_percent()),
                    )
                };
                let (mut to, mut how) = (grown(factor), how);
                how.push_str(&lifted);
                if let Some(c) = state.ceiling
                    && to >= c
                {
                    if state.proven >= REPROVEN {
                        to = c;
                        how = format!(
                            "back to {c}, where it leaned worse, after {} intervals proven at {weight}",
                            state.proven
                        );
                    } else if interval.proven && grown(bounds.grow) < c {
                        to = grown(bounds.grow);
                        how = format!(
                            "grow {}, held below {c}, where it leaned worse",
                            bounds.grow
                        );
                    } else {
                        return capped_hold(
                            state,
                            format!(
                                "every check clear, held below {c}, where it leaned worse: at {weight} until proven here {REPROVEN} intervals in a row ({spend}): {figures}"
                            ),
                        );
                    }
                }
                // At 100% the baseline has no traffic left to compare with: nothing to wait
                // for, as with a fixed plan's last step.
                if to == Weight::FULL {
                    return (
                        Move::Complete,
                        format!(
                            "every check clear: {weight} → 100%, complete ({how}; {spend}): {figures}"
                        ),
                    );
                }
                return (
                    Move::Grow(to),
                    format!("every check clear: {weight} → {to} ({how}; {spend}): {figures}"),
                );
            }
        }
        Outcome::Worse if weight > bounds.start => {
            if ready {
                let to =
                    Weight::from_milli_percent(scaled(weight, bounds.shrink)).max(bounds.start);
                return (
                    Move::Shrink(to),
                    format!(
                        "leaning worse: {weight} → {to} (shrink {}; {spend}): {figures}",
                        bounds.shrink
                    ),
                );
            }
            return (
                Move::Hold {
                    record: recorded_spend,
                },
                format!(
                    "leaning worse at {weight}, next change after min_pause ({spend}): {figures}"
                ),
            );
        }
        Outcome::Worse => {
            if let Some(left) = short {
                return (
                    Move::Stop { budget: true },
                    format!(
                        "leaning worse at the floor {weight}: the next interval would serve about {next} requests, only {left} of the exposure budget are left (max_bad_requests {}; {spend}): {figures}",
                        budget.unwrap_or_default()
                    ),
                );
            }
            return (
                Move::Hold {
                    record: recorded_spend,
                },
                format!("leaning worse at the floor {weight} (start; {spend}): {figures}"),
            );
        }
        Outcome::Unclear | Outcome::Waiting => {
            if let Some(left) = short
                && ready
                && weight > bounds.start
            {
                let to =
                    Weight::from_milli_percent(scaled(weight, bounds.shrink)).max(bounds.start);
                return (
                    Move::Shrink(to),
                    format!(
                        "{weight} → {to} to stay within the exposure budget: the next interval would serve about {next} requests, {left} are left ({spend})"
                    ),
                );
            }
        }
        Outcome::Failed => {}
    }
    let conclusive = interval.outcome == Outcome::Clear;
    if !conclusive && !state.held_noted && since >= crate::millis(bounds.max_pause) {
        state.held_noted = true;
        return (
            Move::Hold { record: true },
            format!(
                "no conclusive verdict for {}s since the last change (max_pause {}s): holding at {weight} ({spend}): {figures}",
                since / 1000,
                bounds.max_pause.as_secs()
            ),
        );
    }
    (
        Move::Hold { record: false },
        format!("holding at {weight} ({spend}): {figures}"),
    )
}

/// A hold because of the ceiling: recorded once per weight, so the audit says why the growth
/// stopped without repeating it every interval.
fn capped_hold(state: &mut AdaptiveState, why: String) -> (Move, String) {
    let record = !state.capped_noted;
    state.capped_noted = true;
    (Move::Hold { record }, why)
}

/// `weight × factor` in thousandths of a percent, rounded.
fn scaled(weight: Weight, factor: f64) -> u32 {
    let x = (f64::from(weight.milli_percent()) * factor).round();
    // `as` saturates: a huge factor gives u32::MAX, clamped to 100% by the caller.
    x as u32
}
