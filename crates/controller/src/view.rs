//! What the admin API answers: releases, revisions and audit entries as JSON documents (their
//! schemas are part of the OpenAPI document). Built from the controller's state on request.

use std::collections::BTreeMap;

use graylane_analysis::{Decision, Judgement, Srm, sample_ratio_mismatch};
use graylane_config::{Check, Pause, Service, Weight};
use graylane_rollout::{Kind, Plan, Rollout, Transition};
use graylane_store::{AuditEntry, Revision, RevisionMeta};
use serde::Serialize;
use utoipa::ToSchema;

/// How many of a release's transitions a view shows.
pub const TRANSITIONS_SHOWN: usize = 50;

/// One release as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ReleaseView {
    pub service: String,
    pub env: String,
    /// `canary`, `blue_green` or `experiment`.
    pub strategy: String,
    /// `progressing`, `paused`, `completed`, `aborted` or `rolled_back`.
    pub state: String,
    /// Index of the current step (from 0).
    pub step: usize,
    pub steps: usize,
    /// The configured steps in order: the candidate's weight and the pause of each.
    pub plan: Vec<StepView>,
    pub baseline: String,
    pub candidate: String,
    /// The version that is stable now.
    pub stable: String,
    /// Percent of the bucketed traffic per version.
    pub weights: BTreeMap<String, f64>,
    pub weight_overridden: bool,
    /// The current step's pause: `manual`, a duration such as `5m`, or none.
    pub pause: Option<String>,
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
    pub circuits: BTreeMap<String, &'static str>,
}

/// One configured step of a release.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct StepView {
    /// The candidate's percent of the bucketed traffic at this step.
    pub weight: f64,
    /// `manual`, a duration such as `5m`, or none.
    pub pause: Option<String>,
}

/// The latest analysis decision in one line.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AnalysisBrief {
    /// `continue`, `promote`, `hold`, `pause` or `fail`.
    pub decision: String,
    pub summary: String,
    /// RFC 3339.
    pub at: String,
}

/// A release's analysis: its checks and its latest judgements with their figures.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AnalysisView {
    pub service: String,
    /// Whether the release has an `analysis` section.
    pub configured: bool,
    pub interval_s: Option<f64>,
    pub checks: Vec<String>,
    /// The latest judgement: every check's verdict (pass, fail, inconclusive) with its figures
    /// and the decision.
    #[schema(value_type = Option<Object>)]
    pub latest: Option<Judgement>,
    /// Up to the last 50 judgements, oldest first.
    #[schema(value_type = Vec<Object>)]
    pub history: Vec<Judgement>,
}

/// Where a business event was counted.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EventAttribution {
    pub service: String,
    pub version: String,
    /// The experiment variant, for an experiment.
    pub variant: Option<String>,
}

/// A check's name as the API shows it: `error_rate`, `latency_p99`, the query's name...
pub fn check_name(check: &Check) -> String {
    match check {
        Check::ErrorRate { .. } => "error_rate".to_string(),
        Check::Latency { percentile, .. } => format!("latency_p{percentile}"),
        Check::Throughput { .. } => "throughput".to_string(),
        Check::Query { name, .. } => name.clone(),
        Check::EventRate { event, .. } => format!("event_rate:{event}"),
        Check::EventMean { event, .. } => format!("event_mean:{event}"),
    }
}

/// The decision and what it rests on, in one line (the audit's reason).
pub fn summarize(decision: &Decision, judgement: &Judgement) -> String {
    let checks = judgement
        .results
        .iter()
        .map(|r| format!("{}: {:?} ({})", r.check, r.verdict, r.reason).to_lowercase())
        .collect::<Vec<_>>()
        .join("; ");
    match decision {
        Decision::Promote => format!("analysis passed: {checks}"),
        Decision::Continue => format!("continue: {checks}"),
        Decision::Hold { reason } => format!("hold: {reason}"),
        Decision::Pause { reason } => format!("pause: {reason}"),
        Decision::Fail { reason } => format!("fail: {reason}"),
    }
}

