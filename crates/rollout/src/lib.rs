//! The release state machine: where a release stands (its phase, step and weight), how commands
//! and time move it, and the traffic split that follows from it. Pure: no clock, no I/O — the
//! caller passes `now` in Unix milliseconds and applies [`Rollout::routing`] to the data plane.
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
//! The three strategies share this machine:
//! * a **canary** walks its steps;
//! * a **blue-green** release is one manual step at 0% (test traffic forced to the preview)
//!   whose `promote` switches everything to the preview at once;
//! * an **experiment** splits traffic over its variants until `promote` names the winner.
//!
//! Every phase has a way out ([`Rollout::allowed`] is never empty), an aborted or rolled-back
//! release always sends everything to the baseline, a completed one everything to the new stable
//! version, and every change is recorded as a [`Transition`] with who, why and when.
//!
//! ```
//! use graylane_config::{Pause, Step, Weight};
//! use graylane_rollout::{Command, Phase, Plan, Rollout};
//!
//! let plan = Plan::canary(vec![
//!     Step { weight: Weight::ZERO, pause: Pause::Manual },
//!     Step { weight: Weight::from_percent(5.0).unwrap(), pause: Pause::For(std::time::Duration::from_secs(60)) },
//!     Step { weight: Weight::FULL, pause: Pause::None },
//! ]);
//! let mut r = Rollout::start(&plan, 0);
//! assert_eq!((r.phase, r.weight), (Phase::Progressing, Weight::ZERO));
//! r.apply(&plan, Command::Promote, "alice", "test traffic looks fine", 1_000).unwrap();
//! assert_eq!(r.weight.percent(), 5.0);
//! r.tick(&plan, 61_000);
//! assert_eq!((r.phase, r.weight), (Phase::Completed, Weight::FULL));
//! assert_eq!(r.routing(&plan).weight_of(plan.candidate), Weight::FULL);
//! ```

use graylane_config::{Pause, Release, Step, Strategy, Weight};
use graylane_rules::{Routing, Share};
use serde::{Deserialize, Serialize};

/// The part of a release's configuration the state machine follows.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The strategy, with what it alone needs.
    pub kind: Kind,
    /// Canary steps; a blue-green release and an experiment have one manual step.
    pub steps: Vec<Step>,
    /// Where traffic returns when the release stops (blue-green: `active`; experiment: the
    /// first variant).
    pub baseline: usize,
    /// The version being tried (blue-green: `preview`).
    pub candidate: usize,
    /// A failed analysis pauses the release instead of aborting it (`skip_rollback: true`, or
    /// `analysis.on_failure: pause`).
    pub skip_rollback: bool,
    /// The release has an analysis: a step below 100% without a manual gate moves on only once
    /// its pause (if any) is over *and* the analysis has passed it.
    pub gated: bool,
}

/// A release's strategy, as the state machine needs it.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// The candidate's weight moves through the plan's steps.
    Canary,
    /// Everything on the baseline until `promote` switches it all to the candidate.
    BlueGreen {
        /// How long after a promotion the previous active version is kept, in milliseconds.
        keep_previous_ms: i64,
    },
    /// Traffic split between variants until one is promoted the winner.
    Experiment {
        /// (variant name, version, weight), in bucket order.
        variants: Vec<(String, usize, Weight)>,
    },
}

impl Kind {
    /// The strategy as the configuration writes it: `canary`, `blue_green`, `experiment`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Kind::Canary => "canary",
            Kind::BlueGreen { .. } => "blue_green",
            Kind::Experiment { .. } => "experiment",
        }
    }
}

/// A strategy as [`Kind::as_str`] names it, as a sentence says it: `an experiment`,
/// `a blue-green`, `a canary`.
pub fn with_article(strategy: &str) -> String {
    match strategy {
        "experiment" => "an experiment".to_string(),
        "blue_green" => "a blue-green".to_string(),
        other => format!("a {other}"),
    }
}

/// A command as the API names it (`promote_full`), as `graylane` spells it on its command line
/// (`promote --full`): refusals are read by people, who type the latter.
pub fn as_typed(command: &str) -> &str {
    match command {
        "promote_full" => "promote --full",
        "promote_variant" => "promote --variant",
        "set_weight" => "set-weight",
        other => other,
    }
}

const MANUAL_GATE: Step = Step {
    weight: Weight::ZERO,
    pause: Pause::Manual,
};

