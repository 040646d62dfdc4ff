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
//! * a **canary** walks its steps; a mirror step keeps every user on the baseline (weight 0)
//!   and copies its share of the requests to the candidate ([`Rollout::mirror`]); with
//!   `steps: adaptive` it has one step instead, whose weight the analysis grows and shrinks
//!   interval by interval ([`Rollout::adapt`], `adaptive.rs`);
//! * a **blue-green** release is one manual step at 0% (test traffic forced to the preview)
//!   whose `promote` switches everything to the preview at once;
//! * an **experiment** splits traffic over its variants until `promote` names the winner.
//!
//! A release with `gates:` waits on them ([`Rollout::gate`]): at its start (and retry) before
//! the first step sends the candidate anything (`pre_rollout`), before a timed or analysed move
//! widens the candidate's share (`pre_step`) or gives it everything (`confirm_promotion`); and
//! after it went back to the baseline (`post_rollback`). The controller asks the gates and
//! answers with [`Command::GatePassed`] or [`Command::GateFailed`]; a person's `promote` passes
//! a holding gate.
//!
//! Every phase has a way out ([`Rollout::allowed`] is never empty), an aborted or rolled-back
//! release always sends everything to the baseline, a completed one everything to the new stable
//! version, and every change is recorded as a [`Transition`] with who, why and when.
//!
//! This file holds the plan, the phases, commands and transitions; `machine.rs` the
//! [`Rollout`] that moves between them.
//!
//! ```
//! use graylane_config::{Pause, Step, Weight};
//! use graylane_rollout::{Command, Phase, Plan, Rollout};
//!
//! let plan = Plan::canary(vec![
//!     Step { weight: Weight::ZERO, mirror: None, pause: Pause::Manual },
//!     Step { weight: Weight::from_percent(5.0).unwrap(), mirror: None, pause: Pause::For(std::time::Duration::from_secs(60)) },
//!     Step { weight: Weight::FULL, mirror: None, pause: Pause::None },
//! ]);
//! let mut r = Rollout::start(&plan, 0);
//! assert_eq!((r.phase, r.weight), (Phase::Progressing, Weight::ZERO));
//! r.apply(&plan, Command::Promote, "alice", "test traffic looks fine", 1_000).unwrap();
//! assert_eq!(r.weight.percent(), 5.0);
//! r.tick(&plan, 61_000);
//! assert_eq!((r.phase, r.weight), (Phase::Completed, Weight::FULL));
//! assert_eq!(r.routing(&plan).weight_of(plan.candidate), Weight::FULL);
//! ```

use graylane_config::{Adaptive, GateKind, Pause, Release, Step, Strategy, Weight};
use serde::{Deserialize, Serialize};

pub mod adaptive;
mod machine;

pub use adaptive::{AdaptiveState, Interval, Move, Outcome};
pub use machine::Rollout;

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
    /// `steps: adaptive`: the analysis moves the weight within these bounds
    /// ([`Rollout::adapt`]); the plan's one step is the start.
    pub adaptive: Option<Adaptive>,
    /// The kinds of the release's `gates:`: the moves that wait on a gate's answer
    /// ([`Rollout::gate`]).
    pub gates: Vec<GateKind>,
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
    mirror: None,
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
            adaptive: match release.strategy {
                Strategy::Canary => release.adaptive,
                _ => None,
            },
            gates: release.gates.iter().map(|g| g.kind).collect(),
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
            adaptive: None,
            gates: Vec::new(),
        }
    }

    fn step(&self, index: usize) -> Option<&Step> {
        self.steps.get(index)
    }

    /// Whether the release has a gate of `kind`.
    pub fn has_gate(&self, kind: GateKind) -> bool {
        self.gates.contains(&kind)
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
    /// Every gate of the kind the release waits on answered 2xx: the move it held happens.
    GatePassed,
    /// A `pre_rollout` or `pre_step` gate did not answer 2xx: abort, or pause with
    /// `skip_rollback` (a resume asks it again).
    GateFailed,
    /// The `post_rollback` gates were asked (their answers are only recorded).
    GateAnswered,
}

/// What an adaptive release's transitions are named (`what`) when the analysis moves it.
pub mod adaptive_moves {
    /// The weight grew.
    pub const GROW: &str = "grow";
    /// The weight shrank.
    pub const SHRINK: &str = "shrink";
    /// The weight stayed, with a reason worth recording (the budget spent, `max_pause`).
    pub const HOLD: &str = "hold";
    /// Every check was clear at `max`: complete.
    pub const COMPLETE: &str = "complete";
    /// The exposure budget stopped the release.
    pub const BUDGET_SPENT: &str = "budget_spent";
    /// The candidate leaned worse again at the weight where it first did, after it was proven
    /// just below it: the release stopped (abort, or pause by `on_failure`).
    pub const WORSE_AGAIN: &str = "worse_again";
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
            Command::GatePassed => "gate_passed",
            Command::GateFailed => "gate_failed",
            Command::GateAnswered => "gate_answered",
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

/// A duration in whole milliseconds, for arithmetic with Unix-millisecond times; saturating far
/// beyond any pause a configuration allows.
fn millis(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4)
}
