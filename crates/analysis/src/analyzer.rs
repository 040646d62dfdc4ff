//! The per-release decider: once per interval it takes the checks' results and says whether the
//! release should continue, promote, hold, pause or fail.
//!
//! ```text
//!  any check failed ───────────► failures + 1 ── limit reached? ── Fail (→ on_failure)
//!  a check lacks data ─────────► Hold, or Pause once max_wait_without_data has passed
//!  every check passed ─────────► passes + 1 ──── success_needed reached? ── Promote
//!  otherwise (inconclusive) ───► Continue
//! ```
//!
//! Inconclusive intervals (and held ones) count as neither a pass nor a failure. They break a
//! run of passes — promotion needs `success_needed` passing intervals in a row — but not a run
//! of failures, which only a passing interval ends: a candidate that fails, is unclear, then
//! fails again has failed twice in a row. Not enough data never fails and never promotes. The
//! counters belong to the step: [`Analyzer::step_started`] resets them, as the data the checks
//! judge starts over with the step.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::check::{CheckResult, Verdict};

/// How failed intervals add up to a failed analysis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureMode {
    /// `failure_limit` failed intervals in a row (a passing interval starts the count over).
    #[default]
    Consecutive,
    /// `failure_limit` failed intervals at this step, in any order.
    Total,
}

/// The analysis settings of a release.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    /// Observations each version needs before a check judges it; below, the step holds.
    pub min_requests: u64,
    /// Failed intervals that fail the analysis (at least 1).
    pub failure_limit: u32,
    /// How failed intervals are counted against `failure_limit`.
    pub failure_mode: FailureMode,
    /// Passing intervals in a row that promote to the next step (at least 1).
    pub success_needed: u32,
    /// How long a step may wait for enough data before the analysis pauses the release; `None`
    /// waits for ever.
    pub max_wait_without_data: Option<Duration>,
    /// The level of the confidence sequences: a healthy candidate fails a check at some look
    /// with probability at most `alpha`.
    pub alpha: f64,
}

impl Default for Policy {
    /// `min_requests` 100, one failure fails, three passes in a row promote, no wait limit,
    /// `alpha` [`DEFAULT_ALPHA`].
    fn default() -> Self {
        Policy {
            min_requests: 100,
            failure_limit: 1,
            failure_mode: FailureMode::Consecutive,
            success_needed: 3,
            max_wait_without_data: None,
            alpha: DEFAULT_ALPHA,
        }
    }
}

/// The default level of the confidence sequences. `examples/simulate.rs` measures what it gives:
/// see `docs/analysis.md`.
pub const DEFAULT_ALPHA: f64 = 0.05;

/// What the release should do after this interval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Decision {
    /// Keep going: the checks are inconclusive, or passing but not yet `success_needed` times.
    Continue,
    /// Every check passed `success_needed` intervals in a row at this step.
    Promote,
    /// Not enough data yet to judge.
    Hold {
        /// For people: the checks still waiting for data, and why.
        reason: String,
    },
    /// Still not enough data after `max_wait_without_data`: a person should look.
    Pause {
        /// For people: how long the step waited, and the checks still without enough data.
        reason: String,
    },
    /// `failure_limit` reached: apply `on_failure` (roll back or pause).
    Fail {
        /// For people: the failed intervals against `failure_limit`, and the failing checks'
        /// reasons.
        reason: String,
    },
}

/// One interval's judgement, as the controller stores and shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Judgement {
    /// When, in Unix milliseconds.
    pub at_ms: u64,
    /// Each check's result this interval, in the order the checks were given.
    pub results: Vec<CheckResult>,
    /// What the release should do now.
    pub decision: Decision,
    /// Passing intervals in a row at this step, after this one.
    pub passes: u32,
    /// Failed intervals counted against `failure_limit` (in a row or in total), after this one.
    pub failures: u32,
}