impl Plan {
    /// The plan of a validated release; `on_failure: pause` counts as `skip_rollback`.
    pub fn from_release(release: &Release) -> Plan {
        let (kind, steps) = match &release.strategy {
            Strategy::Canary => (Kind::Canary, release.steps.clone()),
            Strategy::BlueGreen { keep_previous } => (
                Kind::BlueGreen {
                    keep_previous_ms: millis(*keep_previous),
                },
                vec![MANUAL_GATE],
            ),
            Strategy::Experiment { variants } => (
                Kind::Experiment {
                    variants: variants
                        .iter()
                        .map(|v| (v.name.clone(), v.version, v.weight))
                        .collect(),
                },
                vec![MANUAL_GATE],
            ),
        };
        Plan {
            kind,
            steps,
            baseline: release.baseline,
            candidate: release.candidate,
            skip_rollback: release.skip_rollback
                || release
                    .analysis
                    .as_ref()
                    .is_some_and(|a| a.on_failure == graylane_config::OnFailure::Pause),
            gated: release.analysis.is_some(),
        }
    }

    /// A canary from version 0 to version 1 (examples and tests).
    pub fn canary(steps: Vec<Step>) -> Plan {
        Plan {
            kind: Kind::Canary,
            steps,
            baseline: 0,
            candidate: 1,
            skip_rollback: false,
            gated: false,
        }
    }

    fn step(&self, index: usize) -> Option<&Step> {
        self.steps.get(index)
    }
}

/// Where a release is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Walking the steps: the current step's weight is in effect.
    Progressing,
    /// Held at the current step until resumed or promoted.
    Paused,
    /// The candidate (or the experiment's winner) has all the traffic and is the stable version.
    Completed,
    /// Stopped before completion: all traffic back on the baseline.
    Aborted,
    /// Completed, then sent back to the previous stable version.
    RolledBack,
}

impl Phase {
    /// The phase as the API and metrics show it: `progressing`, `paused`, `completed`,
    /// `aborted`, `rolled_back`.
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
    /// On to the next step (or complete after the last); a blue-green switch.
    Promote,
    /// Straight to 100%: complete now.
    PromoteFull,
    /// Complete an experiment with the variant served by this version as the winner.
    PromoteVariant(usize),
    /// Hold at the current step; a timed pause keeps what was left of it.
    Pause,
    /// Go on from where it was paused.
    Resume,
    /// All traffic to the baseline at once, force rules off.
    Abort,
    /// Start an aborted or rolled-back release again from step 0.
    Retry,
    /// Override the canary weight of the current step (recorded; cleared by the next step).
    SetWeight(Weight),
    /// Send a completed release back to the previous stable version.
    Rollback,
    /// The analysis failed the candidate: abort, or pause with `skip_rollback`.
    AnalysisFailed,
    /// The analysis passed the current step: it may move on once its pause is over.
    AnalysisPassed,
}

impl Command {
    /// The command as the API names it (`promote_full`, `set_weight`, ...); see [`as_typed`]
    /// for the command line's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Promote => "promote",
            Command::PromoteFull => "promote_full",
            Command::PromoteVariant(_) => "promote_variant",
            Command::Pause => "pause",
            Command::Resume => "resume",
            Command::Abort => "abort",
            Command::Retry => "retry",
            Command::SetWeight(_) => "set_weight",
            Command::Rollback => "rollback",
            Command::AnalysisFailed => "analysis_failed",
            Command::AnalysisPassed => "analysis_passed",
        }
    }
}

/// One recorded change of a release.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transition {
    /// When, in Unix milliseconds.
    pub at_ms: i64,
    /// Who asked: an API token's name, or `analysis` for the analysis's own commands.
    pub actor: String,
    /// The command's name, or `tick` for a timed step.
    pub what: String,
    /// Why, as the actor said it (may be empty).
    pub reason: String,
    /// The phase before.
    pub from: Phase,
    /// The phase after.
    pub to: Phase,
    /// The step index after the change.
    pub step: usize,
    /// The candidate's weight after the change.
    pub weight: Weight,
}

/// Why a command was refused; the release is left as it was.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// The command does not apply in the release's current phase.
    #[error(
        "`{}` makes no sense for a release that is {phase}; allowed now: {allowed}",
        as_typed(command)
    )]
    NotAllowed {
        /// The command, as the API names it.
        command: &'static str,
        /// The release's phase, as [`Phase::as_str`] names it.
        phase: &'static str,
        /// The commands allowed now, as the command line spells them.
        allowed: String,
    },
    /// The command does not apply to the release's strategy (e.g. `set-weight` on a
    /// blue-green release).
    #[error(
        "`{}` does not apply to {} release: {hint}",
        as_typed(command),
        with_article(strategy)
    )]
    NotForStrategy {
        /// The command, as the API names it.
        command: &'static str,
        /// The strategy, as [`Kind::as_str`] names it.
        strategy: &'static str,
        /// What to do instead.
        hint: &'static str,
    },
}

