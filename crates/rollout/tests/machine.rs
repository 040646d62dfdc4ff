//! The release state machine, step by step and under random command sequences.

use std::time::Duration;

use graylane_config::{Pause, Step, Weight};
use graylane_rollout::{Command, CommandError, Kind, Phase, Plan, Rollout};
use proptest::prelude::*;

fn pct(p: f64) -> Weight {
    Weight::from_percent(p).unwrap()
}

/// Mirror 20% for 10 minutes → 5% → 100%.
fn mirror_plan() -> Plan {
    Plan::canary(vec![
        Step {
            weight: Weight::ZERO,
            mirror: Some(pct(20.0)),
            pause: Pause::For(Duration::from_secs(600)),
        },
        Step {
            weight: pct(5.0),
            mirror: None,
            pause: Pause::Manual,
        },
        Step {
            weight: Weight::FULL,
            mirror: None,
            pause: Pause::None,
        },
    ])
}

#[test]
fn a_mirror_step_keeps_every_user_on_the_baseline_and_copies_its_share_to_the_candidate() {
    let plan = mirror_plan();
    let mut r = Rollout::start(&plan, 0);
    let routing = r.routing(&plan);
    assert_eq!(routing.weight_of(plan.candidate), Weight::ZERO);
    assert_eq!(routing.weight_of(plan.baseline), Weight::FULL);
    assert_eq!(routing.mirror, pct(20.0));
    assert_eq!(r.mirror(&plan), Some(pct(20.0)));

    // Paused, the copies go on: the step's traffic is unchanged.
    r.apply(&plan, Command::Pause, "alice", "", MIN).unwrap();
    assert_eq!(r.routing(&plan).mirror, pct(20.0));
    r.apply(&plan, Command::Resume, "alice", "", 2 * MIN)
        .unwrap();

    // The timed pause passes; the next step sends users and stops copying.
    assert!(r.tick(&plan, 11 * MIN));
    let routing = r.routing(&plan);
    assert_eq!((r.step, routing.weight_of(plan.candidate)), (1, pct(5.0)));
    assert_eq!(routing.mirror, Weight::ZERO);
    assert_eq!(r.mirror(&plan), None);
}

#[test]
fn a_mirror_step_is_promoted_aborted_and_overridden_like_any_step() {
    let plan = mirror_plan();
    let mut r = Rollout::start(&plan, 0);
    r.apply(&plan, Command::Promote, "alice", "", MIN).unwrap();
    assert_eq!((r.step, r.routing(&plan).mirror), (1, Weight::ZERO));

    let mut r = Rollout::start(&plan, 0);
    r.apply(&plan, Command::Abort, "analysis", "candidate errors", MIN)
        .unwrap();
    let routing = r.routing(&plan);
    assert_eq!(
        routing.mirror,
        Weight::ZERO,
        "an aborted release copies nothing"
    );
    assert_eq!(routing.weight_of(plan.baseline), Weight::FULL);

    let mut r = Rollout::start(&plan, 0);
    r.apply(&plan, Command::SetWeight(pct(1.0)), "alice", "", MIN)
        .unwrap();
    let routing = r.routing(&plan);
    assert_eq!(routing.weight_of(plan.candidate), pct(1.0));
    assert_eq!(
        routing.mirror,
        Weight::ZERO,
        "set-weight replaces the step's traffic"
    );

    // A retry starts over at the mirror step.
    let mut r = Rollout::start(&plan, 0);
    r.apply(&plan, Command::Abort, "alice", "", MIN).unwrap();
    r.apply(&plan, Command::Retry, "alice", "", 2 * MIN)
        .unwrap();
    assert_eq!(r.routing(&plan).mirror, pct(20.0));
}

