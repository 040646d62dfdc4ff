//! graylane's automated canary analysis: the statistics and the decisions, nothing else. Pure:
//! no I/O, no async, no clock — the caller passes the counts it gathered and the time in Unix
//! milliseconds, and stores what comes back.
//!
//! Once per interval the controller, for each running release:
//! 1. takes each version's [`Sample`] since the current step started (cumulative counters minus
//!    the snapshot taken at the step's start, [`Sample::sub`]);
//! 2. runs every configured check with [`evaluate`], which compares the candidate with the
//!    baseline on confidence *sequences* — intervals that stay valid however often they are
//!    looked at — and answers pass, fail or inconclusive with its figures;
//! 3. hands the results to the release's [`Analyzer`], which counts passes and failures per step
//!    and decides: continue, promote, hold (not enough data), pause (no data for too long) or
//!    fail (roll back or pause, as `on_failure` says);
//! 4. for an experiment, also runs [`sample_ratio_mismatch`] on the units per variant.
//!
//! [`histogram`] is the latency layout the data plane records into; [`stats`] has the formulas,
//! with references. `docs/analysis.md` is the user-facing explanation.
//!
//! ```
//! use graylane_analysis::{Analyzer, CheckSpec, Decision, Policy, Sample, evaluate};
//!
//! let check = CheckSpec::ErrorRate { max: Some(0.05), max_increase: Some(0.02) };
//! let policy = Policy { min_requests: 200, ..Policy::default() };
//! let mut analyzer = Analyzer::new(policy.clone());
//! analyzer.step_started(0);
//!
//! let baseline = Sample { requests: 5_000, errors: 50, seconds: 30.0, ..Sample::default() };
//! let few = Sample { requests: 37, errors: 0, seconds: 30.0, ..Sample::default() };
//! let result = evaluate(&check, &few, &baseline, policy.min_requests, policy.alpha);
//! assert_eq!(result.reason, "not enough data: 37 of 200 requests (candidate)");
//! assert!(matches!(analyzer.judge(30_000, &[result]), Decision::Hold { .. }));
//!
//! let broken = Sample { requests: 2_000, errors: 200, seconds: 60.0, ..Sample::default() };
//! let result = evaluate(&check, &broken, &baseline, policy.min_requests, policy.alpha);
//! assert!(matches!(analyzer.judge(60_000, &[result]), Decision::Fail { .. }));
//! ```

pub mod analyzer;
pub mod check;
pub mod histogram;
pub mod sample;
pub mod srm;
pub mod stats;

pub use analyzer::{Analyzer, Decision, FailureMode, Judgement, Policy};
pub use check::{CheckResult, CheckSpec, Verdict, evaluate, evaluate_variants};
pub use histogram::Histogram;
pub use sample::{Events, Sample};
pub use srm::{Srm, sample_ratio_mismatch};
