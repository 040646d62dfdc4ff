//! What the admin API answers: releases, revisions and audit entries, built from the
//! controller's state on request as the `graylane-api` crate's documents.

use std::collections::BTreeMap;

use graylane_analysis::{Decision, Judgement, sample_ratio_mismatch};
use graylane_api::{
    AdaptiveView, AnalysisBrief, AnalysisDecision, AuditView, CircuitState, ReleaseState,
    ReleaseView, RevisionSource, RevisionView, StepView, Strategy, TransitionView, VariantView,
};
use graylane_config::{Check, Pause, Service, Weight};
use graylane_rollout::{Kind, Phase, Plan, Rollout, Transition};
use graylane_store::{AuditEntry, Revision, RevisionMeta};

/// How many of a release's transitions a view shows.
pub const TRANSITIONS_SHOWN: usize = 50;

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
        Decision::Continue => AnalysisDecision::Continue,
        Decision::Promote => AnalysisDecision::Promote,
        Decision::Hold { .. } => AnalysisDecision::Hold,
        Decision::Pause { .. } => AnalysisDecision::Pause,
        Decision::Fail { .. } => AnalysisDecision::Fail,
    };
    AnalysisBrief {
        decision,
        summary: summarize(&judgement.decision, judgement),
        at: rfc3339(i64::try_from(judgement.at_ms).unwrap_or(0)),
    }
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
    pub gate: Option<graylane_api::GateView>,
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
        gate,
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
        strategy: strategy(&plan.kind),
        state: state(rollout.phase),
        step: rollout.step,
        steps: plan.steps.len(),
        plan: plan
            .steps
            .iter()
            .map(|s| StepView {
                weight: s.weight.percent(),
                mirror: s.mirror.map(Weight::percent),
                pause: pause_text(s.pause),
            })
            .collect(),
        baseline: name(plan.baseline),
        candidate: name(plan.candidate),
        stable: name(rollout.stable(plan)),
        weights,
        weight_overridden: rollout.weight_overridden,
        mirror: rollout.mirror(plan).map(Weight::percent),
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
        circuits: circuits
            .into_iter()
            .map(|(version, word)| (version, CircuitState::from_word(word)))
            .collect(),
        adaptive: plan.adaptive.map(|bounds| adaptive_view(&bounds, rollout)),
        gate,
    }
}

/// Weight changes shown as an adaptive release's path.
const PATH_SHOWN: usize = 100;

fn adaptive_view(bounds: &graylane_config::Adaptive, rollout: &Rollout) -> AdaptiveView {
    let mut previous = None;
    let mut path: Vec<TransitionView> = rollout
        .history
        .iter()
        .filter(|t| previous.replace(t.weight) != Some(t.weight))
        .map(transition_view)
        .collect();
    path.drain(..path.len().saturating_sub(PATH_SHOWN));
    AdaptiveView {
        start: bounds.start.percent(),
        max: bounds.max.percent(),
        grow: bounds.grow,
        shrink: bounds.shrink,
        min_pause_s: bounds.min_pause.as_secs_f64(),
        max_pause_s: bounds.max_pause.as_secs_f64(),
        budget_spent: rollout.adaptive.map_or(0, |a| a.spent),
        max_bad_requests: bounds.max_bad_requests,
        path,
    }
}

fn strategy(kind: &Kind) -> Strategy {
    match kind {
        Kind::Canary => Strategy::Canary,
        Kind::BlueGreen { .. } => Strategy::BlueGreen,
        Kind::Experiment { .. } => Strategy::Experiment,
    }
}

fn state(phase: Phase) -> ReleaseState {
    match phase {
        Phase::Progressing => ReleaseState::Progressing,
        Phase::Paused => ReleaseState::Paused,
        Phase::Completed => ReleaseState::Completed,
        Phase::Aborted => ReleaseState::Aborted,
        Phase::RolledBack => ReleaseState::RolledBack,
    }
}

fn transition_view(t: &Transition) -> TransitionView {
    TransitionView {
        at: rfc3339(t.at_ms),
        at_ms: t.at_ms,
        actor: t.actor.clone(),
        action: t.what.clone(),
        reason: t.reason.clone(),
        from: state(t.from),
        to: state(t.to),
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
    let (source, reverted_from) = match meta.source {
        graylane_store::RevisionSource::File => (RevisionSource::File, None),
        graylane_store::RevisionSource::Api => (RevisionSource::Api, None),
        graylane_store::RevisionSource::Revert { from } => (RevisionSource::Revert, Some(from)),
    };
    RevisionView {
        n: meta.n,
        at: rfc3339(meta.at_ms),
        at_ms: meta.at_ms,
        author: meta.author.clone(),
        message: meta.message.clone(),
        source,
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
