//! The analysis of running releases. Once per `analysis.interval`, every check of a release is
//! judged on what its candidate and baseline did *since the current step began* (the data
//! plane's running totals minus a snapshot taken when the step began) with the statistics of
//! [`graylane_analysis`]; the [`Analyzer`] turns the interval's results into a decision that the
//! controller applies to the state machine: a passed step may move on, a failed one aborts (or
//! pauses), a step without enough data for too long pauses. An adaptive release's checks are
//! also judged on the data since its weight last changed alone (the *recent* view, see
//! [`graylane_rollout::adaptive`]), which a regression that appears only at a higher weight
//! cannot hide in.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use graylane_analysis::check::{Figures, Measure};
use graylane_analysis::{
    Analyzer, CheckResult, CheckSpec, Decision, Events, FailureMode, Histogram, Judgement, Policy,
    Sample, Verdict, evaluate,
};
use graylane_config::{Analysis, Check, StatusRange};

use crate::events::EventTotals;
use crate::prometheus::{Prometheus, QuerySource, render};
use graylane_rollout::{Command, Interval, Phase};
use graylane_store::NewAuditEntry;

use crate::controller::{Controller, find};
use crate::error::ControlError;
use crate::view::{check_name, summarize};
use graylane_api::AnalysisView;

/// Judgements kept per release for the API (the audit log has them all).
pub(crate) const HISTORY: usize = 50;

/// What the data plane has seen of one version since it started.
#[derive(Debug, Clone, Default)]
pub struct Observation {
    /// Responses by status (graylane's own 502/504/408 included).
    pub codes: BTreeMap<u16, u64>,
    /// Response times, for the latency percentiles.
    pub latency: Histogram,
    /// Requests routed to the version by bucketing: its exposures.
    pub bucketed: u64,
    /// Business events attributed to the version elsewhere: on a fleet node, the other nodes'
    /// (this node's own are in the controller's event log). Empty from a data plane.
    pub events: BTreeMap<String, EventTotals>,
}

/// The names a release's checks are about.
pub(crate) struct Subject<'a> {
    pub service: &'a str,
    pub baseline: &'a str,
    pub candidate: &'a str,
}

/// One release's analysis.
pub(crate) struct Runner {
    config: Analysis,
    analyzer: Analyzer,
    prometheus: Option<Prometheus>,
    /// The step being judged: (index, when it began).
    step: Option<(usize, i64)>,
    /// Running totals (candidate, baseline) when the step began.
    since: (Sample, Sample),
    /// The candidate's requests since the step began, at the last judgement: what an interval
    /// served is the difference (for an adaptive release's exposure budget).
    judged_requests: u64,
    /// An adaptive release: when its weight last changed, and the running totals then (the
    /// recent view's zero).
    recent: Option<(i64, (Sample, Sample))>,
    next_ms: i64,
    pub history: VecDeque<Judgement>,
}

impl Runner {
    pub(crate) fn new(config: &Analysis) -> Runner {
        Runner {
            analyzer: Analyzer::new(Policy {
                min_requests: config.min_requests,
                failure_limit: config.failure_limit,
                failure_mode: match config.failure_mode {
                    graylane_config::FailureMode::Consecutive => FailureMode::Consecutive,
                    graylane_config::FailureMode::Total => FailureMode::Total,
                },
                success_needed: config.success_needed,
                max_wait_without_data: config.max_wait_without_data,
                alpha: 1.0 - config.confidence,
            }),
            prometheus: config
                .prometheus_url
                .as_ref()
                .map(|url| Prometheus::new(url, Duration::from_secs(2))),
            config: config.clone(),
            step: None,
            since: (Sample::default(), Sample::default()),
            judged_requests: 0,
            recent: None,
            next_ms: 0,
            history: VecDeque::new(),
        }
    }

    /// Whether this runner still fits `config` (a changed analysis starts afresh).
    pub(crate) fn is_for(&self, config: &Analysis) -> bool {
        format!("{:?}", self.config) == format!("{config:?}")
    }

    /// Starts judging a new step from `now`: totals so far are the step's zero, and the recent
    /// view's too for an adaptive release (`changed_ms`: when its weight was set), so that the
    /// two views judge the very same data until the weight first changes.
    pub(crate) fn begin_step(
        &mut self,
        step: (usize, i64),
        changed_ms: Option<i64>,
        now: (Sample, Sample),
        now_ms: i64,
    ) {
        self.step = Some(step);
        self.recent = changed_ms.map(|at| (at, now.clone()));
        self.since = now;
        self.judged_requests = 0;
        self.analyzer.step_started(ms(now_ms));
        self.next_ms = now_ms + interval_ms(&self.config);
    }

