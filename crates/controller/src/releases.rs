//! The releases of an environment: their commands and timed steps, and how a configuration
//! (re)builds them — resumed, followed to new steps or restarted — then is persisted, routed and
//! announced.

use std::collections::BTreeMap;
use std::sync::Arc;

use graylane_config::{Config, Service};
use graylane_rollout::{AdaptiveState, Command, Kind, Phase, Plan, Rollout, Transition};
use graylane_rules::Routing;
use graylane_store::{Expect, NewAuditEntry, Store, StoreError};

use crate::controller::{
    Action, Actor, Controller, Managed, Persisted, State, find, unknown_service,
};
use crate::error::ControlError;
use crate::revisions::check_reason;
use crate::view;
use graylane_api::ReleaseView;

impl Controller {
    /// Every release, by service name.
    pub fn releases(&self, now_ms: i64) -> Vec<ReleaseView> {
        let state = self.lock();
        state
            .releases
            .iter()
            .filter_map(|(name, m)| self.view(&state, name, m, now_ms))
            .collect()
    }

    /// `service`'s release as of `now_ms` (ms since the Unix epoch, for the pause timers).
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

    /// Announces the `start` transition of each release in `started`.
    pub(crate) fn announce_starts(&self, state: &State, started: &[String]) {
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
    pub(crate) fn reconcile<'a>(
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
    pub(crate) fn commit(
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
    pub(crate) fn persist(
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

/// What a reconcile starts from.
pub(crate) enum Resume<'a> {
    /// Releases read from the store, with their versions.
    Stored(BTreeMap<String, (Persisted, u64)>),
    /// The running releases and the configuration they were built for.
    Running(&'a BTreeMap<String, Managed>, &'a Config),
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
pub(crate) fn stored_releases(
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
pub(crate) fn follow_new_steps(rollout: &mut Rollout, plan: &Plan) {
    let last = plan.steps.len().saturating_sub(1);
    rollout.step = rollout.step.min(last);
    // An adaptive release's weight is its own state: only a new plan's bounds limit it.
    if let Some(bounds) = plan.adaptive {
        if matches!(rollout.phase, Phase::Progressing | Phase::Paused) {
            if !rollout.weight_overridden {
                rollout.weight = rollout.weight.clamp(bounds.start, bounds.max);
            }
            rollout
                .adaptive
                .get_or_insert(AdaptiveState::new(rollout.step_started_ms));
        }
        return;
    }
    if matches!(rollout.phase, Phase::Progressing | Phase::Paused)
        && !rollout.weight_overridden
        && let Some(step) = plan.steps.get(rollout.step)
    {
        rollout.weight = step.weight;
    }
}

pub(crate) fn routes(releases: &BTreeMap<String, Managed>) -> BTreeMap<String, Routing> {
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use graylane_config::{Adaptive, Pause, Step, Weight};
    use graylane_rollout::{Plan, Rollout};

    use super::follow_new_steps;

    fn pct(p: f64) -> Weight {
        Weight::from_percent(p).unwrap()
    }

    fn adaptive(max: f64) -> Plan {
        Plan {
            adaptive: Some(Adaptive {
                start: pct(1.0),
                max: pct(max),
                grow: 2.0,
                shrink: 0.5,
                min_pause: Duration::from_secs(30),
                max_pause: Duration::from_secs(600),
                max_bad_requests: None,
            }),
            ..Plan::canary(vec![Step {
                weight: pct(1.0),
                mirror: None,
                pause: Pause::Manual,
            }])
        }
    }

    #[test]
    fn a_reload_keeps_an_adaptive_release_s_weight_within_its_new_bounds() {
        let plan = adaptive(100.0);
        let mut r = Rollout::start(&plan, 0);
        r.weight = pct(16.0);
        follow_new_steps(&mut r, &plan);
        assert_eq!(r.weight, pct(16.0), "not reset to the start step's weight");
        follow_new_steps(&mut r, &adaptive(10.0));
        assert_eq!(r.weight, pct(10.0), "a lowered max caps it");
    }
}
