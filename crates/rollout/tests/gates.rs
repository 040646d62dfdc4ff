//! Gates in the state machine: a `pre_rollout` gate keeps the candidate at nothing until it
//! passes, `pre_step` holds each widening and fails the step when it fails, `confirm_promotion`
//! holds the release at its weight until it passes, `post_rollback` is owed after every return
//! to the baseline; a person's `promote` passes a holding gate.

use std::time::Duration;

use graylane_config::{GateKind, Pause, Step, Weight};
use graylane_rollout::{Command, Phase, Plan, Rollout};

const MIN: i64 = 60_000;

fn pct(p: f64) -> Weight {
    Weight::from_percent(p).unwrap()
}

/// 10% for a minute, 50% for a minute, then 100%.
fn plan(gates: &[GateKind]) -> Plan {
    let step = |w, pause| Step {
        weight: pct(w),
        mirror: None,
        pause,
    };
    let minute = Pause::For(Duration::from_secs(60));
    Plan {
        gates: gates.to_vec(),
        ..Plan::canary(vec![
            step(10.0, minute),
            step(50.0, minute),
            step(100.0, Pause::None),
        ])
    }
}

#[test]
fn a_pre_rollout_gate_keeps_every_request_on_the_baseline_until_it_passes() {
    let plan = plan(&[GateKind::PreRollout]);
    let mut r = Rollout::start(&plan, 0);
    assert_eq!(r.gate, Some(GateKind::PreRollout));
    assert_eq!(r.weight, Weight::ZERO);
    let routing = r.routing(&plan);
    assert_eq!(routing.weight_of(plan.candidate), Weight::ZERO);
    assert_eq!(routing.force_to, None, "not even forced test traffic");
    assert!(!r.tick(&plan, 10 * MIN), "time alone does not start it");
    assert_eq!(r.next_deadline(&plan), None);

    r.apply(&plan, Command::GatePassed, "gate", "200", 5 * MIN)
        .unwrap();
    assert_eq!(
        (r.phase, r.step, r.weight, r.gate),
        (Phase::Progressing, 0, pct(10.0), None)
    );
    assert_eq!(r.routing(&plan).weight_of(plan.candidate), pct(10.0));
    assert!(
        !r.tick(&plan, 5 * MIN + MIN - 1),
        "the step's pause counts from the gate's pass"
    );
    assert!(r.tick(&plan, 6 * MIN));
    assert_eq!(r.weight, pct(50.0));
}

#[test]
fn a_failing_pre_rollout_gate_aborts_the_release_and_a_retry_asks_again() {
    let plan = plan(&[GateKind::PreRollout]);
    let mut r = Rollout::start(&plan, 0);
    r.apply(&plan, Command::GateFailed, "gate", "503", 1)
        .unwrap();
    assert_eq!(
        (r.phase, r.weight, r.gate),
        (Phase::Aborted, Weight::ZERO, None)
    );
    r.apply(&plan, Command::Retry, "alice", "", 2).unwrap();
    assert_eq!(
        (r.phase, r.gate),
        (Phase::Progressing, Some(GateKind::PreRollout))
    );
}

#[test]
fn a_pre_step_gate_holds_each_widening_and_its_pass_moves_the_release_on() {
    let plan = plan(&[GateKind::PreStep]);
    let mut r = Rollout::start(&plan, 0);
    assert_eq!(
        (r.weight, r.gate),
        (pct(10.0), None),
        "the first step is pre_rollout's"
    );
    assert!(r.tick(&plan, MIN));
    assert_eq!(
        (r.step, r.weight),
        (0, pct(10.0)),
        "held at the step it was on"
    );
    assert_eq!(r.gate, Some(GateKind::PreStep));
    let t = r.history.last().unwrap();
    assert_eq!(
        (t.what.as_str(), t.reason.as_str()),
        ("gate", "waiting on the pre_step gate")
    );
    assert!(
        !r.tick(&plan, 5 * MIN),
        "it waits for the answer, not the clock"
    );
    r.apply(&plan, Command::GatePassed, "gate", "200", 5 * MIN)
        .unwrap();
    assert_eq!((r.step, r.weight, r.gate), (1, pct(50.0), None));
}

#[test]
fn a_failing_pre_step_gate_fails_the_step_as_a_failed_check_does() {
    let plan = plan(&[GateKind::PreStep]);
    let mut r = Rollout::start(&plan, 0);
    r.tick(&plan, MIN);
    r.apply(&plan, Command::GateFailed, "gate", "503", MIN)
        .unwrap();
    assert_eq!((r.phase, r.weight), (Phase::Aborted, Weight::ZERO));

    let pausing = Plan {
        skip_rollback: true,
        ..plan
    };
    let mut r = Rollout::start(&pausing, 0);
    r.tick(&pausing, MIN);
    r.apply(&pausing, Command::GateFailed, "gate", "503", MIN)
        .unwrap();
    assert_eq!((r.phase, r.weight), (Phase::Paused, pct(10.0)));
    r.apply(&pausing, Command::Resume, "alice", "", 2 * MIN)
        .unwrap();
    assert_eq!(
        (r.phase, r.gate),
        (Phase::Progressing, Some(GateKind::PreStep)),
        "a resume asks the gate again"
    );
}