    pub(crate) fn step(&self) -> Option<(usize, i64)> {
        self.step
    }

    /// Whether the recent view still starts at the weight change of `changed_ms`.
    pub(crate) fn recent_from(&self, changed_ms: i64) -> bool {
        self.recent
            .as_ref()
            .is_some_and(|(at, _)| *at == changed_ms)
    }

    /// The weight changed at `changed_ms`: the recent view starts over from the totals `now`.
    pub(crate) fn weight_changed(&mut self, changed_ms: i64, now: (Sample, Sample)) {
        self.recent = Some((changed_ms, now));
    }

    pub(crate) fn due(&self, now_ms: i64) -> bool {
        self.step.is_some() && now_ms >= self.next_ms
    }

    /// Judges the step on the totals `now` and returns the decision, the judgement, the
    /// requests the candidate served since the last judgement and the recent view's results
    /// (empty unless [`Runner::weight_changed`] started one).
    pub(crate) fn judge(
        &mut self,
        subject: &Subject<'_>,
        now: &(Sample, Sample),
        now_ms: i64,
    ) -> (Decision, Judgement, u64, Vec<CheckResult>) {
        let candidate = now.0.sub(&self.since.0);
        let baseline = now.1.sub(&self.since.1);
        let served = candidate.requests.saturating_sub(self.judged_requests);
        self.judged_requests = candidate.requests;
        let results = self.results(subject, &candidate, &baseline, true);
        let recent = match &self.recent {
            Some((_, zero)) => {
                self.results(subject, &now.0.sub(&zero.0), &now.1.sub(&zero.1), false)
            }
            None => Vec::new(),
        };
        let decision = self.analyzer.judge(ms(now_ms), &results);
        let judgement = self.analyzer.last().cloned().unwrap_or(Judgement {
            at_ms: ms(now_ms),
            results,
            decision: decision.clone(),
            passes: 0,
            failures: 0,
        });
        self.history.push_back(judgement.clone());
        while self.history.len() > HISTORY {
            self.history.pop_front();
        }
        self.next_ms = now_ms + interval_ms(&self.config);
        (decision, judgement, served, recent)
    }

    /// Every check on one window of data. A Prometheus query knows no windows: it is asked
    /// for the release view only (`queries`).
    fn results(
        &self,
        subject: &Subject<'_>,
        candidate: &Sample,
        baseline: &Sample,
        queries: bool,
    ) -> Vec<CheckResult> {
        let alpha = 1.0 - self.config.confidence;
        self.config
            .checks
            .iter()
            .filter_map(|check| match spec(check) {
                Some(spec) => Some(evaluate(
                    &spec,
                    candidate,
                    baseline,
                    self.config.min_requests,
                    alpha,
                )),
                None => queries.then(|| self.query(check, subject)),
            })
            .collect()
    }

    /// A Prometheus `query` check: the value must lie within its bounds; a query that gives no
    /// number is inconclusive, with the reason.
    fn query(&self, check: &Check, subject: &Subject<'_>) -> CheckResult {
        let Check::Query {
            name,
            query,
            max,
            min,
        } = check
        else {
            return inconclusive("query", "not a query check".to_string());
        };
        let Some(prometheus) = &self.prometheus else {
            return inconclusive(name, "no prometheus_url configured".to_string());
        };
        let promql = render(query, subject.service, subject.baseline, subject.candidate);
        match prometheus.query(&promql) {
            Err(e) => inconclusive(name, e.to_string()),
            Ok(value) => {
                let above = max.filter(|m| value > *m);
                let below = min.filter(|m| value < *m);
                let (verdict, reason) = match (above, below) {
                    (Some(m), _) => (Verdict::Fail, format!("{value} is above max {m}")),
                    (_, Some(m)) => (Verdict::Fail, format!("{value} is below min {m}")),
                    _ => (Verdict::Pass, format!("{value} is within bounds")),
                };
                CheckResult {
                    check: name.clone(),
                    verdict,
                    enough_data: true,
                    reason,
                    figures: Figures {
                        alpha: 0.0,
                        candidate: Measure {
                            n: 1,
                            value: Some(value),
                            low: None,
                            high: None,
                        },
                        ..Figures::default()
                    },
                }
            }
        }
    }
}

fn inconclusive(name: &str, reason: String) -> CheckResult {
    CheckResult {
        check: name.to_string(),
        verdict: Verdict::Inconclusive,
        enough_data: true,
        reason,
        figures: Figures::default(),
    }
}