/// Where one release stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    /// Where the release is in its life.
    pub phase: Phase,
    /// Index of the current step.
    pub step: usize,
    /// The candidate's canary weight in effect (a blue-green release: 0 until switched, then
    /// 100%).
    pub weight: Weight,
    /// Set by `set-weight`; the step's own weight returns with the next step.
    pub weight_overridden: bool,
    /// When the current step's pause began (adjusted on resume so paused time does not count).
    pub step_started_ms: i64,
    /// What was left of a timed pause when the release was paused.
    pub pause_left_ms: Option<i64>,
    /// The version that won a completed experiment.
    pub winner: Option<usize>,
    /// Until when a promoted blue-green release keeps the previous active version.
    pub previous_until_ms: Option<i64>,
    /// The analysis has passed the current step (a gated plan moves on only then).
    #[serde(default)]
    pub analysis_passed: bool,
    /// Every change so far, oldest first.
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
            winner: None,
            previous_until_ms: None,
            analysis_passed: false,
            history: Vec::new(),
        };
        r.enter_step(plan, 0, now_ms);
        r
    }

    /// The commands that make sense now, as the API names them; never empty, so no phase is a
    /// dead end. The first one is always accepted.
    pub fn allowed(&self, plan: &Plan) -> &'static [&'static str] {
        let canary = matches!(plan.kind, Kind::Canary);
        match (self.phase, canary) {
            (Phase::Progressing, true) => {
                &["promote", "promote_full", "pause", "abort", "set_weight"]
            }
            (Phase::Paused, true) => &["resume", "promote", "promote_full", "abort", "set_weight"],
            (Phase::Progressing, false) => &["pause", "promote", "abort"],
            (Phase::Paused, false) => &["resume", "promote", "abort"],
            (Phase::Completed, _) => &["rollback"],
            (Phase::Aborted | Phase::RolledBack, _) => &["retry"],
        }
    }

    /// The version that is stable now: the candidate (or winner) once completed, else the
    /// baseline.
    pub fn stable(&self, plan: &Plan) -> usize {
        match self.phase {
            Phase::Completed => self.winner.unwrap_or(plan.candidate),
            _ => plan.baseline,
        }
    }

    /// The traffic split the data plane must apply for this state.
    pub fn routing(&self, plan: &Plan) -> Routing {
        match (self.phase, &plan.kind) {
            (Phase::Completed, _) => Routing::all_to(self.stable(plan)),
            (Phase::Aborted | Phase::RolledBack, _) => Routing::all_to(plan.baseline),
            (_, Kind::Experiment { variants }) => Routing {
                force_to: None,
                shares: variants
                    .iter()
                    .map(|&(_, version, weight)| Share { version, weight })
                    .collect(),
            },
            (_, Kind::Canary | Kind::BlueGreen { .. }) => {
                let rest = Weight::FULL.milli_percent() - self.weight.milli_percent();
                Routing {
                    force_to: Some(plan.candidate),
                    shares: vec![
                        Share {
                            version: plan.candidate,
                            weight: self.weight,
                        },
                        Share {
                            version: plan.baseline,
                            weight: Weight::from_milli_percent(rest),
                        },
                    ],
                }
            }
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
        check_strategy(plan, command)?;
        let from = self.phase;
        let ok = match (command, from) {
            (Command::Promote, Phase::Progressing | Phase::Paused) => {
                self.advance(plan, now_ms);
                true
            }
            (Command::PromoteFull, Phase::Progressing | Phase::Paused) => {
                self.complete(plan, now_ms);
                true
            }
            (Command::PromoteVariant(version), Phase::Progressing | Phase::Paused) => {
                self.complete(plan, now_ms);
                self.winner = Some(version);
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
                    self.pause_left_ms = match self.phase {
                        Phase::Paused => self.pause_left_ms,
                        _ => self.pause_deadline(plan).map(|d| (d - now_ms).max(0)),
                    };
                    self.phase = Phase::Paused;
                } else {
                    self.stop(Phase::Aborted);
                }
                true
            }
            (Command::AnalysisPassed, Phase::Progressing) if !self.analysis_passed => {
                self.analysis_passed = true;
                true
            }
            (Command::Retry, Phase::Aborted | Phase::RolledBack) => {
                self.phase = Phase::Progressing;
                self.winner = None;
                self.previous_until_ms = None;
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
                allowed: self
                    .allowed(plan)
                    .iter()
                    .map(|c| as_typed(c))
                    .collect::<Vec<_>>()
                    .join(", "),
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
            let pause_over = match plan.step(self.step).map(|s| s.pause) {
                Some(Pause::None) => true,
                Some(Pause::For(_)) => self.pause_deadline(plan).is_some_and(|d| now_ms >= d),
                Some(Pause::Manual) | None => false,
            };
            // At 100% the baseline has no traffic left to compare with: nothing to wait for.
            let due =
                pause_over && (!plan.gated || self.analysis_passed || self.weight == Weight::FULL);
            if !due {
                break;
            }
            let from = self.phase;
            self.advance(plan, now_ms);
            let reason = if plan.gated {
                "pause over and analysis passed"
            } else {
                "pause over"
            };
            self.record("tick", "controller", reason, from, now_ms);
            changed = true;
        }
        changed
    }

    /// When [`Rollout::tick`] will next have something to do, if ever without a command.
    pub fn next_deadline(&self, plan: &Plan) -> Option<i64> {
        if self.phase != Phase::Progressing || (plan.gated && !self.analysis_passed) {
            return None;
        }
        match plan.step(self.step)?.pause {
            Pause::None => Some(self.step_started_ms),
            Pause::For(_) => self.pause_deadline(plan),
            Pause::Manual => None,
        }
    }

    /// How long the current timed pause still runs (counting stops while paused).
    pub fn pause_remaining_ms(&self, plan: &Plan, now_ms: i64) -> Option<i64> {
        match self.phase {
            Phase::Paused => self.pause_left_ms,
            Phase::Progressing => self.pause_deadline(plan).map(|d| (d - now_ms).max(0)),
            _ => None,
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
        self.analysis_passed = false;
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
            self.complete(plan, now_ms);
        }
    }

    fn complete(&mut self, plan: &Plan, now_ms: i64) {
        self.phase = Phase::Completed;
        self.step = plan.steps.len().saturating_sub(1);
        self.weight = Weight::FULL;
        self.weight_overridden = false;
        self.pause_left_ms = None;
        if let Kind::BlueGreen { keep_previous_ms } = plan.kind {
            self.previous_until_ms = Some(now_ms.saturating_add(keep_previous_ms));
        }
    }

    fn stop(&mut self, phase: Phase) {
        self.phase = phase;
        self.weight = Weight::ZERO;
        self.weight_overridden = false;
        self.pause_left_ms = None;
        self.previous_until_ms = None;
    }

    fn record(&mut self, what: &str, actor: &str, reason: &str, from: Phase, now_ms: i64) {
        self.history.push(Transition {
            at_ms: now_ms,
            actor: actor.to_string(),
            what: what.to_string(),
            reason: reason.to_string(),
            from,
            to: self.phase,
            step: self.step,
            weight: self.weight,
        });
    }
}

/// Commands that only one strategy understands.
fn check_strategy(plan: &Plan, command: Command) -> Result<(), CommandError> {
    let refuse = |hint| {
        Err(CommandError::NotForStrategy {
            command: command.as_str(),
            strategy: plan.kind.as_str(),
            hint,
        })
    };
    match (&plan.kind, command) {
        (Kind::Experiment { .. }, Command::Promote | Command::PromoteFull) => {
            refuse("name the winning variant (`promote --variant NAME`)")
        }
        (Kind::Experiment { variants }, Command::PromoteVariant(v))
            if !variants.iter().any(|&(_, version, _)| version == v) =>
        {
            refuse("the winner must be one of the experiment's variants")
        }
        (Kind::Canary | Kind::BlueGreen { .. }, Command::PromoteVariant(_)) => {
            refuse("only an experiment has variants; use `promote`")
        }
        (Kind::BlueGreen { .. }, Command::SetWeight(_)) => {
            refuse("blue-green switches all traffic at once; use `promote` (and `rollback`)")
        }
        (Kind::Experiment { .. }, Command::SetWeight(_)) => {
            refuse("an experiment's weights come from its variants in the configuration")
        }
        _ => Ok(()),
    }
}

fn millis(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4)
}