/// The stateful decider of one release, driven once per interval.
#[derive(Debug, Clone)]
pub struct Analyzer {
    policy: Policy,
    step_started_ms: Option<u64>,
    passes_in_a_row: u32,
    failures_in_a_row: u32,
    failures_total: u32,
    last: Option<Judgement>,
}

impl Analyzer {
    /// An analyzer for one release, judging by `policy`; its step starts at the first
    /// judgement unless [`Analyzer::step_started`] says otherwise.
    pub fn new(policy: Policy) -> Self {
        Analyzer {
            policy,
            step_started_ms: None,
            passes_in_a_row: 0,
            failures_in_a_row: 0,
            failures_total: 0,
            last: None,
        }
    }

    /// The policy it judges by.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// A new step began (or a paused release resumed): the counters and the wait for data start
    /// over. Before the first call, the step is taken to start at the first judgement.
    pub fn step_started(&mut self, now_ms: u64) {
        self.step_started_ms = Some(now_ms);
        self.passes_in_a_row = 0;
        self.failures_in_a_row = 0;
        self.failures_total = 0;
    }

    /// Judges one interval from the results of every check (see [`crate::check::evaluate`]).
    /// No checks at all is [`Decision::Continue`]: the analysis has nothing to say, and the
    /// step's own pause governs.
    pub fn judge(&mut self, now_ms: u64, results: &[CheckResult]) -> Decision {
        let started = *self.step_started_ms.get_or_insert(now_ms);
        let failed: Vec<&CheckResult> = results
            .iter()
            .filter(|r| r.verdict == Verdict::Fail)
            .collect();
        let waiting: Vec<&CheckResult> = results.iter().filter(|r| !r.enough_data).collect();
        let decision = if !failed.is_empty() {
            self.passes_in_a_row = 0;
            self.failures_in_a_row = self.failures_in_a_row.saturating_add(1);
            self.failures_total = self.failures_total.saturating_add(1);
            let (count, how) = self.failure_count();
            let limit = self.policy.failure_limit.max(1);
            if count >= limit {
                Decision::Fail {
                    reason: format!(
                        "{count} failed intervals {how} (failure_limit {limit}): {}",
                        reasons(&failed)
                    ),
                }
            } else {
                Decision::Continue
            }
        } else if !waiting.is_empty() {
            self.passes_in_a_row = 0;
            let waited = Duration::from_millis(now_ms.saturating_sub(started));
            match self.policy.max_wait_without_data {
                Some(limit) if waited >= limit => Decision::Pause {
                    reason: format!(
                        "still not enough data after {}s (max_wait_without_data {}s): {}",
                        waited.as_secs(),
                        limit.as_secs(),
                        reasons(&waiting)
                    ),
                },
                _ => Decision::Hold {
                    reason: reasons(&waiting),
                },
            }
        } else if !results.is_empty() && results.iter().all(|r| r.verdict == Verdict::Pass) {
            self.passes_in_a_row = self.passes_in_a_row.saturating_add(1);
            self.failures_in_a_row = 0;
            if self.passes_in_a_row >= self.policy.success_needed.max(1) {
                Decision::Promote
            } else {
                Decision::Continue
            }
        } else {
            self.passes_in_a_row = 0;
            Decision::Continue
        };
        self.last = Some(Judgement {
            at_ms: now_ms,
            results: results.to_vec(),
            decision: decision.clone(),
            passes: self.passes_in_a_row,
            failures: self.failure_count().0,
        });
        decision
    }

    /// The latest judgement, for the controller to record.
    pub fn last(&self) -> Option<&Judgement> {
        self.last.as_ref()
    }

    fn failure_count(&self) -> (u32, &'static str) {
        match self.policy.failure_mode {
            FailureMode::Consecutive => (self.failures_in_a_row, "in a row"),
            FailureMode::Total => (self.failures_total, "at this step"),
        }
    }
}

/// "check: reason; check: reason".
fn reasons(results: &[&CheckResult]) -> String {
    results
        .iter()
        .map(|r| format!("{}: {}", r.check, r.reason))
        .collect::<Vec<_>>()
        .join("; ")
}
