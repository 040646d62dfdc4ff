//! The controller of one environment: its configuration (with revisions) and every release in
//! it. All changes go through one lock, in this order: check, persist, tell the data plane,
//! announce. A change the store refuses is not made at all.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use graylane_analysis::{Decision, Judgement};
use graylane_config::{Config, SegmentSource, Service};
use graylane_notify::{Notifier, WebhookTarget};
use graylane_rollout::{Command, Kind, Phase, Plan, Rollout, Transition};
use graylane_rules::Routing;
use graylane_store::{
    AuditFilter, Expect, NewAuditEntry, NewRevision, RevisionSource, Store, StoreError,
};
use serde::{Deserialize, Serialize};

use crate::analysis::{Observation, Runner, Subject, totals};
use crate::error::ControlError;
use crate::events::EventLog;
use crate::experiment::ExperimentResults;
use crate::fleet::{RouteFigures, UnitHashes};
use crate::series::{Series, SeriesView};
use crate::view::{
    self, AnalysisView, AuditView, EventAttribution, ReleaseView, RevisionView, audit_view,
    check_name, full_revision_view, release_view, revision_view, summarize,
};

/// Where the controller's decisions take effect: the gateway's routing.
pub trait DataPlane: Send + Sync {
    /// A new configuration together with every release's traffic split, in one swap.
    fn apply(&self, config: Config, routes: &BTreeMap<String, Routing>);
    /// One release's traffic split.
    fn set_routing(&self, service: &str, routing: Routing);
    /// What `version` of `service` has done since the gateway started.
    fn observe(&self, service: &str, version: &str) -> Observation;
    /// The distinct units (bucketing keys) bucketed into each of `versions` of `service`, as
    /// `(counts, level)`: exact counts at level 0, else counts of the same uniform 1 / 2^level
    /// sample of units for every version (what the sample-ratio-mismatch test takes).
    fn units(&self, service: &str, versions: &[&str]) -> (Vec<u64>, u32);
    /// The version a user with bucketing key `key` is bucketed into (business events).
    fn assign(&self, service: &str, key: &str) -> Option<String>;
    /// The circuit-breaker state (`closed`, `open`, `half_open`) of each version of `service`
    /// that has a breaker.
    fn circuit_states(&self, service: &str) -> BTreeMap<String, &'static str>;
    /// This node's own figures of every (service, version) it has seen, with its unit samples:
    /// what it publishes to the rest of a fleet ([`crate::fleet::report`]). Only this node's,
    /// even through a [`crate::fleet::FleetPlane`]. None by default: a plane not in a fleet.
    fn local_figures(&self) -> Vec<RouteFigures> {
        Vec::new()
    }
    /// This node's own sample of the units bucketed into `version` of `service` (see
    /// [`DataPlane::units`]), which a fleet unites with the other nodes'. `None` by default, or
    /// when the version's units are not counted.
    fn local_units(&self, _service: &str, _version: &str) -> Option<UnitHashes> {
        None
    }
}

/// What a reload of the configuration file did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reloaded {
    /// Neither the file nor a segment file it names changed.
    Unchanged,
    /// The file changed: the revision it was recorded as.
    Revision(u64),
    /// Only the members of these `file:` segments changed (no new revision: the text is the
    /// same).
    Segments(Vec<String>),
}

/// What a person (or the analysis) asks of a release, as the API says it.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Promote,
    PromoteFull,
    /// An experiment's winner, by variant name.
    PromoteVariant(String),
    Pause,
    Resume,
    Abort,
    Retry,
    Rollback,
    /// A weight in percent, checked here.
    SetWeight(f64),
    AnalysisFailed,
}

/// Who asks, and why.
#[derive(Debug, Clone)]
pub struct Actor<'a> {
    pub name: &'a str,
    pub reason: &'a str,
}

/// The outcome of a configuration change (or of trying one with `dry_run`).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ApplyOutcome {
    pub applied: bool,
    pub valid: bool,
    /// The revision recorded; none for a dry run or a text identical to the current one.
    pub revision: Option<RevisionView>,
    /// Unified diff from the current revision to the proposed text.
    pub diff: String,
}

/// How the controller starts.
pub struct Setup {
    pub env: String,
    /// The file the configuration lives in; changes made through the API are written there
    /// (unless `fleet`). Relative segment file paths are resolved from its folder.
    pub config_path: PathBuf,
    /// A fleet node: the store is shared with other nodes, which change releases and the
    /// configuration too ([`Controller::revision_changed`], [`Controller::release_changed`]).
    /// The store, not the file, is the configuration's home, so API changes are not written to
    /// the file.
    pub fleet: bool,
    pub store: Arc<dyn Store>,
    pub plane: Arc<dyn DataPlane>,
    pub notifier: Option<Notifier>,
    /// The configuration's text, already validated as `config`.
    pub yaml: String,
    /// The configuration file's text as read at start, when it is not `yaml`: a fleet node
    /// whose file is older than the newest revision in the store serves that revision, and
    /// pushes the file only once it changes.
    pub file_text: Option<String>,
    pub config: Config,
    pub now_ms: i64,
}

pub struct Controller {
    env: String,
    config_path: PathBuf,
    fleet: bool,
    store: Arc<dyn Store>,
    plane: Arc<dyn DataPlane>,
    notifier: Option<Notifier>,
    state: Mutex<State>,
    /// Each analysed release's analysis, by service. Locked apart from `state` (and never while
    /// holding it) because judging may wait on Prometheus.
    analyses: Mutex<BTreeMap<String, Runner>>,
    events: EventLog,
    series: Mutex<Series>,
    /// The background work's errors (timed steps, verdicts), logged at a bounded rate: a full
    /// disk fails every tick.
    errors: ThrottledLog,
}

/// Logs an error at most once per [`ThrottledLog::WINDOW`], with a count of those held back.
#[derive(Default)]
struct ThrottledLog {
    /// When the last line was logged, and how many errors were held back since.
    state: Mutex<Option<(std::time::Instant, u64)>>,
}

impl ThrottledLog {
    const WINDOW: std::time::Duration = std::time::Duration::from_secs(10);

    /// Logs `error` unless a line was logged within the window; `true` if it was logged.
    fn log(&self, error: std::fmt::Arguments<'_>) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = std::time::Instant::now();
        match &mut *state {
            Some((last, held)) if now.duration_since(*last) < Self::WINDOW => {
                *held += 1;
                false
            }
            Some((last, held)) => {
                tracing::error!(
                    "{error} ({held} similar errors in the last {:?} not logged)",
                    now.duration_since(*last)
                );
                *last = now;
                *held = 0;
                true
            }
            None => {
                tracing::error!("{error}");
                *state = Some((now, 0));
                true
            }
        }
    }
}