/// The statistics' form of a configured check; `None` for a Prometheus query.
pub(crate) fn spec(check: &Check) -> Option<CheckSpec> {
    Some(match check {
        Check::ErrorRate { max, max_increase } => CheckSpec::ErrorRate {
            max: *max,
            max_increase: *max_increase,
        },
        Check::Latency {
            percentile,
            max_ms,
            max_ratio,
        } => CheckSpec::Latency {
            percentile: *percentile,
            max_ms: *max_ms,
            max_ratio: *max_ratio,
        },
        Check::Throughput { min_rps } => CheckSpec::Throughput { min_rps: *min_rps },
        Check::EventRate { event, min_change } => CheckSpec::EventRate {
            event: event.clone(),
            min_change: Some(*min_change),
        },
        Check::EventMean { event, min_change } => CheckSpec::EventMean {
            event: event.clone(),
            min_change: Some(*min_change),
        },
        Check::Query { .. } => return None,
    })
}

/// One version's running totals as a sample, counting `error_codes` as errors.
pub(crate) fn totals(
    observed: &Observation,
    events: &BTreeMap<String, EventTotals>,
    error_codes: &[StatusRange],
    now_ms: i64,
) -> Sample {
    let requests = observed.codes.values().sum();
    let errors = observed
        .codes
        .iter()
        .filter(|(code, _)| error_codes.iter().any(|r| r.contains(**code)))
        .map(|(_, n)| n)
        .sum();
    Sample {
        requests,
        errors,
        latency: observed.latency.clone(),
        seconds: now_ms as f64 / 1000.0,
        events: events
            .iter()
            .map(|(name, t)| {
                (
                    name.clone(),
                    Events {
                        count: t.count,
                        sum: t.sum,
                        sum_sq: t.sum_sq,
                        units: observed.bucketed,
                    },
                )
            })
            .collect(),
    }
}

fn interval_ms(config: &Analysis) -> i64 {
    i64::try_from(config.interval.as_millis())
        .unwrap_or(i64::MAX / 4)
        .max(1)
}

fn ms(now_ms: i64) -> u64 {
    u64::try_from(now_ms).unwrap_or(0)
}

impl Controller {
    /// Judges every analysed release whose interval is up and applies the decisions: a passed
    /// step may move on, a failed one aborts (or pauses), no data for too long pauses. Returns
    /// how many releases were judged.
    pub fn analyze(&self, now_ms: i64) -> usize {
        struct Work {
            service: String,
            analysis: graylane_config::Analysis,
            step: (usize, i64),
            /// An adaptive release: when its weight last changed.
            changed_ms: Option<i64>,
            baseline: String,
            candidate: String,
        }
        let (work, releases): (Vec<Work>, Vec<String>) = {
            let state = self.lock();
            let work = state
                .releases
                .iter()
                // Before its pre_rollout gate passes, the candidate has no traffic to judge.
                .filter(|(_, m)| {
                    m.rollout.phase == Phase::Progressing
                        && m.rollout.gate != Some(graylane_config::GateKind::PreRollout)
                })
                .filter_map(|(name, m)| {
                    let svc = state.config.service(name)?;
                    Some(Work {
                        service: name.clone(),
                        analysis: svc.release.as_ref()?.analysis.clone()?,
                        step: (m.rollout.step, m.rollout.step_started_ms),
                        changed_ms: m.plan.adaptive.map(|_| {
                            m.rollout
                                .adaptive
                                .map_or(m.rollout.step_started_ms, |a| a.changed_ms)
                        }),
                        baseline: svc.versions.get(m.plan.baseline)?.name.clone(),
                        candidate: svc.versions.get(m.plan.candidate)?.name.clone(),
                    })
                })
                .collect();
            (work, state.releases.keys().cloned().collect())
        };
        let mut verdicts = Vec::new();
        {
            let mut analyses = self.analyses.lock().unwrap_or_else(|e| e.into_inner());
            analyses.retain(|name, _| releases.contains(name));
            for w in &work {
                let runner = analyses
                    .entry(w.service.clone())
                    .or_insert_with(|| Runner::new(&w.analysis));
                if !runner.is_for(&w.analysis) {
                    *runner = Runner::new(&w.analysis);
                }
                let codes = &w.analysis.error_codes;
                let now = || {
                    (
                        self.totals_now(&w.service, &w.candidate, codes, now_ms),
                        self.totals_now(&w.service, &w.baseline, codes, now_ms),
                    )
                };
                if runner.step() != Some(w.step) {
                    runner.begin_step(w.step, w.changed_ms, now(), now_ms);
                }
                if let Some(changed_ms) = w.changed_ms
                    && !runner.recent_from(changed_ms)
                {
                    runner.weight_changed(changed_ms, now());
                }
                if !runner.due(now_ms) {
                    continue;
                }
                let subject = Subject {
                    service: &w.service,
                    baseline: &w.baseline,
                    candidate: &w.candidate,
                };
                let (decision, judgement, served, recent) = runner.judge(&subject, &now(), now_ms);
                verdicts.push((
                    w.service.clone(),
                    w.step,
                    decision,
                    judgement,
                    served,
                    recent,
                ));
            }
        }
        let judged = verdicts.len();
        for (service, step, decision, judgement, served, recent) in verdicts {
            let verdict = (&decision, &judgement, served, recent.as_slice());
            if let Err(e) = self.apply_verdict(&service, step, verdict, now_ms) {
                self.errors.log(format_args!(
                    "cannot apply the analysis verdict of `{service}`: {e}"
                ));
            }
        }
        judged
    }

