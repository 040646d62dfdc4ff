//! A fleet node following the others: the releases and revisions another node stored, the leader
//! saving what followers started, and this node's report of its figures.

use std::sync::Arc;

use graylane_store::{Expect, StoreError};

use crate::controller::{Controller, Persisted, State, unknown_service};
use crate::error::ControlError;
use crate::releases::{Resume, follow_new_steps, routes, stored_releases};
use crate::revisions::{retain_audit, webhook_targets};

impl Controller {
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
    pub(crate) fn refresh(&self, state: &mut State, service: &str) -> Result<(), ControlError> {
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
}