/// Test traffic only (manual gate) → 5% for 5 minutes → 20% with no pause → 100%.
fn plan() -> Plan {
    Plan::canary(vec![
        Step {
            weight: Weight::ZERO,
            mirror: None,
            pause: Pause::Manual,
        },
        Step {
            weight: pct(5.0),
            mirror: None,
            pause: Pause::For(Duration::from_secs(300)),
        },
        Step {
            weight: pct(20.0),
            mirror: None,
            pause: Pause::None,
        },
        Step {
            weight: Weight::FULL,
            mirror: None,
            pause: Pause::None,
        },
    ])
}

const MIN: i64 = 60_000;

#[test]
fn a_canary_walks_its_steps_with_manual_and_timed_pauses() {
    let plan = plan();
    let mut r = Rollout::start(&plan, 0);
    assert_eq!(
        (r.phase, r.step, r.weight),
        (Phase::Progressing, 0, Weight::ZERO)
    );
    assert!(
        !r.tick(&plan, 60 * MIN),
        "a manual gate does not pass by itself"
    );
    assert_eq!(r.next_deadline(&plan), None);

    r.apply(&plan, Command::Promote, "alice", "test traffic ok", MIN)
        .unwrap();
    assert_eq!((r.step, r.weight), (1, pct(5.0)));
    assert_eq!(r.next_deadline(&plan), Some(6 * MIN));
    assert!(!r.tick(&plan, 6 * MIN - 1));
    assert!(r.tick(&plan, 6 * MIN));
    // The 20% step has no pause, so the same tick carries on to the last step and completes.
    assert_eq!((r.phase, r.weight), (Phase::Completed, Weight::FULL));
    let whats: Vec<&str> = r.history.iter().map(|t| t.what.as_str()).collect();
    assert_eq!(whats, ["promote", "tick", "tick", "tick"]);
    assert_eq!(r.history[0].actor, "alice");
    assert_eq!(r.history[0].reason, "test traffic ok");
}

#[test]
fn pausing_keeps_the_remaining_time_of_a_timed_pause() {
    let plan = plan();
    let mut r = Rollout::start(&plan, 0);
    r.apply(&plan, Command::Promote, "a", "", 0).unwrap();
    r.apply(&plan, Command::Pause, "a", "looking at a graph", 2 * MIN)
        .unwrap();
    assert_eq!(r.pause_left_ms, Some(3 * MIN));
    assert!(!r.tick(&plan, 100 * MIN), "a paused release does not move");
    r.apply(&plan, Command::Resume, "a", "", 100 * MIN).unwrap();
    assert_eq!(r.next_deadline(&plan), Some(103 * MIN));
    assert!(!r.tick(&plan, 103 * MIN - 1));
    assert!(r.tick(&plan, 103 * MIN));
}

#[test]
fn abort_sends_everything_back_and_retry_starts_over() {
    let plan = plan();
    let mut r = Rollout::start(&plan, 0);
    r.apply(&plan, Command::Promote, "a", "", 0).unwrap();
    r.apply(&plan, Command::Abort, "bob", "errors", 1).unwrap();
    assert_eq!((r.phase, r.weight), (Phase::Aborted, Weight::ZERO));
    assert!(
        !r.tick(&plan, 1_000 * MIN),
        "an aborted release stays aborted"
    );
    r.apply(&plan, Command::Retry, "bob", "fixed", 2).unwrap();
    assert_eq!(
        (r.phase, r.step, r.weight),
        (Phase::Progressing, 0, Weight::ZERO)
    );
}

#[test]
fn a_completed_release_can_be_rolled_back_and_retried() {
    let plan = plan();
    let mut r = Rollout::start(&plan, 0);
    r.apply(&plan, Command::PromoteFull, "a", "", 0).unwrap();
    assert_eq!((r.phase, r.weight), (Phase::Completed, Weight::FULL));
    r.apply(&plan, Command::Rollback, "a", "regression", 1)
        .unwrap();
    assert_eq!((r.phase, r.weight), (Phase::RolledBack, Weight::ZERO));
    r.apply(&plan, Command::Retry, "a", "", 2).unwrap();
    assert_eq!(r.phase, Phase::Progressing);
}

