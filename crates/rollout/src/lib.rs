//! The release state machine: where a canary release stands (its phase, step and weight) and
//! how commands and time move it. Pure: no clock, no I/O — the caller passes `now` in Unix
//! milliseconds and applies the resulting weight to the data plane.
//!
//! ```text
//!             promote / timed pause over / no pause
//!   Progressing ──────────────────────────────────► next step … ─► Completed (100%)
//!     │   ▲  pause / resume                                         │ rollback
//!     ▼   │                                                         ▼
//!    Paused ── abort, failed analysis ──► Aborted (0%) ◄─ retry ─ RolledBack (0%)
//!                                          └──── retry: step 0 ────┘
//! ```
//!
//! Every phase has a way out ([`Rollout::allowed`] is never empty), an aborted or rolled-back
//! release always sends 0% to the candidate, a completed one 100%, and every change is recorded
//! as a [`Transition`] with who, why and when.
//!
//! ```
//! use graylane_config::{Pause, Step, Weight};
//! use graylane_rollout::{Command, Phase, Plan, Rollout};
//!
//! let plan = Plan {
//!     steps: vec![
//!         Step { weight: Weight::ZERO, pause: Pause::Manual },
//!         Step { weight: Weight::from_percent(5.0).unwrap(), pause: Pause::For(std::time::Duration::from_secs(60)) },
//!         Step { weight: Weight::FULL, pause: Pause::None },
//!     ],
//!     skip_rollback: false,
//! };
//! let mut r = Rollout::start(&plan, 0);
//! assert_eq!((r.phase, r.weight), (Phase::Progressing, Weight::ZERO));
//! r.apply(&plan, Command::Promote, "alice", "test traffic looks fine", 1_000).unwrap();
//! assert_eq!(r.weight.percent(), 5.0);
//! r.tick(&plan, 61_000);
//! assert_eq!((r.phase, r.weight), (Phase::Completed, Weight::FULL));
//! ```

use graylane_config::{Pause, Release, Step, Weight};

/// The part of a release's configuration the state machine follows.
#[derive(Debug, Clone)]
pub struct Plan {
    pub steps: Vec<Step>,
    /// A failed analysis pauses the release instead of rolling it back (for changes that
    /// cannot be reversed, such as a schema migration).
    pub skip_rollback: bool,
}

impl Plan {
    pub fn from_release(release: &Release) -> Plan {
        Plan {
            steps: release.steps.clone(),
            skip_rollback: false,
        }
    }

    fn step(&self, index: usize) -> Option<&Step> {
        self.steps.get(index)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Walking the steps: the current step's weight is in effect.
    Progressing,
    /// Held at the current step until resumed or promoted.
    Paused,
    /// The candidate has all the traffic and is the new stable version.
    Completed,
    /// Stopped before completion: all traffic back on the baseline.
    Aborted,
    /// Completed, then sent back to the previous stable version.
    RolledBack,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Progressing => "progressing",
            Phase::Paused => "paused",
            Phase::Completed => "completed",
            Phase::Aborted => "aborted",
            Phase::RolledBack => "rolled_back",
        }
    }
}

/// What a person (or the analysis) can ask of a release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// On to the next step (or complete after the last).
    Promote,
    /// Straight to 100%: complete now.
    PromoteFull,
    Pause,
    Resume,
    /// All traffic to the baseline at once.
    Abort,
    /// Start an aborted or rolled-back release again from step 0.
    Retry,
    /// Override the weight of the current step (recorded; cleared by the next step).
    SetWeight(Weight),
    /// Send a completed release back to the previous stable version.
    Rollback,
    /// The analysis failed the candidate: abort, or pause with `skip_rollback`.
    AnalysisFailed,
}

impl Command {
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Promote => "promote",
            Command::PromoteFull => "promote_full",
            Command::Pause => "pause",
            Command::Resume => "resume",
            Command::Abort => "abort",
            Command::Retry => "retry",
            Command::SetWeight(_) => "set_weight",
            Command::Rollback => "rollback",
            Command::AnalysisFailed => "analysis_failed",
        }
    }
}

/// One recorded change of a release.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub at_ms: i64,
    pub actor: String,
    /// The command's name, or `tick` for a timed step.
    pub what: &'static str,
    pub reason: String,
    pub from: Phase,
    pub to: Phase,
    pub step: usize,
    pub weight: Weight,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("`{command}` makes no sense for a release that is {phase}; allowed now: {allowed}")]
    NotAllowed {
        command: &'static str,
        phase: &'static str,
        allowed: String,
    },
}

/// Where one release stands.
#[derive(Debug, Clone, PartialEq)]
pub struct Rollout {
    pub phase: Phase,
    /// Index of the current step.
    pub step: usize,
    /// The candidate's weight in effect.
    pub weight: Weight,
    /// Set by `set-weight`; the step's own weight returns with the next step.
    pub weight_overridden: bool,
    /// When the current step's pause began (adjusted on resume so paused time does not count).
    pub step_started_ms: i64,
    /// What was left of a timed pause when the release was paused.
    pub pause_left_ms: Option<i64>,
    pub history: Vec<Transition>,
}

impl Rollout {
    /// A release at step 0 with that step's weight in effect at once.
    pub fn start(plan: &Plan, now_ms: i64) -> Rollout {
        let mut r = Rollout {
            phase: Phase::Progressing,
            step: 0,
            weight: Weight::ZERO,
            weight_overridden: false,
            step_started_ms: now_ms,
            pause_left_ms: None,
            history: Vec::new(),
        };
        r.enter_step(plan, 0, now_ms);
        r
    }