    fn totals_now(
        &self,
        service: &str,
        version: &str,
        error_codes: &[graylane_config::StatusRange],
        now_ms: i64,
    ) -> graylane_analysis::Sample {
        let observed = self.plane.observe(service, version);
        totals(
            &observed,
            &self.events_of(service, version, &observed),
            error_codes,
            now_ms,
        )
    }

    fn apply_verdict(
        &self,
        service: &str,
        step: (usize, i64),
        (decision, judgement, served, recent): (&Decision, &Judgement, u64, &[CheckResult]),
        now_ms: i64,
    ) -> Result<(), ControlError> {
        let mut state = self.lock();
        let summary = summarize(decision, judgement);
        // Every verdict is a log record too, moving the release or not: an operator tailing the
        // log (or shipping it) sees why a release holds, not only that it moved.
        tracing::info!(target: "graylane::analysis", service, verdict = %summary, "analysis verdict");
        self.store.append_audit(
            &self.env,
            NewAuditEntry {
                at_ms: now_ms,
                actor: "analysis".to_string(),
                action: "analysis".to_string(),
                target: service.to_string(),
                reason: summary.clone(),
                detail: serde_json::to_value(judgement).unwrap_or_default(),
            },
        )?;
        let Some(m) = state.releases.get(service) else {
            return Ok(());
        };
        // A person may have moved the release since the judgement began.
        if m.rollout.phase != Phase::Progressing
            || (m.rollout.step, m.rollout.step_started_ms) != step
        {
            return Ok(());
        }
        // An adaptive release: the interval moves its weight (a pause for lack of data aside).
        if m.plan.adaptive.is_some() && !matches!(decision, Decision::Pause { .. }) {
            let interval = Interval::judged(decision, &judgement.results, recent, served);
            let mut rollout = m.rollout.clone();
            let before = rollout.history.len();
            rollout.adapt(&m.plan, &interval, now_ms);
            let new = rollout.history.len() - before;
            if rollout == m.rollout {
                return Ok(());
            }
            return self.commit(&mut state, service, rollout, new, true);
        }
        let command = match decision {
            Decision::Promote if !m.rollout.analysis_passed => Command::AnalysisPassed,
            Decision::Fail { .. } => Command::AnalysisFailed,
            Decision::Pause { .. } => Command::Pause,
            _ => return Ok(()),
        };
        let mut rollout = m.rollout.clone();
        rollout.apply(&m.plan, command, "analysis", &summary, now_ms)?;
        // A step whose pause is already over moves on at once.
        let before = rollout.history.len();
        rollout.tick(&m.plan, now_ms);
        let new = 1 + rollout.history.len() - before;
        self.commit(&mut state, service, rollout, new, true)
    }

    /// The latest judgements of `service`'s analysis, oldest first.
    pub fn analysis(&self, service: &str) -> Result<AnalysisView, ControlError> {
        let (interval_s, checks) = {
            let state = self.lock();
            find(&state, service)?;
            let analysis = state
                .config
                .service(service)
                .and_then(|s| s.release.as_ref())
                .and_then(|r| r.analysis.as_ref());
            (
                analysis.map(|a| a.interval.as_secs_f64()),
                analysis.map_or_else(Vec::new, |a| a.checks.iter().map(check_name).collect()),
            )
        };
        let analyses = self.analyses.lock().unwrap_or_else(|e| e.into_inner());
        let history: Vec<Judgement> = analyses
            .get(service)
            .map(|r| r.history.iter().cloned().collect())
            .unwrap_or_default();
        Ok(AnalysisView {
            service: service.to_string(),
            configured: interval_s.is_some(),
            interval_s,
            checks,
            latest: history.last().cloned(),
            history,
        })
    }
}