#[test]
fn a_failed_analysis_aborts_or_pauses_with_skip_rollback() {
    let mut plan = plan();
    let mut r = Rollout::start(&plan, 0);
    r.apply(&plan, Command::Promote, "a", "", 0).unwrap();
    r.apply(
        &plan,
        Command::AnalysisFailed,
        "analysis",
        "error rate 9%",
        1,
    )
    .unwrap();
    assert_eq!((r.phase, r.weight), (Phase::Aborted, Weight::ZERO));

    plan.skip_rollback = true;
    let mut r = Rollout::start(&plan, 0);
    r.apply(&plan, Command::Promote, "a", "", 0).unwrap();
    r.apply(
        &plan,
        Command::AnalysisFailed,
        "analysis",
        "error rate 9%",
        1,
    )
    .unwrap();
    assert_eq!((r.phase, r.weight), (Phase::Paused, pct(5.0)));
}

#[test]
fn set_weight_overrides_until_the_next_step() {
    let plan = plan();
    let mut r = Rollout::start(&plan, 0);
    r.apply(&plan, Command::SetWeight(pct(12.5)), "a", "", 0)
        .unwrap();
    assert_eq!((r.weight, r.weight_overridden), (pct(12.5), true));
    r.apply(&plan, Command::Promote, "a", "", 1).unwrap();
    assert_eq!((r.weight, r.weight_overridden), (pct(5.0), false));
}

#[test]
fn a_command_that_makes_no_sense_changes_nothing_and_says_what_would() {
    let plan = plan();
    let mut r = Rollout::start(&plan, 0);
    let before = r.clone();
    let err = r.apply(&plan, Command::Resume, "a", "", 5).unwrap_err();
    assert_eq!(r, before);
    let CommandError::NotAllowed {
        command,
        phase,
        allowed,
    } = err
    else {
        panic!("{err:?}");
    };
    assert_eq!((command, phase), ("resume", "progressing"));
    assert!(
        allowed.contains("pause") && allowed.contains("abort"),
        "{allowed}"
    );
    assert!(r.apply(&plan, Command::Rollback, "a", "", 5).is_err());
    assert!(r.apply(&plan, Command::Retry, "a", "", 5).is_err());
}

#[test]
fn no_command_sends_traffic_back_to_a_version_that_failed() {
    let plan = plan();
    let mut r = Rollout::start(&plan, 0);
    r.apply(&plan, Command::Promote, "a", "", 0).unwrap();
    r.apply(&plan, Command::Abort, "a", "candidate failed", 1)
        .unwrap();
    // Aborted: the candidate failed. Nothing but a deliberate retry gives it traffic again.
    for cmd in [
        Command::Rollback,
        Command::Promote,
        Command::PromoteFull,
        Command::Resume,
        Command::SetWeight(pct(50.0)),
    ] {
        assert!(r.apply(&plan, cmd, "a", "", 2).is_err(), "{cmd:?}");
        assert_eq!(r.routing(&plan).weight_of(plan.candidate), Weight::ZERO);
    }
    // Completed then rolled back: back on the previous stable, and a second rollback is refused
    // rather than flipping to the rolled-back candidate.
    let mut r = Rollout::start(&plan, 0);
    r.apply(&plan, Command::PromoteFull, "a", "", 0).unwrap();
    r.apply(&plan, Command::Rollback, "a", "regression", 1)
        .unwrap();
    assert_eq!(r.routing(&plan).weight_of(plan.baseline), Weight::FULL);
    assert!(r.apply(&plan, Command::Rollback, "a", "", 2).is_err());
    assert_eq!(r.stable(&plan), plan.baseline);
}