struct State {
    config: Arc<Config>,
    yaml: String,
    /// The configuration file's text as last read or written: what a reload compares with.
    file_text: String,
    revision: u64,
    releases: BTreeMap<String, Managed>,
}

struct Managed {
    identity: String,
    plan: Plan,
    rollout: Rollout,
    /// The store's version of this state (0: not stored yet, or a single-writer store): a
    /// change is saved only if it is still the stored one.
    version: u64,
    /// Started in memory by a fleet node following another's revision, and not saved yet:
    /// the leader saves it ([`Controller::save_pending`]).
    pending: bool,
}

/// A release as stored: versions by name, so a reordered configuration still resumes it.
#[derive(Serialize, Deserialize)]
struct Persisted {
    identity: String,
    rollout: Rollout,
    winner: Option<String>,
}

impl Controller {
    /// Opens the environment: records the file as a revision if it differs from the last one,
    /// resumes every stored release whose configuration still matches (at the same step,
    /// weight and remaining pause), starts the new ones, and applies it all to the data plane.
    pub fn open(setup: Setup) -> Result<Controller, ControlError> {
        let Setup {
            env,
            config_path,
            fleet,
            store,
            plane,
            notifier,
            yaml,
            file_text,
            config,
            now_ms,
        } = setup;
        retain_audit(store.as_ref(), &config);
        let latest = store.latest_revision(&env)?;
        let mut recorded = None;
        let mut latest = latest;
        let revision = loop {
            match &latest {
                Some(rev) if rev.yaml == yaml => break rev.n,
                _ => {}
            }
            let message = if latest.is_some() {
                "the file changed while graylane was stopped"
            } else {
                "initial configuration"
            };
            let new = NewRevision {
                at_ms: now_ms,
                author: "file".to_string(),
                message: message.to_string(),
                source: RevisionSource::File,
                yaml: yaml.clone(),
            };
            let seen = latest.as_ref().map_or(0, |r| r.n);
            match store.add_revision_if(&env, new, seen)? {
                Some(rev) => {
                    store.append_audit(&env, config_audit(&rev.n, "file", message, now_ms))?;
                    recorded = Some(message);
                    break rev.n;
                }
                // Another node recorded a revision first (the same file, most likely, as
                // nodes started together push it): look again.
                None => latest = store.latest_revision(&env)?,
            }
        };
        let stored = stored_releases(store.as_ref(), &env)?;
        let controller = Controller {
            env,
            config_path,
            fleet,
            store,
            plane,
            notifier,
            state: Mutex::new(State {
                config: Arc::new(config.clone()),
                file_text: file_text.unwrap_or_else(|| yaml.clone()),
                yaml,
                revision,
                releases: BTreeMap::new(),
            }),
            analyses: Mutex::new(BTreeMap::new()),
            events: EventLog::default(),
            series: Mutex::new(Series::default()),
            errors: ThrottledLog::default(),
        };
        {
            let mut state = controller.lock();
            let (releases, started) =
                controller.reconcile(&config, Resume::Stored(stored), "file", true, now_ms)?;
            state.releases = releases;
            controller.plane.apply(config, &routes(&state.releases));
            if let Some(message) = recorded {
                controller.announce_config(revision, "file", message, now_ms);
            }
            controller.announce_starts(&state, &started);
        }
        controller.tick(now_ms);
        Ok(controller)
    }

    pub fn env(&self) -> &str {
        &self.env
    }

    /// The configuration in effect.
    pub fn config(&self) -> Arc<Config> {
        Arc::clone(&self.lock().config)
    }

    /// The current revision's number.
    pub fn current_revision(&self) -> u64 {
        self.lock().revision
    }

    /// The current revision's number and text.
    pub fn current(&self) -> (u64, String) {
        let state = self.lock();
        (state.revision, state.yaml.clone())
    }

    // ----- releases -----

    /// Every release, by service name.
    pub fn releases(&self, now_ms: i64) -> Vec<ReleaseView> {
        let state = self.lock();
        state
            .releases
            .iter()
            .filter_map(|(name, m)| self.view(&state, name, m, now_ms))
            .collect()
    }

    pub fn release(&self, service: &str, now_ms: i64) -> Result<ReleaseView, ControlError> {
        let state = self.lock();
        let m = find(&state, service)?;
        self.view(&state, service, m, now_ms)
            .ok_or_else(|| unknown_service(&state, service))
    }

    /// Applies `action` to `service`'s release. A refused action changes nothing.
    pub fn command(
        &self,
        service: &str,
        action: Action,
        actor: Actor<'_>,
        now_ms: i64,
    ) -> Result<ReleaseView, ControlError> {
        check_reason("reason", actor.reason)?;
        let mut state = self.lock();
        let m = find(&state, service)?;
        let command = match &action {
            Action::Promote => Command::Promote,
            Action::PromoteFull => Command::PromoteFull,
            Action::PromoteVariant(name) => {
                let Kind::Experiment { variants } = &m.plan.kind else {
                    // Let the state machine say that only experiments have variants.
                    return Err(m
                        .rollout
                        .clone()
                        .apply(&m.plan, Command::PromoteVariant(usize::MAX), "", "", now_ms)
                        .err()
                        .map_or_else(|| unknown_service(&state, service), ControlError::Command));
                };
                let version = variants
                    .iter()
                    .find(|(n, _, _)| n == name)
                    .map(|(_, v, _)| *v)
                    .ok_or_else(|| ControlError::UnknownVariant {
                        variant: name.clone(),
                        variants: variants.iter().map(|(n, _, _)| n.clone()).collect(),
                    })?;
                Command::PromoteVariant(version)
            }
            Action::Pause => Command::Pause,
            Action::Resume => Command::Resume,
            Action::Abort => Command::Abort,
            Action::Retry => Command::Retry,
            Action::Rollback => Command::Rollback,
            Action::SetWeight(percent) => Command::SetWeight(
                view::parse_weight(*percent).ok_or(ControlError::BadWeight { given: *percent })?,
            ),
            Action::AnalysisFailed => Command::AnalysisFailed,
        };
        let mut rollout = m.rollout.clone();
        rollout.apply(&m.plan, command, actor.name, actor.reason, now_ms)?;
        match self.commit(&mut state, service, rollout, 1, false) {
            // Another node changed the release after this one last heard of it: decide again
            // on the stored state, which is what the person was looking at anyway.
            Err(ControlError::Store(StoreError::Conflict { .. })) => {
                self.refresh(&mut state, service)?;
                let m = find(&state, service)?;
                let mut rollout = m.rollout.clone();
                rollout.apply(&m.plan, command, actor.name, actor.reason, now_ms)?;
                self.commit(&mut state, service, rollout, 1, false)?;
            }
            other => other?,
        }
        let m = find(&state, service)?;
        self.view(&state, service, m, now_ms)
            .ok_or_else(|| unknown_service(&state, service))
    }

