//! [`Rollout`]: one release's state and the transitions commands and time make, checked against
//! its [`Plan`]; and the traffic split each state means.

use graylane_config::{GateKind, Pause, Weight};
use graylane_rules::{Routing, Share};
use serde::{Deserialize, Serialize};

use crate::adaptive::{self, AdaptiveState, Interval, Move};
use crate::{
    Command, CommandError, Kind, Phase, Plan, Transition, adaptive_moves, as_typed, millis,
};

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
    /// `steps: adaptive`: when the weight last changed and the spent exposure budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adaptive: Option<AdaptiveState>,
    /// The gates of this kind must answer before the release moves on (`post_rollback`: are
    /// to be told it went back to the baseline). While `pre_rollout` waits, the candidate gets
    /// nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<GateKind>,
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
            adaptive: None,
            gate: None,
            history: Vec::new(),
        };
        r.enter_first_step(plan, now_ms);
        r
    }

    /// Step 0, or, with a `pre_rollout` gate, waiting on it with nothing on the candidate.
    fn enter_first_step(&mut self, plan: &Plan, now_ms: i64) {
        self.enter_step(plan, 0, now_ms);
        if plan.has_gate(GateKind::PreRollout) {
            self.weight = Weight::ZERO;
            self.gate = Some(GateKind::PreRollout);
        }
    }

    /// Whether the release is waiting on its `pre_rollout` gate: it has not started yet.
    fn before_rollout(&self) -> bool {
        self.gate == Some(GateKind::PreRollout)
            && matches!(self.phase, Phase::Progressing | Phase::Paused)
    }

    /// The commands that make sense now, as the API names them; never empty, so no phase is a
    /// dead end. The first one is always accepted.
    pub fn allowed(&self, plan: &Plan) -> &'static [&'static str] {
        let canary = matches!(plan.kind, Kind::Canary);
        match (self.phase, canary) {
            // An adaptive weight set by hand is kept until `resume` hands it back.
            (Phase::Progressing, true) if plan.adaptive.is_some() && self.weight_overridden => &[
                "resume",
                "promote",
                "promote_full",
                "pause",
                "abort",
                "set_weight",
            ],
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

    /// The share of requests copied to the candidate now: the current step's `mirror` while
    /// the release is progressing or paused, unless `set-weight` overrode the step.
    pub fn mirror(&self, plan: &Plan) -> Option<Weight> {
        match self.phase {
            Phase::Progressing | Phase::Paused
                if !self.weight_overridden && !self.before_rollout() =>
            {
                plan.step(self.step)?.mirror
            }
            _ => None,
        }
    }

    /// The traffic split the data plane must apply for this state.
    pub fn routing(&self, plan: &Plan) -> Routing {
        match (self.phase, &plan.kind) {
            (Phase::Completed, _) => Routing::all_to(self.stable(plan)),
            (Phase::Aborted | Phase::RolledBack, _) => Routing::all_to(plan.baseline),
            _ if self.before_rollout() => Routing::all_to(plan.baseline),
            (_, Kind::Experiment { variants }) => Routing {
                force_to: None,
                shares: variants
                    .iter()
                    .map(|&(_, version, weight)| Share { version, weight })
                    .collect(),
                mirror: Weight::ZERO,
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
                    mirror: self.mirror(plan).unwrap_or(Weight::ZERO),
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
            (Command::Promote, Phase::Progressing | Phase::Paused) if self.before_rollout() => {
                self.phase = Phase::Progressing;
                self.enter_step(plan, 0, now_ms);
                true
            }
            (Command::Promote, Phase::Progressing | Phase::Paused) => {
                match plan.adaptive {
                    Some(bounds) if self.weight < bounds.max => {
                        self.phase = Phase::Progressing;
                        self.set_adaptive_weight(bounds.max, now_ms);
                    }
                    _ => self.advance(plan, now_ms),
                }
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
            (Command::Resume, Phase::Progressing)
                if plan.adaptive.is_some() && self.weight_overridden =>
            {
                self.weight_overridden = false;
                true
            }
            (Command::Resume, Phase::Paused) => {
                if plan.adaptive.is_some() {
                    self.weight_overridden = false;
                }
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
                self.stop(plan, Phase::Aborted);
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
                    self.stop(plan, Phase::Aborted);
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
                self.enter_first_step(plan, now_ms);
                true
            }
            (Command::GatePassed, Phase::Progressing) if self.before_rollout() => {
                self.enter_step(plan, 0, now_ms);
                true
            }
            (Command::GatePassed, Phase::Progressing) if self.gate.is_some() => {
                self.advance(plan, now_ms);
                true
            }
            (Command::GateFailed, Phase::Progressing)
                if matches!(self.gate, Some(GateKind::PreRollout | GateKind::PreStep)) =>
            {
                if plan.skip_rollback {
                    self.pause_left_ms = None;
                    self.phase = Phase::Paused;
                } else {
                    self.stop(plan, Phase::Aborted);
                }
                true
            }
            (Command::GateAnswered, Phase::Aborted | Phase::RolledBack)
                if self.gate == Some(GateKind::PostRollback) =>
            {
                self.gate = None;
                true
            }
            (Command::SetWeight(w), Phase::Progressing | Phase::Paused) => {
                self.set_adaptive_weight(w, now_ms);
                self.weight_overridden = true;
                true
            }
            (Command::Rollback, Phase::Completed) => {
                self.stop(plan, Phase::RolledBack);
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

    /// Applies one analysis interval to an adaptive release (see [`adaptive`]): grows, shrinks,
    /// completes, holds or stops it, and records each change with the figures that caused it.
    /// Returns whether a transition was recorded; a release that is not adaptive, or not
    /// progressing, is left as it is.
    pub fn adapt(&mut self, plan: &Plan, interval: &Interval, now_ms: i64) -> bool {
        let Some(bounds) = plan.adaptive else {
            return false;
        };
        if self.phase != Phase::Progressing || self.gate.is_some() {
            return false;
        }
        let mut state = self
            .adaptive
            .unwrap_or_else(|| AdaptiveState::new(self.step_started_ms));
        let (step, why) = adaptive::decide(
            &bounds,
            self.weight,
            self.weight_overridden,
            &mut state,
            interval,
            now_ms,
        );
        self.adaptive = Some(state);
        let from = self.phase;
        let what = match step {
            Move::Grow(w) | Move::Shrink(w) => {
                self.set_adaptive_weight(w, now_ms);
                if let Move::Grow(w) = step {
                    // Only a candidate proven just below its ceiling grows back to it.
                    if let Some(state) = &mut self.adaptive {
                        state.retried = state.ceiling.is_some_and(|c| w >= c);
                    }
                    adaptive_moves::GROW
                } else {
                    adaptive_moves::SHRINK
                }
            }
            Move::Complete => {
                self.complete(plan, now_ms);
                adaptive_moves::COMPLETE
            }
            Move::Hold { record: false } => return false,
            Move::Hold { record: true } => adaptive_moves::HOLD,
            Move::Stop { .. } | Move::WorseAgain => {
                if plan.skip_rollback {
                    self.phase = Phase::Paused;
                } else {
                    self.stop(plan, Phase::Aborted);
                }
                match step {
                    Move::Stop { budget: true } => adaptive_moves::BUDGET_SPENT,
                    Move::WorseAgain => adaptive_moves::WORSE_AGAIN,
                    _ => Command::AnalysisFailed.as_str(),
                }
            }
        };
        self.record(what, "analysis", &why, from, now_ms);
        true
    }

    /// Lets time pass: a step whose timed pause is over, or that has no pause, moves on.
    /// Returns whether anything changed.
    pub fn tick(&mut self, plan: &Plan, now_ms: i64) -> bool {
        let mut changed = false;
        // Several pause-free steps in a row all pass in one tick; the bound keeps a
        // malformed plan from looping.
        for _ in 0..=plan.steps.len() {
            if self.phase != Phase::Progressing || self.gate.is_some() {
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
            if let Some(kind) = self.gate_before_advance(plan) {
                self.gate = Some(kind);
                let reason = format!("waiting on the {} gate", kind.as_str());
                self.record("gate", "controller", &reason, from, now_ms);
                return true;
            }
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

    /// The gate the move to the next step must pass, if any: `confirm_promotion` before the
    /// candidate gets everything, `pre_step` before any other widening.
    fn gate_before_advance(&self, plan: &Plan) -> Option<GateKind> {
        if self.weight == Weight::FULL {
            return None;
        }
        let next = plan.step(self.step + 1).map_or(Weight::FULL, |s| s.weight);
        let kind = if next == Weight::FULL {
            GateKind::ConfirmPromotion
        } else if next > self.weight {
            GateKind::PreStep
        } else {
            return None;
        };
        plan.has_gate(kind).then_some(kind)
    }

    /// When [`Rollout::tick`] will next have something to do, if ever without a command.
    pub fn next_deadline(&self, plan: &Plan) -> Option<i64> {
        if self.phase != Phase::Progressing
            || (plan.gated && !self.analysis_passed)
            || self.gate.is_some()
        {
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

    /// A new weight (adaptive or by hand); an adaptive release's pace counts from now.
    fn set_adaptive_weight(&mut self, weight: Weight, now_ms: i64) {
        self.weight = weight;
        self.weight_overridden = false;
        if let Some(state) = &mut self.adaptive {
            state.changed_ms = now_ms;
            state.held_noted = false;
            state.capped_noted = false;
            state.proven = 0;
            state.retried = false;
        }
    }

    fn enter_step(&mut self, plan: &Plan, index: usize, now_ms: i64) {
        self.gate = None;
        self.adaptive = plan.adaptive.map(|_| AdaptiveState::new(now_ms));
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
        self.gate = None;
        self.step = plan.steps.len().saturating_sub(1);
        self.weight = Weight::FULL;
        self.weight_overridden = false;
        self.pause_left_ms = None;
        if let Kind::BlueGreen { keep_previous_ms } = plan.kind {
            self.previous_until_ms = Some(now_ms.saturating_add(keep_previous_ms));
        }
    }

    fn stop(&mut self, plan: &Plan, phase: Phase) {
        self.phase = phase;
        self.gate = plan
            .has_gate(GateKind::PostRollback)
            .then_some(GateKind::PostRollback);
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