#[test]
fn blue_green_switches_everything_at_once_and_back() {
    let plan = Plan {
        kind: Kind::BlueGreen {
            keep_previous_ms: 10 * MIN,
        },
        steps: vec![Step {
            weight: Weight::ZERO,
            mirror: None,
            pause: Pause::Manual,
        }],
        baseline: 0,
        candidate: 1,
        skip_rollback: false,
        adaptive: None,
        gates: Vec::new(),
        gated: false,
    };
    let mut r = Rollout::start(&plan, 0);
    let routing = r.routing(&plan);
    assert_eq!(
        routing.force_to,
        Some(1),
        "test traffic reaches the preview"
    );
    assert_eq!(routing.weight_of(0), Weight::FULL);
    let err = r
        .apply(&plan, Command::SetWeight(pct(10.0)), "a", "", 0)
        .unwrap_err();
    assert!(err.to_string().contains("blue-green"), "{err}");
    r.apply(&plan, Command::Promote, "a", "switch", MIN)
        .unwrap();
    assert_eq!(r.phase, Phase::Completed);
    assert_eq!(r.routing(&plan).weight_of(1), Weight::FULL);
    assert_eq!((r.stable(&plan), r.previous_until_ms), (1, Some(11 * MIN)));
    r.apply(&plan, Command::Rollback, "a", "bad", 2 * MIN)
        .unwrap();
    assert_eq!(r.routing(&plan), graylane_rules::Routing::all_to(0));
    assert_eq!(r.stable(&plan), 0);
}

#[test]
fn an_experiment_completes_with_the_named_winner() {
    let plan = Plan {
        kind: Kind::Experiment {
            variants: vec![
                ("a".to_string(), 0, pct(50.0)),
                ("b".to_string(), 1, pct(50.0)),
            ],
        },
        steps: vec![Step {
            weight: Weight::ZERO,
            mirror: None,
            pause: Pause::Manual,
        }],
        baseline: 0,
        candidate: 1,
        skip_rollback: false,
        adaptive: None,
        gates: Vec::new(),
        gated: false,
    };
    let mut r = Rollout::start(&plan, 0);
    assert_eq!(r.routing(&plan).weight_of(1), pct(50.0));
    let err = r.apply(&plan, Command::Promote, "a", "", 0).unwrap_err();
    assert!(err.to_string().contains("--variant"), "{err}");
    assert!(
        r.apply(&plan, Command::PromoteVariant(7), "a", "", 0)
            .is_err()
    );
    r.apply(&plan, Command::PromoteVariant(0), "a", "a wins", 1)
        .unwrap();
    assert_eq!((r.phase, r.stable(&plan)), (Phase::Completed, 0));
    assert_eq!(r.routing(&plan), graylane_rules::Routing::all_to(0));
    r.apply(&plan, Command::Abort, "a", "", 2).unwrap_err();
    r.apply(&plan, Command::Rollback, "a", "", 2).unwrap();
    r.apply(&plan, Command::Retry, "a", "", 3).unwrap();
    assert_eq!(r.winner, None);
    assert_eq!(r.routing(&plan).weight_of(1), pct(50.0));
}

#[test]
fn with_an_analysis_a_step_moves_on_when_its_pause_is_over_and_the_analysis_passed() {
    let mut plan = plan();
    plan.gated = true;
    let mut r = Rollout::start(&plan, 0);
    r.apply(&plan, Command::Promote, "a", "", 0).unwrap();
    assert!(
        !r.tick(&plan, 6 * MIN),
        "the 5-minute pause is over, the analysis has not passed"
    );
    r.apply(
        &plan,
        Command::AnalysisPassed,
        "analysis",
        "3 passes",
        6 * MIN,
    )
    .unwrap();
    assert!(
        r.apply(&plan, Command::AnalysisPassed, "analysis", "", 6 * MIN)
            .is_err(),
        "once per step"
    );
    assert!(r.tick(&plan, 6 * MIN));
    assert_eq!(
        (r.step, r.weight),
        (2, pct(20.0)),
        "stops at the 20% step for its analysis"
    );
    assert!(!r.analysis_passed, "each step needs its own pass");
    // A pass before the pause is over waits for the pause.
    r.apply(&plan, Command::AnalysisPassed, "analysis", "", 6 * MIN)
        .unwrap();
    assert!(r.tick(&plan, 6 * MIN));
    assert_eq!(
        r.phase,
        Phase::Completed,
        "the 100% step has no baseline traffic to judge: it completes"
    );
    // A manual gate still needs a person, analysis or not.
    let mut r = Rollout::start(&plan, 0);
    r.apply(&plan, Command::AnalysisPassed, "analysis", "", 0)
        .unwrap();
    assert!(!r.tick(&plan, 60 * MIN));
}

fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        Just(Command::Promote),
        Just(Command::PromoteFull),
        (0usize..4).prop_map(Command::PromoteVariant),
        Just(Command::Pause),
        Just(Command::Resume),
        Just(Command::Abort),
        Just(Command::Retry),
        Just(Command::Rollback),
        Just(Command::AnalysisFailed),
        Just(Command::AnalysisPassed),
        (0u32..=100_000).prop_map(|m| Command::SetWeight(Weight::from_milli_percent(m))),
    ]
}

/// The command the API name stands for; an experiment's `promote` names its first variant.
fn by_name(name: &str, plan: &Plan) -> Command {
    match name {
        "promote" => match &plan.kind {
            Kind::Experiment { variants } => Command::PromoteVariant(variants[0].1),
            _ => Command::Promote,
        },
        "promote_full" => Command::PromoteFull,
        "pause" => Command::Pause,
        "resume" => Command::Resume,
        "abort" => Command::Abort,
        "retry" => Command::Retry,
        "rollback" => Command::Rollback,
        "set_weight" => Command::SetWeight(Weight::ZERO),
        other => panic!("unknown command {other}"),
    }
}

fn any_plan() -> impl Strategy<Value = Plan> {
    let steps = proptest::collection::vec(
        (
            0u32..=100_000,
            prop_oneof![Just(0u64), Just(1u64), Just(30u64), Just(u64::MAX)],
            any::<bool>(),
        ),
        1..6,
    )
    .prop_map(|steps| {
        steps
            .iter()
            .map(|(w, p, mirror)| Step {
                weight: Weight::from_milli_percent(if *mirror { 0 } else { *w }),
                mirror: mirror.then(|| Weight::from_milli_percent((*w).max(1_000))),
                pause: match *p {
                    0 => Pause::None,
                    u64::MAX => Pause::Manual,
                    s => Pause::For(Duration::from_secs(s)),
                },
            })
            .collect::<Vec<_>>()
    });
    let kind = prop_oneof![Just(0u8), Just(1u8), Just(2u8),];
    (steps, kind, any::<bool>(), any::<bool>(), 0u32..=100_000).prop_map(
        |(steps, kind, skip_rollback, gated, split)| {
            let manual = vec![Step {
                weight: Weight::ZERO,
                mirror: None,
                pause: Pause::Manual,
            }];
            let (kind, steps) = match kind {
                0 => (Kind::Canary, steps),
                1 => (
                    Kind::BlueGreen {
                        keep_previous_ms: 60_000,
                    },
                    manual,
                ),
                _ => (
                    Kind::Experiment {
                        variants: vec![
                            ("a".to_string(), 0, Weight::from_milli_percent(split)),
                            (
                                "b".to_string(),
                                1,
                                Weight::from_milli_percent(100_000 - split),
                            ),
                        ],
                    },
                    manual,
                ),
            };
            Plan {
                kind,
                steps,
                baseline: 0,
                candidate: 1,
                skip_rollback,
                gated,
                adaptive: None,
                gates: Vec::new(),
            }
        },
    )
}

