//! The controller of one environment: its configuration (with revisions) and every release in
//! it. All changes go through one lock, in this order: check, persist, tell the data plane,
//! announce. A change the store refuses is not made at all.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use graylane_api::ReleaseView;
use graylane_config::Config;
use graylane_notify::Notifier;
use graylane_rollout::{Kind, Plan, Rollout};
use graylane_rules::Routing;
use graylane_store::{NewRevision, RevisionSource, Store};
use serde::{Deserialize, Serialize};

use crate::analysis::{Observation, Runner};
use crate::error::ControlError;
use crate::events::EventLog;
use crate::fleet::{RouteFigures, UnitHashes};
use crate::releases::{Resume, routes, stored_releases};
use crate::revisions::{config_audit, retain_audit};
use crate::series::Series;
use crate::view::{self, release_view};

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
    /// Neither the file nor a segment file or GeoIP database it names changed.
    Unchanged,
    /// The file changed: the revision it was recorded as.
    Revision(u64),
    /// Only files the configuration names changed (no new revision: the text is the same):
    /// the members of these `file:` segments, and the `geoip:` database when `geoip`.
    Files {
        /// The `file:` segments whose members changed.
        segments: Vec<String>,
        /// The `geoip:` database file holds another database.
        geoip: bool,
    },
}

/// What a person (or the analysis) asks of a release, as the API says it.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// On to the next step (completing after the last); a blue-green release's switch.
    Promote,
    /// Straight to 100%: complete the release now.
    PromoteFull,
    /// An experiment's winner, by variant name.
    PromoteVariant(String),
    /// Hold at the current step; a timed pause keeps what was left of it.
    Pause,
    /// Go on from where the release was paused.
    Resume,
    /// All traffic to the stable version at once, force rules off.
    Abort,
    /// Start an aborted or rolled-back release again from its first step.
    Retry,
    /// Send a completed release back to the previous stable version.
    Rollback,
    /// A weight in percent, checked here.
    SetWeight(f64),
    /// The analysis failed the candidate: abort, or pause with `skip_rollback`.
    AnalysisFailed,
}

/// Who asks, and why.
#[derive(Debug, Clone)]
pub struct Actor<'a> {
    /// Who: the caller's name (the admin API token's); recorded in the audit log and sent on
    /// webhooks.
    pub name: &'a str,
    /// Why, in their words (may be empty); at most [`crate::MAX_REASON_BYTES`] bytes.
    pub reason: &'a str,
}

/// How the controller starts.
pub struct Setup {
    /// The environment (e.g. `prod`, `staging`): the store keeps its revisions and releases
    /// apart from other environments'.
    pub env: String,
    /// The file the configuration lives in; changes made through the API are written there
    /// (unless `fleet`). Relative segment file paths are resolved from its folder.
    pub config_path: PathBuf,
    /// A fleet node: the store is shared with other nodes, which change releases and the
    /// configuration too ([`Controller::revision_changed`], [`Controller::release_changed`]).
    /// The store, not the file, is the configuration's home, so API changes are not written to
    /// the file.
    pub fleet: bool,
    /// Where revisions, release states and the audit log are persisted.
    pub store: Arc<dyn Store>,
    /// Where routing decisions take effect and observations come from.
    pub plane: Arc<dyn DataPlane>,
    /// Delivers transitions and configuration changes to the configured webhooks; `None`
    /// sends nothing.
    pub notifier: Option<Notifier>,
    /// The configuration's text, already validated as `config`.
    pub yaml: String,
    /// The configuration file's text as read at start, when it is not `yaml`: a fleet node
    /// whose file is older than the newest revision in the store serves that revision, and
    /// pushes the file only once it changes.
    pub file_text: Option<String>,
    /// The configuration to start with, validated from `yaml`.
    pub config: Config,
    /// The time of opening, in milliseconds since the Unix epoch: what a revision or release
    /// started now is dated with, and where resumed releases' pause clocks go on from.
    pub now_ms: i64,
}

/// The controller of one environment: the configuration and its revisions, every release's
/// rollout, the analysis and the business events. Shared behind an `Arc` by the admin API, the
/// file watcher and the background ticks; every change goes through one lock.
pub struct Controller {
    pub(crate) env: String,
    pub(crate) config_path: PathBuf,
    pub(crate) fleet: bool,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) plane: Arc<dyn DataPlane>,
    pub(crate) notifier: Option<Notifier>,
    pub(crate) state: Mutex<State>,
    /// Each analysed release's analysis, by service. Locked apart from `state` (and never while
    /// holding it) because judging may wait on Prometheus.
    pub(crate) analyses: Mutex<BTreeMap<String, Runner>>,
    pub(crate) events: EventLog,
    pub(crate) series: Mutex<Series>,
    /// The background work's errors (timed steps, verdicts), logged at a bounded rate: a full
    /// disk fails every tick.
    pub(crate) errors: ThrottledLog,
    /// Gate calls in flight and their last answers.
    pub(crate) gate_calls: crate::gates::GateCalls,
}

/// Logs an error at most once per [`ThrottledLog::WINDOW`], with a count of those held back.
#[derive(Default)]
pub(crate) struct ThrottledLog {
    /// When the last line was logged, and how many errors were held back since.
    state: Mutex<Option<(std::time::Instant, u64)>>,
}

impl ThrottledLog {
    const WINDOW: std::time::Duration = std::time::Duration::from_secs(10);

    /// Logs `error` unless a line was logged within the window; `true` if it was logged.
    pub(crate) fn log(&self, error: std::fmt::Arguments<'_>) -> bool {
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

pub(crate) struct State {
    pub(crate) config: Arc<Config>,
    pub(crate) yaml: String,
    /// The configuration file's text as last read or written: what a reload compares with.
    pub(crate) file_text: String,
    pub(crate) revision: u64,
    pub(crate) releases: BTreeMap<String, Managed>,
}

pub(crate) struct Managed {
    pub(crate) identity: String,
    pub(crate) plan: Plan,
    pub(crate) rollout: Rollout,
    /// The store's version of this state (0: not stored yet, or a single-writer store): a
    /// change is saved only if it is still the stored one.
    pub(crate) version: u64,
    /// Started in memory by a fleet node following another's revision, and not saved yet:
    /// the leader saves it ([`Controller::save_pending`]).
    pub(crate) pending: bool,
}

/// A release as stored: versions by name, so a reordered configuration still resumes it.
#[derive(Serialize, Deserialize)]
pub(crate) struct Persisted {
    pub(crate) identity: String,
    pub(crate) rollout: Rollout,
    pub(crate) winner: Option<String>,
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
            gate_calls: crate::gates::GateCalls::default(),
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

    /// The environment this controller manages ([`Setup::env`]).
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

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn view(
        &self,
        state: &State,
        name: &str,
        m: &Managed,
        now_ms: i64,
    ) -> Option<ReleaseView> {
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
                gate: self.gate_view(state, name, m),
            },
        ))
    }
}

pub(crate) fn find<'s>(state: &'s State, service: &str) -> Result<&'s Managed, ControlError> {
    state
        .releases
        .get(service)
        .ok_or_else(|| unknown_service(state, service))
}

pub(crate) fn unknown_service(state: &State, service: &str) -> ControlError {
    ControlError::UnknownService {
        service: service.to_string(),
        services: state.releases.keys().cloned().collect(),
    }
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