    /// The commands that make sense now; never empty, so no phase is a dead end.
    pub fn allowed(&self) -> &'static [&'static str] {
        match self.phase {
            Phase::Progressing => &["promote", "promote_full", "pause", "abort", "set_weight"],
            Phase::Paused => &["resume", "promote", "promote_full", "abort", "set_weight"],
            Phase::Completed => &["rollback"],
            Phase::Aborted | Phase::RolledBack => &["retry"],
        }
    }

    /// Applies `command`; a command that makes no sense now changes nothing and says what
    /// would.
    pub fn apply(
        &mut self,
        plan: &Plan,
        command: Command,
        actor: &str,
        reason: &str,
        now_ms: i64,
    ) -> Result<(), CommandError> {
        let from = self.phase;
        let ok = match (command, from) {
            (Command::Promote, Phase::Progressing | Phase::Paused) => {
                self.advance(plan, now_ms);
                true
            }
            (Command::PromoteFull, Phase::Progressing | Phase::Paused) => {
                self.complete(plan);
                true
            }
            (Command::Pause, Phase::Progressing) => {
                self.pause_left_ms = self.pause_deadline(plan).map(|d| (d - now_ms).max(0));
                self.phase = Phase::Paused;
                true
            }
            (Command::Resume, Phase::Paused) => {
                if let (Some(left), Some(Pause::For(d))) =
                    (self.pause_left_ms, plan.step(self.step).map(|s| s.pause))
                {
                    self.step_started_ms = now_ms - (millis(d) - left);
                }
                self.pause_left_ms = None;
                self.phase = Phase::Progressing;
                true
            }
            (Command::Abort, Phase::Progressing | Phase::Paused) => {
                self.stop(Phase::Aborted);
                true
            }
            (Command::AnalysisFailed, Phase::Progressing | Phase::Paused) => {
                if plan.skip_rollback {
                    self.pause_left_ms = None;
                    self.phase = Phase::Paused;
                } else {
                    self.stop(Phase::Aborted);
                }
                true
            }
            (Command::Retry, Phase::Aborted | Phase::RolledBack) => {
                self.phase = Phase::Progressing;
                self.enter_step(plan, 0, now_ms);
                true
            }
            (Command::SetWeight(w), Phase::Progressing | Phase::Paused) => {
                self.weight = w;
                self.weight_overridden = true;
                true
            }
            (Command::Rollback, Phase::Completed) => {
                self.stop(Phase::RolledBack);
                true
            }
            _ => false,
        };
        if !ok {
            return Err(CommandError::NotAllowed {
                command: command.as_str(),
                phase: from.as_str(),
                allowed: self.allowed().join(", "),
            });
        }
        self.record(command.as_str(), actor, reason, from, now_ms);
        Ok(())
    }

    /// Lets time pass: a step whose timed pause is over, or that has no pause, moves on.
    /// Returns whether anything changed.
    pub fn tick(&mut self, plan: &Plan, now_ms: i64) -> bool {
        let mut changed = false;
        // Several pause-free steps in a row all pass in one tick; the bound keeps a
        // malformed plan from looping.
        for _ in 0..=plan.steps.len() {
            if self.phase != Phase::Progressing {
                break;
            }
            let due = match plan.step(self.step).map(|s| s.pause) {
                Some(Pause::None) => true,
                Some(Pause::For(_)) => self.pause_deadline(plan).is_some_and(|d| now_ms >= d),
                Some(Pause::Manual) | None => false,
            };
            if !due {
                break;
            }
            let from = self.phase;
            self.advance(plan, now_ms);
            self.record("tick", "controller", "pause over", from, now_ms);
            changed = true;
        }
        changed
    }

    /// When [`Rollout::tick`] will next have something to do, if ever without a command.
    pub fn next_deadline(&self, plan: &Plan) -> Option<i64> {
        if self.phase != Phase::Progressing {
            return None;
        }
        match plan.step(self.step)?.pause {
            Pause::None => Some(self.step_started_ms),
            Pause::For(_) => self.pause_deadline(plan),
            Pause::Manual => None,
        }
    }

    fn pause_deadline(&self, plan: &Plan) -> Option<i64> {
        match plan.step(self.step)?.pause {
            Pause::For(d) => Some(self.step_started_ms + millis(d)),
            _ => None,
        }
    }

    fn enter_step(&mut self, plan: &Plan, index: usize, now_ms: i64) {
        self.step = index;
        self.weight = plan.step(index).map_or(Weight::FULL, |s| s.weight);
        self.weight_overridden = false;
        self.step_started_ms = now_ms;
        self.pause_left_ms = None;
    }

    fn advance(&mut self, plan: &Plan, now_ms: i64) {
        if self.step + 1 < plan.steps.len() {
            self.phase = Phase::Progressing;
            self.enter_step(plan, self.step + 1, now_ms);
        } else {
            self.complete(plan);
        }
    }

    fn complete(&mut self, plan: &Plan) {
        self.phase = Phase::Completed;
        self.step = plan.steps.len().saturating_sub(1);
        self.weight = Weight::FULL;
        self.weight_overridden = false;
        self.pause_left_ms = None;
    }

    fn stop(&mut self, phase: Phase) {
        self.phase = phase;
        self.weight = Weight::ZERO;
        self.weight_overridden = false;
        self.pause_left_ms = None;
    }

    fn record(&mut self, what: &'static str, actor: &str, reason: &str, from: Phase, now_ms: i64) {
        self.history.push(Transition {
            at_ms: now_ms,
            actor: actor.to_string(),
            what,
            reason: reason.to_string(),
            from,
            to: self.phase,
            step: self.step,
            weight: self.weight,
        });
    }
}

fn millis(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4)
}