proptest! {
    #[test]
    fn random_command_sequences_keep_the_invariants(
        plan in any_plan(),
        script in proptest::collection::vec((command(), 0i64..10 * MIN, any::<bool>()), 1..60),
    ) {
        let mut now = 0;
        let mut r = Rollout::start(&plan, now);
        for (cmd, dt, tick) in script {
            now += dt;
            if tick {
                r.tick(&plan, now);
            }
            let before = r.clone();
            match r.apply(&plan, cmd, "prop", "", now) {
                Ok(()) => prop_assert_eq!(r.history.len(), before.history.len() + 1),
                Err(_) => prop_assert_eq!(&r, &before, "a refused command changed the state"),
            }
            prop_assert!(r.weight <= Weight::FULL);
            let routing = r.routing(&plan);
            let total: u32 = routing.shares.iter().map(|s| s.weight.milli_percent()).sum();
            prop_assert_eq!(total, 100_000, "the shares always cover every bucket");
            match r.phase {
                Phase::Aborted | Phase::RolledBack => {
                    prop_assert_eq!(r.weight, Weight::ZERO);
                    prop_assert_eq!(routing.mirror, Weight::ZERO, "a stopped release copies nothing");
                    prop_assert_eq!(routing.weight_of(plan.baseline), Weight::FULL);
                    prop_assert_eq!(routing.force_to, None, "a stopped release forces nothing");
                }
                Phase::Completed => {
                    prop_assert_eq!(r.weight, Weight::FULL);
                    prop_assert_eq!(routing.mirror, Weight::ZERO);
                    prop_assert_eq!(routing.weight_of(r.stable(&plan)), Weight::FULL);
                }
                Phase::Progressing | Phase::Paused if !r.weight_overridden => {
                    prop_assert_eq!(r.weight, plan.steps[r.step].weight);
                    prop_assert_eq!(routing.mirror, plan.steps[r.step].mirror.unwrap_or(Weight::ZERO));
                }
                Phase::Progressing | Phase::Paused => {
                    prop_assert_eq!(routing.mirror, Weight::ZERO, "set-weight overrides a mirror step");
                }
            }
            if cmd == Command::Abort && r.history.len() > before.history.len() {
                prop_assert_eq!((r.phase, r.weight), (Phase::Aborted, Weight::ZERO));
                prop_assert_eq!(routing.weight_of(plan.candidate), Weight::ZERO);
            }
            // Every state has a way out: the first allowed command is accepted.
            let way_out = r.allowed(&plan)[0];
            let mut probe = r.clone();
            prop_assert!(probe.apply(&plan, by_name(way_out, &plan), "prop", "", now).is_ok(), "{:?} stuck", r.phase);
        }
    }
}

#[test]
fn refusals_spell_commands_and_strategies_as_people_type_and_say_them() {
    let canary = plan();
    let mut r = Rollout::start(&canary, 0);
    let err = r.apply(&canary, Command::Resume, "a", "", 5).unwrap_err();
    assert_eq!(
        err.to_string(),
        "`resume` makes no sense for a release that is progressing; \
         allowed now: promote, promote --full, pause, abort, set-weight"
    );
    let one_step = vec![Step {
        weight: Weight::ZERO,
        mirror: None,
        pause: Pause::Manual,
    }];
    let with = |kind| Plan {
        kind,
        steps: one_step.clone(),
        baseline: 0,
        candidate: 1,
        skip_rollback: false,
        adaptive: None,
        gates: Vec::new(),
        gated: false,
    };
    let experiment = with(Kind::Experiment {
        variants: vec![
            ("a".to_string(), 0, pct(50.0)),
            ("b".to_string(), 1, pct(50.0)),
        ],
    });
    let err = Rollout::start(&experiment, 0)
        .apply(&experiment, Command::SetWeight(pct(10.0)), "a", "", 0)
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("`set-weight` does not apply to an experiment release: "),
        "{err}"
    );
    let blue_green = with(Kind::BlueGreen {
        keep_previous_ms: MIN,
    });
    let err = Rollout::start(&blue_green, 0)
        .apply(&blue_green, Command::PromoteVariant(1), "a", "", 0)
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("`promote --variant` does not apply to a blue-green release: "),
        "{err}"
    );
}
