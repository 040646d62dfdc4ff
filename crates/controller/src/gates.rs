//! Release gates (`gates:`): the webhooks a release waits on, asked by the controller off the
//! request path and off its lock.
//!
//! The state machine says which gate a release waits on ([`Rollout::gate`]); each
//! [`Controller::gates`] pass (the background tick, on the leader of a fleet) first applies the
//! answers that came back — a pass moves the release, a failing `pre_rollout` or `pre_step` gate
//! fails it, a failing `confirm_promotion` gate holds it to be asked again an analysis interval
//! later, a `post_rollback` answer is recorded — then starts a call, on a thread of its own, for
//! each release waiting on a gate that is not being asked already. Every answer goes into the
//! audit log with its status and the start of its body.
//!
//! A call is made at least once: its answer is applied only if the release is still where it
//! was when it was asked (same transition count), through the same fenced write as any other
//! change. A leader deposed between asking and recording leaves the gate waiting in the store,
//! and the next leader asks again — gates must tolerate a repeated call, as Flagger's do.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::sync::Mutex;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::Duration;

use graylane_api::GateView;
use graylane_config::{Gate, GateKind, redact_url};
use graylane_rollout::{Command, Phase, Rollout};
use graylane_store::NewAuditEntry;

use crate::controller::{Controller, Managed, State};
use crate::error::ControlError;
use crate::view::rfc3339;

/// The most of an answer's body kept in the audit log and shown.
pub(crate) const EXCERPT_BYTES: usize = 512;

/// How often a failing `confirm_promotion` gate is asked again when the release has no
/// analysis (with one, every `analysis.interval`).
pub(crate) const REASK_WITHOUT_ANALYSIS: Duration = Duration::from_secs(10);

/// The wait before a retry of a gate that did not answer 2xx.
const RETRY_BACKOFF: Duration = Duration::from_millis(200);

/// The gates' calls in flight and their last answers, by service.
pub(crate) struct GateCalls {
    sender: Mutex<Sender<Answered>>,
    receiver: Mutex<Receiver<Answered>>,
    /// Services with a call in flight.
    asking: Mutex<BTreeSet<String>>,
    /// The last answer per service, and when a failing confirm gate is asked again.
    last: Mutex<BTreeMap<String, Last>>,
}

impl Default for GateCalls {
    fn default() -> Self {
        let (sender, receiver) = channel();
        GateCalls {
            sender: Mutex::new(sender),
            receiver: Mutex::new(receiver),
            asking: Mutex::new(BTreeSet::new()),
            last: Mutex::new(BTreeMap::new()),
        }
    }
}

#[derive(Clone)]
struct Last {
    kind: GateKind,
    /// The release's transition count the answer was for.
    token: usize,
    url: String,
    answer: String,
    at_ms: i64,
    next_ask_ms: i64,
}

/// One gate's answer.
#[derive(Debug, Clone)]
struct Answer {
    url: String,
    /// The HTTP status, if it answered at all.
    status: Option<u16>,
    /// Why there was no answer (timeout, refused, ...).
    error: Option<String>,
    excerpt: String,
    attempts: u32,
}

impl Answer {
    fn passed(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }

    /// `503`, or `unreachable: connection refused`.
    fn word(&self) -> String {
        match (self.status, &self.error) {
            (Some(s), _) => s.to_string(),
            (None, Some(e)) => format!("unreachable: {e}"),
            (None, None) => "no answer".to_string(),
        }
    }
}

/// The answers of one call: every gate of one kind, asked in order until one fails.
struct Answered {
    service: String,
    kind: GateKind,
    token: usize,
    answers: Vec<Answer>,
}

impl Answered {
    fn passed(&self) -> bool {
        self.answers.iter().all(Answer::passed)
    }
}

/// Asks one gate: `POST`s `body`, retrying any answer but a 2xx up to `gate.retries` times.
fn ask(gate: &Gate, body: &[u8]) -> Answer {
    let url = gate.url.to_string();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(gate.timeout))
        .http_status_as_error(false)
        .user_agent(concat!("graylane/", env!("CARGO_PKG_VERSION")))
        .build()
        .into();
    let mut answer = Answer {
        url: redact_url(&url),
        status: None,
        error: None,
        excerpt: String::new(),
        attempts: 0,
    };
    for attempt in 0..=gate.retries {
        if attempt > 0 {
            std::thread::sleep(RETRY_BACKOFF * attempt);
        }
        answer.attempts = attempt + 1;
        match agent
            .post(&url)
            .header("content-type", "application/json")
            .send(body)
        {
            Ok(response) => {
                answer.status = Some(response.status().as_u16());
                answer.error = None;
                let mut bytes = Vec::new();
                let read = response
                    .into_body()
                    .into_reader()
                    .take(EXCERPT_BYTES as u64)
                    .read_to_end(&mut bytes);
                if let Err(e) = read {
                    answer.error = Some(e.to_string());
                }
                answer.excerpt = String::from_utf8_lossy(&bytes).into_owned();
            }
            Err(e) => {
                answer.status = None;
                answer.error = Some(redact_url(&e.to_string()));
                answer.excerpt.clear();
            }
        }
        if answer.passed() {
            break;
        }
    }
    answer
}