#[test]
fn a_confirm_promotion_gate_holds_before_the_candidate_gets_everything() {
    let plan = plan(&[GateKind::ConfirmPromotion]);
    let mut r = Rollout::start(&plan, 0);
    r.tick(&plan, MIN);
    assert_eq!(
        (r.weight, r.gate),
        (pct(50.0), None),
        "a widening short of 100% is not held"
    );
    assert!(r.tick(&plan, 2 * MIN));
    assert_eq!(
        (r.weight, r.gate),
        (pct(50.0), Some(GateKind::ConfirmPromotion))
    );
    assert_eq!(r.phase, Phase::Progressing);
    r.apply(&plan, Command::GatePassed, "gate", "200", 3 * MIN)
        .unwrap();
    r.tick(&plan, 3 * MIN);
    assert_eq!((r.phase, r.weight), (Phase::Completed, Weight::FULL));
}

#[test]
fn a_manual_promote_passes_a_holding_gate() {
    let plan = plan(&[GateKind::PreRollout, GateKind::ConfirmPromotion]);
    let mut r = Rollout::start(&plan, 0);
    r.apply(
        &plan,
        Command::Promote,
        "alice",
        "gate is down, I checked",
        1,
    )
    .unwrap();
    assert_eq!(
        (r.step, r.weight, r.gate),
        (0, pct(10.0), None),
        "started at step 0"
    );
    r.tick(&plan, MIN + 1);
    r.tick(&plan, 2 * MIN + 1);
    assert_eq!(r.gate, Some(GateKind::ConfirmPromotion));
    r.apply(&plan, Command::Promote, "alice", "", 3 * MIN)
        .unwrap();
    r.tick(&plan, 3 * MIN);
    assert_eq!(r.phase, Phase::Completed);
}

#[test]
fn pausing_keeps_a_holding_gate_and_abort_clears_it() {
    let plan = plan(&[GateKind::ConfirmPromotion]);
    let mut r = Rollout::start(&plan, 0);
    r.tick(&plan, MIN);
    r.tick(&plan, 2 * MIN);
    r.apply(&plan, Command::Pause, "alice", "", 2 * MIN)
        .unwrap();
    assert_eq!(r.gate, Some(GateKind::ConfirmPromotion));
    assert!(
        r.apply(&plan, Command::GatePassed, "gate", "200", 2 * MIN)
            .is_err(),
        "a paused release does not move on a gate's answer"
    );
    r.apply(&plan, Command::Abort, "alice", "", 2 * MIN)
        .unwrap();
    assert_eq!((r.phase, r.gate), (Phase::Aborted, None));
}

#[test]
fn every_return_to_the_baseline_owes_the_post_rollback_gates_an_answer() {
    let plan = plan(&[GateKind::PostRollback]);
    let mut r = Rollout::start(&plan, 0);
    r.apply(&plan, Command::AnalysisFailed, "analysis", "errors", 1)
        .unwrap();
    assert_eq!(
        (r.phase, r.gate),
        (Phase::Aborted, Some(GateKind::PostRollback))
    );
    r.apply(&plan, Command::GateAnswered, "gate", "200", 2)
        .unwrap();
    assert_eq!((r.phase, r.gate), (Phase::Aborted, None));
    assert!(
        r.apply(&plan, Command::GateAnswered, "gate", "200", 3)
            .is_err()
    );

    r.apply(&plan, Command::Retry, "alice", "", 4).unwrap();
    r.apply(&plan, Command::PromoteFull, "alice", "", 5)
        .unwrap();
    r.apply(&plan, Command::Rollback, "alice", "", 6).unwrap();
    assert_eq!(
        (r.phase, r.gate),
        (Phase::RolledBack, Some(GateKind::PostRollback))
    );
}

#[test]
fn a_release_without_gates_never_waits_on_one() {
    let plan = plan(&[]);
    let mut r = Rollout::start(&plan, 0);
    r.tick(&plan, MIN);
    r.tick(&plan, 2 * MIN);
    assert_eq!((r.phase, r.gate), (Phase::Completed, None));
    r.apply(&plan, Command::Rollback, "alice", "", 3 * MIN)
        .unwrap();
    assert_eq!(r.gate, None);
}
