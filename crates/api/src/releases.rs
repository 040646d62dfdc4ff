//! Releases: one release as the API shows it, the list of them, and the bodies of the release
//! commands (`promote`, `pause`, ..., `weight`).

use std::collections::BTreeMap;

use graylane_analysis::Srm;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::states::{AnalysisDecision, CircuitState, ReleaseState, Strategy};

/// `GET /api/v1/releases`: every release of the environment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ReleaseList {
    /// The environment.
    pub env: String,
    /// One per service with a release, in configuration order.
    pub releases: Vec<ReleaseView>,
}

/// One release as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ReleaseView {
    /// The service the release is of.
    pub service: String,
    /// The environment.
    pub env: String,
    /// `canary`, `blue_green` or `experiment`.
    #[schema(value_type = String)]
    pub strategy: Strategy,
    /// `progressing`, `paused`, `completed`, `aborted` or `rolled_back`.
    #[schema(value_type = String)]
    pub state: ReleaseState,
    /// Index of the current step (from 0).
    pub step: usize,
    /// How many steps the release has.
    pub steps: usize,
    /// The configured steps in order: the candidate's weight and the pause of each.
    pub plan: Vec<StepView>,
    /// The version the release starts from.
    pub baseline: String,
    /// The version the release moves traffic to.
    pub candidate: String,
    /// The version that is stable now.
    pub stable: String,
    /// Percent of the bucketed traffic per version.
    pub weights: BTreeMap<String, f64>,
    /// Whether `weight` set the candidate's weight by hand (until the next step).
    pub weight_overridden: bool,
    /// A mirror step: percent of the requests copied to the candidate now (users are served by
    /// the baseline alone); absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<f64>,
    /// The current step's pause: `manual`, a duration such as `5m`, or none.
    pub pause: Option<String>,
    /// Seconds left of a timed pause (frozen while the release is paused).
    pub pause_remaining_s: Option<f64>,
    /// A promoted blue-green release keeps its previous version until then (RFC 3339).
    pub previous_kept_until: Option<String>,
    /// The commands that make sense now.
    pub allowed: Vec<String>,
    /// Experiments: each variant with its share and how many requests were bucketed into it.
    pub variants: Vec<VariantView>,
    /// The most recent transitions, oldest first.
    pub transitions: Vec<TransitionView>,
    /// The analysis's latest decision, when the release has one and it has judged.
    pub analysis: Option<AnalysisBrief>,
    /// Experiments: the sample-ratio-mismatch check of the distinct units against the weights.
    #[schema(value_type = Option<Object>)]
    pub srm: Option<Srm>,
    /// Circuit-breaker state by version (`closed`, `open`, `half_open`), for versions with a
    /// breaker.
    #[schema(value_type = BTreeMap<String, String>)]
    pub circuits: BTreeMap<String, CircuitState>,
    /// `steps: adaptive`: the bounds, the spent exposure budget and the path taken; absent for
    /// fixed steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adaptive: Option<AdaptiveView>,
    /// The gate the release waits on (`gates:`), with its last answer; absent when none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<GateView>,
}

/// A release waiting on one of its gates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct GateView {
    /// `pre_rollout`, `pre_step`, `confirm_promotion` or `post_rollback`.
    pub kind: String,
    /// The gate's URL, credentials masked: the one that last failed, else the first of its
    /// kind.
    pub url: String,
    /// Its last answer: an HTTP status such as `503`, or why there was none (`unreachable:
    /// ...`); absent until it answers (or on a node that does not lead a fleet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<String>,
    /// When that answer came (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answered_at: Option<String>,
    /// One line for people: `waiting on gate http://gates.internal/confirm: 503`.
    pub summary: String,
}

/// An adaptive canary: its bounds, its exposure budget and the weights it went through.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AdaptiveView {
    /// The first weight and the floor of a shrink, percent.
    pub start: f64,
    /// The highest weight before completion, percent.
    pub max: f64,
    /// The factor a clear interval multiplies the weight by.
    pub grow: f64,
    /// The factor an interval leaning worse multiplies the weight by.
    pub shrink: f64,
    /// The shortest time between two changes of the weight, in seconds.
    pub min_pause_s: f64,
    /// How long the weight may stay without a conclusive verdict before the release says it
    /// holds, in seconds.
    pub max_pause_s: f64,
    /// Requests the candidate served while it looked worse than the baseline.
    pub budget_spent: u64,
    /// The exposure budget (`max_bad_requests`); absent: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bad_requests: Option<u64>,
    /// Every change of the candidate's weight, oldest first (the latest 100): the adaptive path.
    pub path: Vec<TransitionView>,
}

/// One configured step of a release.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StepView {
    /// The candidate's percent of the bucketed traffic at this step.
    pub weight: f64,
    /// A mirror step: percent of the requests copied to the candidate; absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<f64>,
    /// `manual`, a duration such as `5m`, or none.
    pub pause: Option<String>,
}

/// The latest analysis decision in one line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AnalysisBrief {
    /// `continue`, `promote`, `hold`, `pause` or `fail`.
    #[schema(value_type = String)]
    pub decision: AnalysisDecision,
    /// The decision and what it rests on, in one line.
    pub summary: String,
    /// RFC 3339.
    pub at: String,
}

/// One variant of an experiment release.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct VariantView {
    /// The variant's name.
    pub name: String,
    /// The version it routes to.
    pub version: String,
    /// Its configured share, percent.
    pub weight: f64,
    /// Requests bucketed into the variant.
    pub exposures: u64,
    /// Distinct units (users, by bucketing key) bucketed into the variant; an estimate from a
    /// uniform sample beyond a few thousand per variant and worker.
    pub units: u64,
}

/// One change of a release's state, step or weight.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TransitionView {
    /// RFC 3339.
    pub at: String,
    /// Unix milliseconds.
    pub at_ms: i64,
    /// A token's name, `controller` for the timer, or `analysis`.
    pub actor: String,
    /// The command or event, e.g. `promote` or `tick`.
    pub action: String,
    /// Why, as the actor said.
    pub reason: String,
    /// The state before.
    #[schema(value_type = String)]
    pub from: ReleaseState,
    /// The state after.
    #[schema(value_type = String)]
    pub to: ReleaseState,
    /// The step after the change (from 0).
    pub step: usize,
    /// The candidate's weight after the change, in percent.
    pub weight: f64,
}

/// The optional body of a release command.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CommandBody {
    /// Why, for the audit log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `promote`: straight to 100%.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full: Option<bool>,
    /// `promote` of an experiment: the winning variant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// `{"weight": 12.5, "reason": "..."}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WeightBody {
    /// Percent, 0–100, at most three decimals.
    pub weight: serde_json::Value,
    /// Why, for the audit log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}