impl Controller {
    /// Applies the gates' answers that came back and asks the gates releases wait on (see the
    /// module's documentation). Call it from the background tick, on a fleet's leader only;
    /// it never waits on a gate. Returns how many answers it applied.
    pub fn gates(&self, now_ms: i64) -> usize {
        let answered: Vec<Answered> = self
            .gate_calls
            .receiver
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .try_iter()
            .collect();
        let applied = answered.len();
        for a in answered {
            self.gate_calls
                .asking
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&a.service);
            if let Err(e) = self.apply_gate_answer(&a, now_ms) {
                self.errors.log(format_args!(
                    "cannot record the answer of `{}`'s {} gate, it will be asked again: {e}",
                    a.service,
                    a.kind.as_str()
                ));
            }
        }
        self.ask_gates(now_ms);
        applied
    }

    /// Starts a call for every release waiting on a gate that is due and not being asked.
    fn ask_gates(&self, now_ms: i64) {
        let mut state = self.lock();
        let waiting: Vec<(String, GateKind)> = state
            .releases
            .iter()
            .filter_map(|(name, m)| Some((name.clone(), m.rollout.gate?)))
            .collect();
        for (service, kind) in waiting {
            let Some(m) = state.releases.get(&service) else {
                continue;
            };
            let asks = match kind {
                GateKind::PostRollback => {
                    matches!(m.rollout.phase, Phase::Aborted | Phase::RolledBack)
                }
                _ => m.rollout.phase == Phase::Progressing,
            };
            let token = m.rollout.history.len();
            let last = self.last_answer(&service);
            let due = last
                .as_ref()
                .is_none_or(|l| l.kind != kind || l.token != token || now_ms >= l.next_ask_ms);
            let asking = self
                .gate_calls
                .asking
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&service);
            if !asks || !due || asking {
                continue;
            }
            let gates: Vec<Gate> = state
                .config
                .service(&service)
                .and_then(|s| s.release.as_ref())
                .map(|r| r.gates.iter().filter(|g| g.kind == kind).cloned().collect())
                .unwrap_or_default();
            if gates.is_empty() {
                // The gate was removed from the configuration while the release waited on it.
                let command = match kind {
                    GateKind::PostRollback => Command::GateAnswered,
                    _ => Command::GatePassed,
                };
                let reason = format!("no {} gate configured any more", kind.as_str());
                if let Err(e) = self.move_on_gate(&mut state, &service, command, &reason, now_ms) {
                    self.errors.log(format_args!(
                        "cannot move `{service}` past its removed gate: {e}"
                    ));
                }
                continue;
            }
            let body = gate_body(&self.env, &state, &service, m, kind);
            self.gate_calls
                .asking
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(service.clone());
            let sender = self
                .gate_calls
                .sender
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            let spawned = std::thread::Builder::new()
                .name(format!("gate-{service}"))
                .spawn({
                    let service = service.clone();
                    move || {
                        let mut answers = Vec::new();
                        for gate in &gates {
                            let answer = ask(gate, &body);
                            let passed = answer.passed();
                            answers.push(answer);
                            if !passed {
                                break;
                            }
                        }
                        // The controller may be gone (shutting down): nothing to tell.
                        let _ = sender.send(Answered {
                            service,
                            kind,
                            token,
                            answers,
                        });
                    }
                });
            if let Err(e) = spawned {
                self.gate_calls
                    .asking
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&service);
                self.errors
                    .log(format_args!("cannot start asking `{service}`'s gate: {e}"));
            }
        }
    }

    fn last_answer(&self, service: &str) -> Option<Last> {
        self.gate_calls
            .last
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(service)
            .cloned()
    }

    /// Records `a` in the audit log, then moves the release if it still waits where it did.
    fn apply_gate_answer(&self, a: &Answered, now_ms: i64) -> Result<(), ControlError> {
        let mut state = self.lock();
        for answer in &a.answers {
            self.store.append_audit(
                &self.env,
                NewAuditEntry {
                    at_ms: now_ms,
                    actor: "gate".to_string(),
                    action: "gate".to_string(),
                    target: a.service.clone(),
                    reason: format!(
                        "{} gate {} answered {}",
                        a.kind.as_str(),
                        answer.url,
                        answer.word()
                    ),
                    detail: serde_json::json!({
                        "kind": a.kind.as_str(),
                        "url": answer.url,
                        "status": answer.status,
                        "error": answer.error,
                        "body": answer.excerpt,
                        "attempts": answer.attempts,
                        "passed": answer.passed(),
                    }),
                },
            )?;
        }
        let shown = a.answers.iter().find(|x| !x.passed()).or(a.answers.last());
        let reason = match shown {
            Some(x) => format!("{} gate {} answered {}", a.kind.as_str(), x.url, x.word()),
            None => format!("{} gate answered", a.kind.as_str()),
        };
        let interval = state
            .config
            .service(&a.service)
            .and_then(|s| s.release.as_ref())
            .and_then(|r| r.analysis.as_ref())
            .map_or(REASK_WITHOUT_ANALYSIS, |an| an.interval);
        if let Some(x) = shown {
            self.gate_calls
                .last
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(
                    a.service.clone(),
                    Last {
                        kind: a.kind,
                        token: a.token,
                        url: x.url.clone(),
                        answer: x.word(),
                        at_ms: now_ms,
                        next_ask_ms: now_ms.saturating_add(
                            i64::try_from(interval.as_millis()).unwrap_or(i64::MAX),
                        ),
                    },
                );
        }
        let Some(m) = state.releases.get(&a.service) else {
            return Ok(());
        };
        // A person (or the analysis) moved the release while the gate was asked.
        if m.rollout.gate != Some(a.kind) || m.rollout.history.len() != a.token {
            return Ok(());
        }
        let command = match (a.kind, a.passed()) {
            (GateKind::PostRollback, _) => Command::GateAnswered,
            (_, true) => Command::GatePassed,
            (GateKind::PreRollout | GateKind::PreStep, false) => Command::GateFailed,
            // A failing confirm gate holds the release: asked again after `next_ask_ms`.
            (GateKind::ConfirmPromotion, false) => return Ok(()),
        };
        self.move_on_gate(&mut state, &a.service, command, &reason, now_ms)
    }

    /// Applies a gate's `command` to the release (and lets a step without a pause move on at
    /// once), as the leader.
    fn move_on_gate(
        &self,
        state: &mut State,
        service: &str,
        command: Command,
        reason: &str,
        now_ms: i64,
    ) -> Result<(), ControlError> {
        let Some(m) = state.releases.get(service) else {
            return Ok(());
        };
        let mut rollout: Rollout = m.rollout.clone();
        let before = rollout.history.len();
        rollout.apply(&m.plan, command, "gate", reason, now_ms)?;
        rollout.tick(&m.plan, now_ms);
        let new = rollout.history.len() - before;
        self.commit(state, service, rollout, new, true)
    }

    /// What the release's view shows of the gate it waits on.
    pub(crate) fn gate_view(&self, state: &State, service: &str, m: &Managed) -> Option<GateView> {
        let kind = m.rollout.gate?;
        let last = self
            .last_answer(service)
            .filter(|l| l.kind == kind && l.token == m.rollout.history.len());
        let url = match &last {
            Some(l) => l.url.clone(),
            None => state
                .config
                .service(service)
                .and_then(|s| s.release.as_ref())
                .and_then(|r| r.gates.iter().find(|g| g.kind == kind))
                .map_or_else(String::new, |g| redact_url(&g.url.to_string())),
        };
        let summary = match &last {
            Some(l) => format!("waiting on gate {url}: {}", l.answer),
            None => format!("waiting on gate {url}"),
        };
        Some(GateView {
            kind: kind.as_str().to_string(),
            url,
            answer: last.as_ref().map(|l| l.answer.clone()),
            answered_at: last.as_ref().map(|l| rfc3339(l.at_ms)),
            summary,
        })
    }
}

/// The JSON a gate is sent: which release, where it stands, and which gate is asked.
fn gate_body(env: &str, state: &State, service: &str, m: &Managed, kind: GateKind) -> Vec<u8> {
    let svc = state.config.service(service);
    let name = |v: usize| {
        svc.and_then(|s| s.versions.get(v))
            .map_or_else(String::new, |v| v.name.clone())
    };
    let body = serde_json::json!({
        "kind": kind.as_str(),
        "env": env,
        "service": service,
        "release": m.plan.kind.as_str(),
        "from": name(m.plan.baseline),
        "to": name(m.plan.candidate),
        "weight": m.rollout.weight.percent(),
        "step": m.rollout.step,
        "phase": m.rollout.phase.as_str(),
    });
    serde_json::to_vec(&body).unwrap_or_default()
}