pub(crate) fn brief(judgement: &Judgement) -> AnalysisBrief {
    let decision = match judgement.decision {
        Decision::Continue => "continue",
        Decision::Promote => "promote",
        Decision::Hold { .. } => "hold",
        Decision::Pause { .. } => "pause",
        Decision::Fail { .. } => "fail",
    };
    AnalysisBrief {
        decision: decision.to_string(),
        summary: summarize(&judgement.decision, judgement),
        at: rfc3339(i64::try_from(judgement.at_ms).unwrap_or(0)),
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct VariantView {
    pub name: String,
    pub version: String,
    pub weight: f64,
    pub exposures: u64,
    /// Distinct units (users, by bucketing key) bucketed into the variant; an estimate from a
    /// uniform sample beyond a few thousand per variant and worker.
    pub units: u64,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TransitionView {
    /// RFC 3339.
    pub at: String,
    pub at_ms: i64,
    pub actor: String,
    pub action: String,
    pub reason: String,
    pub from: String,
    pub to: String,
    pub step: usize,
    /// The candidate's weight after the change, in percent.
    pub weight: f64,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RevisionView {
    pub n: u64,
    /// RFC 3339.
    pub at: String,
    pub at_ms: i64,
    pub author: String,
    pub message: String,
    /// `file`, `api` or `revert`.
    pub source: String,
    /// For a revert: the revision whose text it restored.
    pub reverted_from: Option<u64>,
    /// The whole YAML; only when one revision is asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub yaml: Option<String>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AuditView {
    pub seq: u64,
    /// RFC 3339.
    pub at: String,
    pub at_ms: i64,
    pub actor: String,
    pub action: String,
    /// A service name, or `config`.
    pub target: String,
    pub reason: String,
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
}

/// RFC 3339 in UTC with milliseconds; the Unix epoch for a time that cannot be shown.
pub fn rfc3339(ms: i64) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".to_string())
}

/// What a release view shows beyond the release's own state: what the data plane and the
/// analysis observe.
pub(crate) struct Observed<F: Fn(&str) -> u64> {
    /// Requests bucketed into a version (experiment exposures).
    pub exposures: F,
    /// An experiment's distinct units per variant, in variant order, and their sampling level
    /// (see `DataPlane::units`).
    pub units: (Vec<u64>, u32),
    pub analysis: Option<AnalysisBrief>,
    pub circuits: BTreeMap<String, &'static str>,
}

pub(crate) fn release_view<F: Fn(&str) -> u64>(
    env: &str,
    service: &Service,
    (plan, rollout): (&Plan, &Rollout),
    now_ms: i64,
    observed: Observed<F>,
) -> ReleaseView {
    let Observed {
        exposures,
        units: (units, level),
        analysis,
        circuits,
    } = observed;
    let name = |v: usize| {
        service
            .versions
            .get(v)
            .map_or_else(|| "?".to_string(), |v| v.name.clone())
    };
    let routing = rollout.routing(plan);
    // Every version the release is about is listed, at 0% when it has no share.
    let mut weights: BTreeMap<String, f64> = [plan.baseline, plan.candidate]
        .into_iter()
        .chain(match &plan.kind {
            Kind::Experiment { variants } => variants.iter().map(|v| v.1).collect(),
            _ => Vec::new(),
        })
        .map(|v| (name(v), 0.0))
        .collect();
    for share in &routing.shares {
        *weights.entry(name(share.version)).or_insert(0.0) += share.weight.percent();
    }
    let pause_text = |pause: Pause| match pause {
        Pause::None => None,
        Pause::Manual => Some("manual".to_string()),
        Pause::For(d) => Some(humantime_like(d)),
    };
    let pause = plan
        .steps
        .get(rollout.step)
        .and_then(|s| pause_text(s.pause));
    let variants_view: Vec<VariantView> = match &plan.kind {
        Kind::Experiment { variants } => variants
            .iter()
            .enumerate()
            .map(|(i, (variant, version, weight))| {
                let version = name(*version);
                VariantView {
                    exposures: exposures(&version),
                    units: units.get(i).map_or(0, |n| n.saturating_mul(1 << level)),
                    name: variant.clone(),
                    version,
                    weight: weight.percent(),
                }
            })
            .collect(),
        _ => Vec::new(),
    };
    let skip = rollout.history.len().saturating_sub(TRANSITIONS_SHOWN);
    ReleaseView {
        service: service.name.clone(),
        env: env.to_string(),
        strategy: plan.kind.as_str().to_string(),
        state: rollout.phase.as_str().to_string(),
        step: rollout.step,
        steps: plan.steps.len(),
        plan: plan
            .steps
            .iter()
            .map(|s| StepView {
                weight: s.weight.percent(),
                pause: pause_text(s.pause),
            })
            .collect(),
        baseline: name(plan.baseline),
        candidate: name(plan.candidate),
        stable: name(rollout.stable(plan)),
        weights,
        weight_overridden: rollout.weight_overridden,
        pause,
        pause_remaining_s: rollout
            .pause_remaining_ms(plan, now_ms)
            .map(|ms| ms as f64 / 1000.0),
        previous_kept_until: rollout.previous_until_ms.map(rfc3339),
        allowed: rollout
            .allowed(plan)
            .iter()
            .map(|s| s.to_string())
            .collect(),
        transitions: rollout.history[skip..]
            .iter()
            .map(transition_view)
            .collect(),
        srm: match &plan.kind {
            // Units, not requests: one heavy user is one unit. The sampled counts, not the
            // estimates, as in `experiment::results`.
            Kind::Experiment { variants } => Some(sample_ratio_mismatch(
                &units,
                &variants.iter().map(|v| v.2.percent()).collect::<Vec<_>>(),
            )),
            _ => None,
        },
        variants: variants_view,
        analysis,
        circuits,
    }
}

fn transition_view(t: &Transition) -> TransitionView {
    TransitionView {
        at: rfc3339(t.at_ms),
        at_ms: t.at_ms,
        actor: t.actor.clone(),
        action: t.what.clone(),
        reason: t.reason.clone(),
        from: t.from.as_str().to_string(),
        to: t.to.as_str().to_string(),
        step: t.step,
        weight: t.weight.percent(),
    }
}

/// `5m`, `90s`, `1h30m`: how the configuration writes durations.
fn humantime_like(d: std::time::Duration) -> String {
    let secs = d.as_secs();
    if secs == 0 {
        return format!("{}ms", d.as_millis());
    }
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    for (n, unit) in [(h, "h"), (m, "m"), (s, "s")] {
        if n > 0 {
            out.push_str(&format!("{n}{unit}"));
        }
    }
    out
}

pub(crate) fn revision_view(meta: &RevisionMeta) -> RevisionView {
    let reverted_from = match meta.source {
        graylane_store::RevisionSource::Revert { from } => Some(from),
        _ => None,
    };
    RevisionView {
        n: meta.n,
        at: rfc3339(meta.at_ms),
        at_ms: meta.at_ms,
        author: meta.author.clone(),
        message: meta.message.clone(),
        source: meta.source.as_str().to_string(),
        reverted_from,
        yaml: None,
    }
}

pub(crate) fn full_revision_view(rev: &Revision) -> RevisionView {
    let mut view = revision_view(&RevisionMeta {
        n: rev.n,
        at_ms: rev.at_ms,
        author: rev.author.clone(),
        message: rev.message.clone(),
        source: rev.source.clone(),
    });
    view.yaml = Some(rev.yaml.clone());
    view
}

pub(crate) fn audit_view(e: &AuditEntry) -> AuditView {
    AuditView {
        seq: e.seq,
        at: rfc3339(e.at_ms),
        at_ms: e.at_ms,
        actor: e.actor.clone(),
        action: e.action.clone(),
        target: e.target.clone(),
        reason: e.reason.clone(),
        detail: e.detail.clone(),
    }
}

/// Percent per version of a weight map, for audit details and webhooks.
pub(crate) fn weights_json(weights: &BTreeMap<String, f64>) -> serde_json::Value {
    serde_json::to_value(weights).unwrap_or_default()
}

/// A weight in percent from the API: 0–100 with at most three decimals.
pub(crate) fn parse_weight(percent: f64) -> Option<Weight> {
    if percent.is_finite() {
        Weight::from_percent(percent)
    } else {
        None
    }
}