    /// Lets time pass for every release (timed pauses); returns how many moved.
    pub fn tick(&self, now_ms: i64) -> usize {
        let mut state = self.lock();
        let names: Vec<String> = state.releases.keys().cloned().collect();
        let mut moved = 0;
        for name in names {
            let Some(m) = state.releases.get(&name) else {
                continue;
            };
            let mut rollout = m.rollout.clone();
            let before = rollout.history.len();
            if !rollout.tick(&m.plan, now_ms) {
                continue;
            }
            let new = rollout.history.len() - before;
            match self.commit(&mut state, &name, rollout, new, true) {
                Ok(()) => moved += 1,
                Err(e) => {
                    self.errors.log(format_args!(
                        "cannot record the timed step of `{name}`, it will be retried: {e}"
                    ));
                }
            }
        }
        moved
    }

    /// When [`Controller::tick`] next has something to do.
    pub fn next_deadline(&self) -> Option<i64> {
        let state = self.lock();
        state
            .releases
            .values()
            .filter_map(|m| m.rollout.next_deadline(&m.plan))
            .min()
    }

    // ----- analysis -----

    /// Judges every analysed release whose interval is up and applies the decisions: a passed
    /// step may move on, a failed one aborts (or pauses), no data for too long pauses. Returns
    /// how many releases were judged.
    pub fn analyze(&self, now_ms: i64) -> usize {
        struct Work {
            service: String,
            analysis: graylane_config::Analysis,
            step: (usize, i64),
            baseline: String,
            candidate: String,
        }
        let (work, releases): (Vec<Work>, Vec<String>) = {
            let state = self.lock();
            let work = state
                .releases
                .iter()
                .filter(|(_, m)| m.rollout.phase == Phase::Progressing)
                .filter_map(|(name, m)| {
                    let svc = state.config.service(name)?;
                    Some(Work {
                        service: name.clone(),
                        analysis: svc.release.as_ref()?.analysis.clone()?,
                        step: (m.rollout.step, m.rollout.step_started_ms),
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
                    runner.begin_step(w.step, now(), now_ms);
                    continue;
                }
                if !runner.due(now_ms) {
                    continue;
                }
                let subject = Subject {
                    service: &w.service,
                    baseline: &w.baseline,
                    candidate: &w.candidate,
                };
                let (decision, judgement) = runner.judge(&subject, &now(), now_ms);
                verdicts.push((w.service.clone(), w.step, decision, judgement));
            }
        }
        let judged = verdicts.len();
        for (service, step, decision, judgement) in verdicts {
            if let Err(e) = self.apply_verdict(&service, step, &decision, &judgement, now_ms) {
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
        decision: &Decision,
        judgement: &Judgement,
        now_ms: i64,
    ) -> Result<(), ControlError> {
        let mut state = self.lock();
        let summary = summarize(decision, judgement);
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

    // ----- live series -----

    /// Takes the once-a-second point of every release's versions (the dashboard's charts).
    pub fn sample_series(&self, now_ms: i64) {
        if !self
            .series
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .due(now_ms)
        {
            return;
        }
        let versions: Vec<(String, Vec<String>)> = {
            let state = self.lock();
            state
                .releases
                .iter()
                .filter_map(|(name, m)| {
                    let svc = state.config.service(name)?;
                    let mut vs = vec![m.plan.baseline, m.plan.candidate];
                    if let Kind::Experiment { variants } = &m.plan.kind {
                        vs.extend(variants.iter().map(|v| v.1));
                    }
                    vs.sort_unstable();
                    vs.dedup();
                    let names = vs
                        .into_iter()
                        .filter_map(|v| Some(svc.versions.get(v)?.name.clone()))
                        .collect();
                    Some((name.clone(), names))
                })
                .collect()
        };
        let observed = versions
            .into_iter()
            .map(|(service, names)| {
                let by_version = names
                    .into_iter()
                    .map(|v| {
                        let o = self.plane.observe(&service, &v);
                        (v, o)
                    })
                    .collect();
                (service, by_version)
            })
            .collect();
        self.series
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record(now_ms, observed);
    }

    /// `service`'s live series after `since_ms`.
    pub fn series(&self, service: &str, since_ms: i64) -> Result<SeriesView, ControlError> {
        find(&self.lock(), service)?;
        Ok(self
            .series
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .view(service, since_ms))
    }

    // ----- business events -----

    /// `Ok` when `service` has a release (so events can be attributed), else which ones do.
    pub fn check_release(&self, service: &str) -> Result<(), ControlError> {
        find(&self.lock(), service).map(|_| ())
    }

    /// Records a business event for the user whose bucketing key is `key`, attributed to the
    /// version (experiment variant) that user is bucketed into.
    pub fn post_event(
        &self,
        service: &str,
        key: &str,
        event: &str,
        value: Option<f64>,
    ) -> Result<EventAttribution, ControlError> {
        let variant_of = {
            let state = self.lock();
            let m = find(&state, service)?;
            match &m.plan.kind {
                Kind::Experiment { variants } => {
                    let svc = state.config.service(service);
                    variants
                        .iter()
                        .filter_map(|(name, v, _)| {
                            Some((svc?.versions.get(*v)?.name.clone(), name.clone()))
                        })
                        .collect()
                }
                _ => BTreeMap::new(),
            }
        };
        if value.is_some_and(|v| !v.is_finite()) {
            return Err(ControlError::BadEvent(
                "`value` must be a finite number".to_string(),
            ));
        }
        let version = self.plane.assign(service, key).ok_or_else(|| {
            ControlError::BadEvent(format!(
                "service `{service}` has no release to attribute events to"
            ))
        })?;
        self.events
            .record(service, &version, event, value)
            .map_err(|e| ControlError::BadEvent(e.to_string()))?;
        Ok(EventAttribution {
            service: service.to_string(),
            variant: variant_of.get(&version).cloned(),
            version,
        })
    }

    /// An experiment's results since the gateway started: per variant its exposures, error
    /// rate, latency and events, effects against the control with their intervals, and the
    /// sample-ratio-mismatch check.
    pub fn experiment_results(&self, service: &str) -> Result<ExperimentResults, ControlError> {
        let (variants, analysis) = {
            let state = self.lock();
            let m = find(&state, service)?;
            let Kind::Experiment { variants } = &m.plan.kind else {
                return Err(ControlError::NotAnExperiment {
                    service: service.to_string(),
                    strategy: m.plan.kind.as_str(),
                });
            };
            let svc = state
                .config
                .service(service)
                .ok_or_else(|| unknown_service(&state, service))?;
            let variants: Vec<(String, String, f64)> = variants
                .iter()
                .filter_map(|(name, v, w)| {
                    Some((
                        name.clone(),
                        svc.versions.get(*v)?.name.clone(),
                        w.percent(),
                    ))
                })
                .collect();
            (
                variants,
                svc.release.as_ref().and_then(|r| r.analysis.clone()),
            )
        };
        let versions: Vec<&str> = variants.iter().map(|(_, v, _)| v.as_str()).collect();
        let units = self.plane.units(service, &versions);
        Ok(crate::experiment::results(
            service,
            &variants,
            analysis.as_ref(),
            &units,
            |version| {
                let codes = analysis
                    .as_ref()
                    .map_or(&crate::experiment::DEFAULT_ERROR_CODES[..], |a| {
                        &a.error_codes
                    });
                let observed = self.plane.observe(service, version);
                (
                    observed.bucketed,
                    totals(
                        &observed,
                        &self.events_of(service, version, &observed),
                        codes,
                        0,
                    ),
                )
            },
        ))
    }

    // ----- configuration -----

    /// The file changed on disk, or a SIGHUP asked for a reload: validates and applies it as a
    /// revision by `file`. Text equal to the current revision (such as the API's own write)
    /// records nothing, but the segment files it names are read again: members added to or
    /// removed from a `file:` segment take effect without an edit of the configuration. A
    /// segment file that cannot be read rejects the reload, so the old members keep serving.
    ///
    /// The file is read under the same lock the API's writes of it hold: text read before an
    /// API write and applied after it would bring the configuration it replaced back.
    pub fn file_changed(&self, now_ms: i64) -> Result<Reloaded, ControlError> {
        let mut state = self.lock();
        let yaml =
            std::fs::read_to_string(&self.config_path).map_err(|source| ControlError::Read {
                path: self.config_path.display().to_string(),
                source,
            })?;
        // Compared with the file as last read, not with the configuration in effect: on a
        // fleet node that one may be a newer revision from another node, which an unchanged
        // file must not undo.
        if yaml == state.file_text {
            return self.reread_segments(&mut state, now_ms);
        }
        let config = self.load(&yaml)?;
        let n = self.apply_config(
            &mut state,
            config,
            yaml.clone(),
            ("file", "file changed", RevisionSource::File),
            now_ms,
        )?;
        state.file_text = yaml;
        Ok(Reloaded::Revision(n))
    }

    /// The files the `file:` segments of the current configuration are read from: what the
    /// file watcher watches besides the configuration file.
    pub fn segment_files(&self) -> Vec<PathBuf> {
        self.lock()
            .config
            .segments
            .iter()
            .filter_map(|s| match &s.source {
                SegmentSource::File(path) => Some(path.clone()),
                _ => None,
            })
            .collect()
    }

    fn reread_segments(&self, state: &mut State, now_ms: i64) -> Result<Reloaded, ControlError> {
        if !state
            .config
            .segments
            .iter()
            .any(|s| matches!(s.source, SegmentSource::File(_)))
        {
            return Ok(Reloaded::Unchanged);
        }
        let config = self.load(&state.yaml)?;
        let changed: Vec<String> = config
            .segments
            .iter()
            .filter(|new| {
                state
                    .config
                    .segments
                    .iter()
                    .find(|old| old.name == new.name)
                    .is_none_or(|old| old.members != new.members)
            })
            .map(|s| s.name.clone())
            .collect();
        if changed.is_empty() {
            return Ok(Reloaded::Unchanged);
        }
        self.store.append_audit(
            &self.env,
            NewAuditEntry {
                at_ms: now_ms,
                actor: "file".to_string(),
                action: "segments.reloaded".to_string(),
                target: changed.join(","),
                reason: "segment file changed".to_string(),
                detail: serde_json::Value::Null,
            },
        )?;
        self.plane.apply(config.clone(), &routes(&state.releases));
        state.config = Arc::new(config);
        Ok(Reloaded::Segments(changed))
    }

    /// A configuration from the API: validated, written to the file, recorded, applied.
    /// With `dry_run`, only validated and compared.
    pub fn put_config(
        &self,
        yaml: &str,
        author: &str,
        message: &str,
        dry_run: bool,
        now_ms: i64,
    ) -> Result<ApplyOutcome, ControlError> {
        check_reason("message", message)?;
        self.propose(yaml, author, message, RevisionSource::Api, dry_run, now_ms)
    }

    /// Applies revision `n`'s text again, as a new revision.
    pub fn revert(
        &self,
        n: u64,
        author: &str,
        dry_run: bool,
        now_ms: i64,
    ) -> Result<ApplyOutcome, ControlError> {
        let rev = self.revision_text(n)?;
        self.propose(
            &rev,
            author,
            &format!("revert to revision {n}"),
            RevisionSource::Revert { from: n },
            dry_run,
            now_ms,
        )
    }

    pub fn revisions(&self) -> Result<Vec<RevisionView>, ControlError> {
        Ok(self
            .store
            .revisions(&self.env)?
            .iter()
            .map(revision_view)
            .collect())
    }

    pub fn revision(&self, n: u64) -> Result<RevisionView, ControlError> {
        match self.store.revision(&self.env, n)? {
            Some(rev) => Ok(full_revision_view(&rev)),
            None => Err(self.no_such_revision(n)),
        }
    }

    /// Unified diff of revision `from`'s text to revision `to`'s.
    pub fn diff(&self, from: u64, to: u64) -> Result<String, ControlError> {
        let a = self.revision_text(from)?;
        let b = self.revision_text(to)?;
        Ok(unified_diff(
            &a,
            &b,
            &format!("revision {from}"),
            &format!("revision {to}"),
        ))
    }

    /// The newest `limit` audit entries that match `filter`, newest first.
    pub fn audit(
        &self,
        filter: &AuditFilter,
        limit: usize,
    ) -> Result<Vec<AuditView>, ControlError> {
        Ok(self
            .store
            .audit_matching(&self.env, filter, limit)?
            .iter()
            .map(audit_view)
            .collect())
    }

    // ----- fleet -----

    /// This node's report to the fleet: its data plane's figures and the business events
    /// posted to it, in its `incarnation`, at `at_ms`.
    pub fn fleet_report(&self, incarnation: u64, at_ms: i64) -> crate::fleet::NodeReport {
        let mut report = crate::fleet::report(self.plane.as_ref(), incarnation, at_ms);
        for (service, version, events) in self.events.all() {
            match report
                .routes
                .iter_mut()
                .find(|r| r.service == service && r.version == version)
            {
                Some(r) => r.events = events,
                None => report.routes.push(crate::fleet::RouteReport {
                    service,
                    version,
                    events,
                    ..Default::default()
                }),
            }
        }
        report
    }

    /// The business events of `version` of `service`: those posted here and, on a fleet node,
    /// the other nodes' (in `observed`).
    fn events_of(
        &self,
        service: &str,
        version: &str,
        observed: &crate::analysis::Observation,
    ) -> BTreeMap<String, crate::events::EventTotals> {
        let mut events = self.events.totals(service, version);
        crate::events::add_events(&mut events, &observed.events);
        events
    }

    /// Another fleet node saved `service`'s release (the store's watch saw it): takes the saved
    /// state if it is newer than the one here and of the same release, and routes by it. A
    /// state of another release (a changed candidate) waits for the revision that configures it
    /// ([`Controller::revision_changed`]). Returns whether anything changed here.
    pub fn release_changed(
        &self,
        service: &str,
        saved: &[u8],
        version: u64,
    ) -> Result<bool, ControlError> {
        let persisted: Persisted =
            serde_json::from_slice(saved).map_err(|e| ControlError::CorruptState {
                service: service.to_string(),
                detail: e.to_string(),
            })?;
        let mut state = self.lock();
        let config = Arc::clone(&state.config);
        let Some(svc) = config.service(service) else {
            return Ok(false);
        };
        let Some(m) = state.releases.get_mut(service) else {
            return Ok(false);
        };
        if m.identity != persisted.identity || version <= m.version {
            return Ok(false);
        }
        let mut rollout = persisted.rollout;
        rollout.winner = persisted.winner.and_then(|w| svc.version_index(&w));
        follow_new_steps(&mut rollout, &m.plan);
        m.rollout = rollout;
        m.version = version;
        m.pending = false;
        self.plane.set_routing(service, m.rollout.routing(&m.plan));
        Ok(true)
    }

    /// Another fleet node recorded revision `n` (the store's watch saw it): if it is newer than
    /// the one here, reads it, validates it and applies it with the stored releases, as a file
    /// reload does, but writes nothing: the node that recorded it saved what it changed.
    /// Returns whether it was applied. A revision this build cannot validate is refused, and
    /// the current configuration keeps serving.
    pub fn revision_changed(&self, n: u64, now_ms: i64) -> Result<bool, ControlError> {
        let mut state = self.lock();
        if n <= state.revision {
            return Ok(false);
        }
        let Some(rev) = self.store.revision(&self.env, n)? else {
            return Ok(false);
        };
        let config = self.load(&rev.yaml)?;
        let stored = stored_releases(self.store.as_ref(), &self.env)?;
        let (releases, _) =
            self.reconcile(&config, Resume::Stored(stored), &rev.author, false, now_ms)?;
        retain_audit(self.store.as_ref(), &config);
        self.plane.apply(config.clone(), &routes(&releases));
        state.releases = releases;
        state.config = Arc::new(config);
        state.yaml = rev.yaml;
        state.revision = rev.n;
        if let Some(notifier) = &self.notifier {
            notifier.set_targets(webhook_targets(&state.config));
        }
        Ok(true)
    }

    /// Saves (as the leader) the releases this node started in memory while following another
    /// node's revision, which that node did not save (it stopped first, say). Returns how many
    /// were saved; one saved meanwhile by another node is read back instead.
    pub fn save_pending(&self, now_ms: i64) -> usize {
        let mut state = self.lock();
        let pending: Vec<String> = state
            .releases
            .iter()
            .filter(|(_, m)| m.pending)
            .map(|(name, _)| name.clone())
            .collect();
        let config = Arc::clone(&state.config);
        let mut saved = 0;
        for name in pending {
            let (Some(svc), Some(m)) = (config.service(&name), state.releases.get(&name)) else {
                continue;
            };
            let expect = Expect {
                version: m.version,
                leader: true,
            };
            let reason = "started by the revision that configured it";
            match self.persist(svc, m, expect, (("start", "leader", reason), now_ms)) {
                Ok(version) => {
                    if let Some(m) = state.releases.get_mut(&name) {
                        m.version = version;
                        m.pending = false;
                    }
                    saved += 1;
                }
                Err(ControlError::Store(StoreError::Conflict { .. })) => {
                    if let Err(e) = self.refresh(&mut state, &name) {
                        self.errors
                            .log(format_args!("cannot read release `{name}` back: {e}"));
                    }
                }
                Err(e) => {
                    self.errors
                        .log(format_args!("cannot save the start of `{name}`: {e}"));
                }
            }
        }
        saved
    }

    /// Reads `service`'s stored state into the running release (after a conditional write
    /// found it changed elsewhere).
    fn refresh(&self, state: &mut State, service: &str) -> Result<(), ControlError> {
        let stored = stored_releases(self.store.as_ref(), &self.env)?;
        let config = Arc::clone(&state.config);
        let (Some(svc), Some(m)) = (config.service(service), state.releases.get_mut(service))
        else {
            return Err(unknown_service(state, service));
        };
        match stored.get(service) {
            Some((p, version)) if p.identity == m.identity => {
                let mut rollout = p.rollout.clone();
                rollout.winner = p.winner.clone().and_then(|w| svc.version_index(&w));
                follow_new_steps(&mut rollout, &m.plan);
                m.rollout = rollout;
                m.version = *version;
                m.pending = false;
            }
            // Another release's state, or none: the next write replaces exactly that.
            Some((_, version)) => m.version = *version,
            None => m.version = 0,
        }
        self.plane.set_routing(service, m.rollout.routing(&m.plan));
        Ok(())
    }

    // ----- internals -----

    /// Parses and validates a configuration text for this controller. Versions that follow the
    /// service registry need a fleet node (the registry is in etcd): a single node refuses
    /// them here, whatever the text came from, rather than serve them with no endpoints.
    fn load(&self, yaml: &str) -> Result<Config, ControlError> {
        let config = graylane_config::load_text_for(yaml, &self.config_path)
            .map_err(ControlError::Invalid)?;
        if !self.fleet {
            let errors = registry_outside_a_fleet(&config, &self.config_path);
            if !errors.is_empty() {
                return Err(ControlError::Invalid(graylane_config::ConfigErrors {
                    errors,
                }));
            }
        }
        Ok(config)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn view(&self, state: &State, name: &str, m: &Managed, now_ms: i64) -> Option<ReleaseView> {
        let service = state.config.service(name)?;
        Some(release_view(
            &self.env,
            service,
            (&m.plan, &m.rollout),
            now_ms,
            view::Observed {
                exposures: |version: &str| self.plane.observe(name, version).bucketed,
                units: match &m.plan.kind {
                    Kind::Experiment { variants } => {
                        let versions: Vec<&str> = variants
                            .iter()
                            .filter_map(|(_, v, _)| service.versions.get(*v))
                            .map(|v| v.name.as_str())
                            .collect();
                        self.plane.units(name, &versions)
                    }
                    _ => (Vec::new(), 0),
                },
                analysis: self
                    .analyses
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(name)
                    .and_then(|r| r.history.back())
                    .map(view::brief),
                circuits: self.plane.circuit_states(name),
            },
        ))
    }

    fn revision_text(&self, n: u64) -> Result<String, ControlError> {
        match self.store.revision(&self.env, n)? {
            Some(rev) => Ok(rev.yaml),
            None => Err(self.no_such_revision(n)),
        }
    }

    fn no_such_revision(&self, n: u64) -> ControlError {
        ControlError::NoSuchRevision {
            n,
            latest: self.lock().revision,
        }
    }

    fn propose(
        &self,
        yaml: &str,
        author: &str,
        message: &str,
        source: RevisionSource,
        dry_run: bool,
        now_ms: i64,
    ) -> Result<ApplyOutcome, ControlError> {
        // Held across the file write, so the file watcher sees the new text only once it is
        // the current revision, and does not record it a second time.
        let mut state = self.lock();
        let config = self.load(yaml)?;
        let diff = unified_diff(
            &state.yaml,
            yaml,
            &format!("revision {}", state.revision),
            "proposed",
        );
        if dry_run || yaml == state.yaml {
            return Ok(ApplyOutcome {
                applied: false,
                valid: true,
                revision: None,
                diff,
            });
        }
        if !self.fleet {
            write_atomically(&self.config_path, yaml).map_err(|source| ControlError::Write {
                path: self.config_path.display().to_string(),
                source,
            })?;
            state.file_text = yaml.to_string();
        }
        let n = self.apply_config(
            &mut state,
            config,
            yaml.to_string(),
            (author, message, source),
            now_ms,
        )?;
        let revision = self.store.revision(&self.env, n)?.map(|r| {
            let mut v = full_revision_view(&r);
            v.yaml = None;
            v
        });
        Ok(ApplyOutcome {
            applied: true,
            valid: true,
            revision,
            diff,
        })
    }

    /// Records `yaml` as a revision, reconciles the releases with `config` and applies both.
    fn apply_config(
        &self,
        state: &mut State,
        config: Config,
        yaml: String,
        (author, message, source): (&str, &str, RevisionSource),
        now_ms: i64,
    ) -> Result<u64, ControlError> {
        retain_audit(self.store.as_ref(), &config);
        let (releases, started) = self.reconcile(
            &config,
            Resume::Running(&state.releases, &state.config),
            author,
            true,
            now_ms,
        )?;
        let rev = self.store.add_revision(
            &self.env,
            NewRevision {
                at_ms: now_ms,
                author: author.to_string(),
                message: message.to_string(),
                source,
                yaml: yaml.clone(),
            },
        )?;
        self.store
            .append_audit(&self.env, config_audit(&rev.n, author, message, now_ms))?;
        self.plane.apply(config.clone(), &routes(&releases));
        state.releases = releases;
        state.config = Arc::new(config);
        state.yaml = yaml;
        state.revision = rev.n;
        if let Some(n) = &self.notifier {
            // Before announcing: a webhook added by this revision hears about it.
            n.set_targets(webhook_targets(&state.config));
        }
        self.announce_config(rev.n, author, message, now_ms);
        self.announce_starts(state, &started);
        Ok(rev.n)
    }

    fn announce_config(&self, revision: u64, author: &str, message: &str, now_ms: i64) {
        if let Some(n) = &self.notifier {
            n.notify(serde_json::json!({
                "event": "config.applied",
                "env": self.env,
                "revision": revision,
                "author": author,
                "message": message,
                "at": view::rfc3339(now_ms),
            }));
        }
    }

    /// Announces the `start` transition of each release in `started`.
    fn announce_starts(&self, state: &State, started: &[String]) {
        let Some(n) = &self.notifier else { return };
        for name in started {
            let (Some(m), Some(svc)) = (state.releases.get(name), state.config.service(name))
            else {
                continue;
            };
            if let Some(t) = m.rollout.history.last() {
                n.notify(self.transition_event(name, t, m, svc));
            }
        }
    }

    /// Matches every release of `config` with what runs (or was stored): the same release
    /// (same strategy and versions) goes on where it was; a new or changed one starts at step
    /// 0; one no longer configured is forgotten. With `write`, new and dropped releases are
    /// persisted; without (a fleet node following a revision another node wrote, which writes
    /// them), a new one starts in memory only, [`Managed::pending`] until the leader saves it.
    /// Returns the releases and the names of those that started here.
    fn reconcile<'a>(
        &self,
        config: &Config,
        resume: Resume<'a>,
        actor: &str,
        write: bool,
        now_ms: i64,
    ) -> Result<(BTreeMap<String, Managed>, Vec<String>), ControlError> {
        let mut out = BTreeMap::new();
        let mut started = Vec::new();
        let mut previous: BTreeMap<String, Previous> = match &resume {
            Resume::Stored(stored) => stored
                .iter()
                .map(|(k, (p, version))| {
                    (
                        k.clone(),
                        Previous {
                            identity: p.identity.clone(),
                            rollout: p.rollout.clone(),
                            winner: p.winner.clone(),
                            version: *version,
                            pending: false,
                        },
                    )
                })
                .collect(),
            Resume::Running(running, old) => running
                .iter()
                .map(|(k, m)| {
                    let winner = m.rollout.winner.and_then(|w| {
                        old.service(k)
                            .and_then(|s| s.versions.get(w))
                            .map(|v| v.name.clone())
                    });
                    (
                        k.clone(),
                        Previous {
                            identity: m.identity.clone(),
                            rollout: m.rollout.clone(),
                            winner,
                            version: m.version,
                            pending: m.pending,
                        },
                    )
                })
                .collect(),
        };
        for service in &config.services {
            let Some(release) = &service.release else {
                continue;
            };
            let plan = Plan::from_release(release);
            let identity = identity(service);
            let prev = previous.remove(&service.name);
            match prev {
                Some(Previous {
                    identity: id,
                    mut rollout,
                    winner,
                    version,
                    pending,
                }) if id == identity => {
                    rollout.winner = winner.and_then(|w| service.version_index(&w));
                    follow_new_steps(&mut rollout, &plan);
                    out.insert(
                        service.name.clone(),
                        Managed {
                            identity,
                            plan,
                            rollout,
                            version,
                            pending,
                        },
                    );
                }
                prev => {
                    let mut rollout = Rollout::start(&plan, now_ms);
                    let reason = format!(
                        "{} release of {}: {} → {}",
                        plan.kind.as_str(),
                        service.name,
                        service.versions[plan.baseline].name,
                        service.versions[plan.candidate].name
                    );
                    rollout.history.push(Transition {
                        at_ms: now_ms,
                        actor: actor.to_string(),
                        what: "start".to_string(),
                        reason: reason.clone(),
                        from: Phase::Progressing,
                        to: Phase::Progressing,
                        step: 0,
                        weight: rollout.weight,
                    });
                    // The state this one replaces, if any: what a conditional write expects.
                    let replaced = prev.map_or(0, |p| p.version);
                    let mut managed = Managed {
                        identity,
                        plan,
                        rollout,
                        version: replaced,
                        pending: !write,
                    };
                    if write {
                        let expect = Expect {
                            version: replaced,
                            leader: false,
                        };
                        let saved = self.persist(
                            service,
                            &managed,
                            expect,
                            (("start", actor, &reason), now_ms),
                        );
                        match saved {
                            Ok(version) => {
                                managed.version = version;
                                started.push(service.name.clone());
                            }
                            // Another node started the same release at the same moment (two
                            // nodes pushing one file): go on with the one it saved.
                            Err(ControlError::Store(StoreError::Conflict { .. })) => {
                                let stored = stored_releases(self.store.as_ref(), &self.env)?;
                                match stored.get(&service.name) {
                                    Some((p, version)) if p.identity == managed.identity => {
                                        managed.rollout = p.rollout.clone();
                                        managed.rollout.winner = p
                                            .winner
                                            .clone()
                                            .and_then(|w| service.version_index(&w));
                                        follow_new_steps(&mut managed.rollout, &managed.plan);
                                        managed.version = *version;
                                    }
                                    _ => {
                                        return Err(ControlError::Store(StoreError::Conflict {
                                            service: service.name.clone(),
                                        }));
                                    }
                                }
                            }
                            Err(e) => return Err(e),
                        }
                    }
                    out.insert(service.name.clone(), managed);
                }
            }
        }
        if !write {
            return Ok((out, started));
        }
        for (gone, prev) in &previous {
            let expect = Expect {
                version: prev.version,
                leader: false,
            };
            self.store.delete_release_if(
                &self.env,
                gone,
                expect,
                NewAuditEntry {
                    at_ms: now_ms,
                    actor: actor.to_string(),
                    action: "release.removed".to_string(),
                    target: gone.clone(),
                    reason: "no longer in the configuration".to_string(),
                    detail: serde_json::Value::Null,
                },
            )?;
        }
        Ok((out, started))
    }

    /// Persists `rollout` as `service`'s new state (only if the stored state is still the one
    /// it was computed from, and, for the leader's own changes, only while this node leads),
    /// applies its routing and announces its `new` latest transitions.
    fn commit(
        &self,
        state: &mut State,
        service: &str,
        rollout: Rollout,
        new: usize,
        by_leader: bool,
    ) -> Result<(), ControlError> {
        let config = Arc::clone(&state.config);
        let svc = config
            .service(service)
            .ok_or_else(|| unknown_service(state, service))?;
        let Some(m) = state.releases.get_mut(service) else {
            return Err(unknown_service(state, service));
        };
        let mut candidate = Managed {
            identity: m.identity.clone(),
            plan: m.plan.clone(),
            rollout,
            version: m.version,
            pending: false,
        };
        let expect = Expect {
            version: m.version,
            leader: by_leader,
        };
        let transitions = &candidate.rollout.history[candidate.rollout.history.len() - new..];
        for (i, t) in transitions.iter().enumerate() {
            // Each transition is one audit entry; the state is written with the last one.
            if i + 1 < transitions.len() {
                self.store
                    .append_audit(&self.env, transition_audit(service, t, &candidate, svc))?;
            }
        }
        if let Some(last) = transitions.last() {
            candidate.version = self.persist(
                svc,
                &candidate,
                expect,
                ((&last.what, &last.actor, &last.reason), last.at_ms),
            )?;
        }
        self.plane
            .set_routing(service, candidate.rollout.routing(&candidate.plan));
        if let Some(n) = &self.notifier {
            for t in transitions {
                n.notify(self.transition_event(service, t, &candidate, svc));
            }
        }
        *m = candidate;
        Ok(())
    }

    /// Saves `m` as `service`'s state if `expect` holds, with an audit entry of
    /// `(action, actor, reason)`; returns the new version.
    fn persist(
        &self,
        service: &Service,
        m: &Managed,
        expect: Expect,
        ((action, actor, reason), now_ms): ((&str, &str, &str), i64),
    ) -> Result<u64, ControlError> {
        let winner = m
            .rollout
            .winner
            .and_then(|w| service.versions.get(w))
            .map(|v| v.name.clone());
        let bytes = serde_json::to_vec(&Persisted {
            identity: m.identity.clone(),
            rollout: m.rollout.clone(),
            winner,
        })
        .unwrap_or_default();
        let mut audit = NewAuditEntry {
            at_ms: now_ms,
            actor: actor.to_string(),
            action: action.to_string(),
            target: service.name.clone(),
            reason: reason.to_string(),
            detail: serde_json::Value::Null,
        };
        if let Some(t) = m.rollout.history.last() {
            audit.detail = transition_audit(&service.name, t, m, service).detail;
        }
        let recorded =
            self.store
                .record_release_if(&self.env, &service.name, &bytes, expect, audit)?;
        Ok(recorded.version)
    }

    fn transition_event(
        &self,
        service: &str,
        t: &Transition,
        m: &Managed,
        svc: &Service,
    ) -> serde_json::Value {
        serde_json::json!({
            "event": "release.transition",
            "env": self.env,
            "service": service,
            "action": t.what,
            "actor": t.actor,
            "reason": t.reason,
            "from": t.from.as_str(),
            "to": t.to.as_str(),
            "step": t.step,
            "weights": view::weights_json(&weights(&m.rollout.routing(&m.plan), svc)),
            "at": view::rfc3339(t.at_ms),
        })
    }
}

/// The longest `reason` of a command (and `message` of a configuration change) accepted, in
/// bytes: enough for a paragraph and a link, while the audit log, which keeps every reason,
/// stays bounded.
pub const MAX_REASON_BYTES: usize = 1024;

/// Refuses a reason longer than [`MAX_REASON_BYTES`] rather than cutting it: a cut reason
/// could lose exactly the part that explains the change.
fn check_reason(field: &'static str, text: &str) -> Result<(), ControlError> {
    if text.len() > MAX_REASON_BYTES {
        return Err(ControlError::TooLong {
            field,
            len: text.len(),
            max: MAX_REASON_BYTES,
        });
    }
    Ok(())
}

/// Hands `config`'s audit retention to the store.
fn retain_audit(store: &dyn Store, config: &Config) {
    let max_age_ms = config
        .audit
        .max_age
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    store.set_audit_retention(config.audit.max_entries, max_age_ms);
}

/// The receivers of `config.webhooks`, as the notifier takes them.
pub fn webhook_targets(config: &Config) -> Vec<WebhookTarget> {
    config
        .webhooks
        .iter()
        .map(|w| WebhookTarget {
            url: w.url.clone(),
            timeout: w.timeout,
            retries: w.retries,
            backoff: WebhookTarget::DEFAULT_BACKOFF,
        })
        .collect()
}

/// What a reconcile starts from.
enum Resume<'a> {
    /// Releases read from the store, with their versions.
    Stored(BTreeMap<String, (Persisted, u64)>),
    /// The running releases and the configuration they were built for.
    Running(&'a BTreeMap<String, Managed>, &'a Config),
}

/// An error for each version of `config` that follows the service registry, for a node
/// without one.
pub fn registry_outside_a_fleet(config: &Config, path: &Path) -> Vec<graylane_config::ConfigError> {
    let mut errors = Vec::new();
    for (i, service) in config.services.iter().enumerate() {
        for version in &service.versions {
            if let Some(selector) = &version.registry {
                errors.push(graylane_config::ConfigError {
                    file: path.display().to_string(),
                    line: None,
                    column: None,
                    key: format!("services[{i}].versions.{}.endpoints.registry", version.name),
                    message: format!(
                        "`{}` is looked up in the service registry, which needs fleet mode: run `graylane serve --etcd URL`",
                        selector.service
                    ),
                });
            }
        }
    }
    errors
}

/// A release as a reconcile found it.
struct Previous {
    identity: String,
    rollout: Rollout,
    winner: Option<String>,
    version: u64,
    pending: bool,
}

/// Every stored release of `env`, decoded, with its version.
fn stored_releases(
    store: &dyn Store,
    env: &str,
) -> Result<BTreeMap<String, (Persisted, u64)>, ControlError> {
    store
        .release_versions(env)?
        .into_iter()
        .map(|r| {
            let persisted: Persisted =
                serde_json::from_slice(&r.state).map_err(|e| ControlError::CorruptState {
                    service: r.service.clone(),
                    detail: e.to_string(),
                })?;
            Ok((r.service, (persisted, r.version)))
        })
        .collect()
}

/// A release is "the same" while its strategy and versions are: a changed candidate is a new
/// release, changed steps or rules are not.
fn identity(service: &Service) -> String {
    let Some(r) = &service.release else {
        return String::new();
    };
    let name = |v: usize| service.versions.get(v).map_or("?", |v| v.name.as_str());
    let mut id = format!(
        "{}:{}->{}",
        r.strategy.as_str(),
        name(r.baseline),
        name(r.candidate)
    );
    if let graylane_config::Strategy::Experiment { variants } = &r.strategy {
        for v in variants {
            id.push_str(&format!(":{}={}", v.name, name(v.version)));
        }
    }
    id
}

/// Keeps a running release valid when its steps were edited: its step index stays in range
/// and, unless overridden, its weight is the (new) step's.
fn follow_new_steps(rollout: &mut Rollout, plan: &Plan) {
    let last = plan.steps.len().saturating_sub(1);
    rollout.step = rollout.step.min(last);
    if matches!(rollout.phase, Phase::Progressing | Phase::Paused)
        && !rollout.weight_overridden
        && let Some(step) = plan.steps.get(rollout.step)
    {
        rollout.weight = step.weight;
    }
}

fn routes(releases: &BTreeMap<String, Managed>) -> BTreeMap<String, Routing> {
    releases
        .iter()
        .map(|(name, m)| (name.clone(), m.rollout.routing(&m.plan)))
        .collect()
}

fn weights(routing: &Routing, service: &Service) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for s in &routing.shares {
        if let Some(v) = service.versions.get(s.version) {
            *out.entry(v.name.clone()).or_insert(0.0) += s.weight.percent();
        }
    }
    out
}

fn find<'s>(state: &'s State, service: &str) -> Result<&'s Managed, ControlError> {
    state
        .releases
        .get(service)
        .ok_or_else(|| unknown_service(state, service))
}

fn unknown_service(state: &State, service: &str) -> ControlError {
    ControlError::UnknownService {
        service: service.to_string(),
        services: state.releases.keys().cloned().collect(),
    }
}

fn transition_audit(service: &str, t: &Transition, m: &Managed, svc: &Service) -> NewAuditEntry {
    NewAuditEntry {
        at_ms: t.at_ms,
        actor: t.actor.clone(),
        action: t.what.clone(),
        target: service.to_string(),
        reason: t.reason.clone(),
        detail: serde_json::json!({
            "from": t.from.as_str(),
            "to": t.to.as_str(),
            "step": t.step,
            "weights": view::weights_json(&weights(&m.rollout.routing(&m.plan), svc)),
        }),
    }
}

fn config_audit(revision: &u64, author: &str, message: &str, now_ms: i64) -> NewAuditEntry {
    NewAuditEntry {
        at_ms: now_ms,
        actor: author.to_string(),
        action: "config.apply".to_string(),
        target: "config".to_string(),
        reason: message.to_string(),
        detail: serde_json::json!({ "revision": revision }),
    }
}

/// Unified diff with three lines of context, headed `--- from` / `+++ to`.
pub fn unified_diff(a: &str, b: &str, from: &str, to: &str) -> String {
    similar::TextDiff::from_lines(a, b)
        .unified_diff()
        .context_radius(3)
        .header(from, to)
        .to_string()
}

/// Writes `text` to `path` so that a reader (or a crash) sees the old file or the new one,
/// never half of one: a temporary file in the same folder, flushed, then renamed over.
fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map_or_else(|| "config".into(), |n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(".{name}.graylane-tmp"));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // The rename itself is durable only once the folder is synced.
        std::fs::File::open(&dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_repeated_every_tick_is_logged_once_per_window() {
        let log = ThrottledLog::default();
        let logged = (0..1_000)
            .filter(|i| log.log(format_args!("disk full {i}")))
            .count();
        assert_eq!(logged, 1);
        // Once the window has passed, the next one is logged again.
        if let Some((last, _)) = log.state.lock().unwrap().as_mut() {
            *last = last.checked_sub(ThrottledLog::WINDOW).unwrap();
        }
        assert!(log.log(format_args!("disk full again")));
        assert!(!log.log(format_args!("disk full again")));
    }
}
