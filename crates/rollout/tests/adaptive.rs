//! `steps: adaptive`: the pure decision of each interval (grow, hold, shrink, the floor, the cap,
//! the exposure budget, `min_pause`, the recent view) and the machine under manual commands
//! meanwhile.

use std::time::Duration;

use graylane_analysis::{CheckResult, CheckSpec, Decision, Sample, Verdict, evaluate};
use graylane_config::{Adaptive, Pause, Step, Weight};
use graylane_rollout::adaptive::decide;
use graylane_rollout::{
    AdaptiveState, Command, Interval, Move, Outcome, Phase, Plan, Rollout, adaptive_moves,
};

const MIN_PAUSE_MS: i64 = 30_000;

fn pct(p: f64) -> Weight {
    Weight::from_percent(p).unwrap()
}

fn bounds(max_bad_requests: Option<u64>) -> Adaptive {
    Adaptive {
        start: pct(1.0),
        max: Weight::FULL,
        grow: 2.0,
        shrink: 0.5,
        min_pause: Duration::from_millis(MIN_PAUSE_MS as u64),
        max_pause: Duration::from_secs(600),
        max_bad_requests,
    }
}

fn interval(outcome: Outcome, candidate_requests: u64) -> Interval {
    Interval {
        outcome,
        proven: false,
        candidate_requests,
        figures: "error_rate: 1.0% [0.5%, 1.5%]".to_string(),
    }
}

/// The decision at `weight`, `since_ms` after the last change, with nothing spent yet.
fn decide_at(b: &Adaptive, weight: f64, since_ms: i64, i: &Interval) -> (Move, String) {
    let mut state = AdaptiveState::new(0);
    decide(b, pct(weight), false, &mut state, i, since_ms)
}

#[test]
fn a_clear_interval_grows_the_weight_by_grow() {
    let (m, why) = decide_at(
        &bounds(None),
        4.0,
        MIN_PAUSE_MS,
        &interval(Outcome::Clear, 100),
    );
    assert_eq!(m, Move::Grow(pct(8.0)));
    assert!(why.contains("4% → 8%"), "{why}");
    assert!(
        why.contains("error_rate: 1.0%"),
        "the figures that caused it: {why}"
    );
}

#[test]
fn growth_is_capped_at_max_and_a_clear_interval_at_max_completes() {
    let b = Adaptive {
        max: pct(50.0),
        ..bounds(None)
    };
    let clear = interval(Outcome::Clear, 100);
    assert_eq!(
        decide_at(&b, 32.0, MIN_PAUSE_MS, &clear).0,
        Move::Grow(pct(50.0))
    );
    assert_eq!(decide_at(&b, 50.0, MIN_PAUSE_MS, &clear).0, Move::Complete);
}

#[test]
fn an_inconclusive_interval_holds() {
    let (m, _) = decide_at(
        &bounds(None),
        4.0,
        MIN_PAUSE_MS,
        &interval(Outcome::Unclear, 100),
    );
    assert_eq!(m, Move::Hold { record: false });
    let (m, _) = decide_at(
        &bounds(None),
        4.0,
        MIN_PAUSE_MS,
        &interval(Outcome::Waiting, 10),
    );
    assert_eq!(m, Move::Hold { record: false });
}

#[test]
fn an_interval_leaning_worse_shrinks_the_weight_but_never_below_start() {
    let worse = interval(Outcome::Worse, 100);
    let (m, why) = decide_at(&bounds(None), 8.0, MIN_PAUSE_MS, &worse);
    assert_eq!(m, Move::Shrink(pct(4.0)));
    assert!(why.contains("leaning worse"), "{why}");
    assert_eq!(
        decide_at(&bounds(None), 1.5, MIN_PAUSE_MS, &worse).0,
        Move::Shrink(pct(1.0)),
        "the floor is `start`"
    );
    let (m, why) = decide_at(&bounds(None), 1.0, MIN_PAUSE_MS, &worse);
    assert_eq!(m, Move::Hold { record: false });
    assert!(why.contains("floor"), "{why}");
}

#[test]
fn the_weight_changes_no_sooner_than_min_pause_after_the_last_change() {
    let b = bounds(None);
    for outcome in [Outcome::Clear, Outcome::Worse] {
        let (m, _) = decide_at(&b, 8.0, MIN_PAUSE_MS - 1, &interval(outcome, 100));
        assert!(matches!(m, Move::Hold { .. }), "{outcome:?}: {m:?}");
    }
    assert_eq!(
        decide_at(&b, 8.0, MIN_PAUSE_MS, &interval(Outcome::Clear, 100)).0,
        Move::Grow(pct(16.0))
    );
}

#[test]
fn a_failed_analysis_stops_at_once_even_within_min_pause() {
    let (m, why) = decide_at(&bounds(None), 8.0, 1, &interval(Outcome::Failed, 100));
    assert_eq!(m, Move::Stop { budget: false });
    assert!(why.contains("analysis failed"), "{why}");
}

#[test]
fn requests_served_while_leaning_worse_are_spent_and_the_spent_budget_stops_the_release() {
    let b = bounds(Some(500));
    let mut state = AdaptiveState::new(0);
    let mut now = 0;
    let mut weight = pct(16.0);
    let mut moves = Vec::new();
    for _ in 0..10 {
        now += MIN_PAUSE_MS;
        let (m, _) = decide(
            &b,
            weight,
            false,
            &mut state,
            &interval(Outcome::Worse, 150),
            now,
        );
        moves.push(m);
        match m {
            Move::Shrink(w) => {
                weight = w;
                state.changed_ms = now;
            }
            Move::Stop { .. } => break,
            _ => {}
        }
    }
    assert_eq!(moves[0], Move::Shrink(pct(8.0)));
    assert_eq!(
        *moves.last().unwrap(),
        Move::Stop { budget: true },
        "{moves:?}"
    );
    assert!(state.spent <= 500 + 150, "spent {}", state.spent);
    // Clear and inconclusive intervals spend nothing.
    let mut state = AdaptiveState::new(0);
    for outcome in [Outcome::Clear, Outcome::Unclear, Outcome::Waiting] {
        decide(
            &b,
            weight,
            false,
            &mut state,
            &interval(outcome, 150),
            MIN_PAUSE_MS,
        );
    }
    assert_eq!(state.spent, 0);
}

#[test]
fn the_floor_stops_before_an_interval_that_would_overspend_the_budget() {
    let b = bounds(Some(500));
    let mut state = AdaptiveState {
        spent: 400,
        ..AdaptiveState::new(0)
    };
    let (m, why) = decide(
        &b,
        pct(1.0),
        false,
        &mut state,
        &interval(Outcome::Worse, 60),
        1,
    );
    assert_eq!(state.spent, 460);
    assert_eq!(
        m,
        Move::Stop { budget: true },
        "only 40 left for ~60: {why}"
    );
}

#[test]
fn an_inconclusive_interval_shrinks_when_the_budget_left_would_not_cover_the_next_one() {
    let b = bounds(Some(500));
    let mut state = AdaptiveState {
        spent: 450,
        ..AdaptiveState::new(0)
    };
    let (m, why) = decide(
        &b,
        pct(8.0),
        false,
        &mut state,
        &interval(Outcome::Unclear, 120),
        MIN_PAUSE_MS,
    );
    assert_eq!(m, Move::Shrink(pct(4.0)), "{why}");
    assert!(why.contains("exposure budget"), "{why}");
}

#[test]
fn without_a_conclusive_verdict_for_max_pause_the_release_holds_and_says_so_once() {
    let b = bounds(None);
    let mut state = AdaptiveState::new(0);
    let unclear = interval(Outcome::Unclear, 10);
    let (m, why) = decide(&b, pct(4.0), false, &mut state, &unclear, 600_000);
    assert_eq!(m, Move::Hold { record: true });
    assert!(why.contains("max_pause"), "{why}");
    let (m, _) = decide(&b, pct(4.0), false, &mut state, &unclear, 630_000);
    assert_eq!(m, Move::Hold { record: false });
}

fn adaptive_plan(max_bad_requests: Option<u64>) -> Plan {
    Plan {
        gated: true,
        adaptive: Some(bounds(max_bad_requests)),
        ..Plan::canary(vec![Step {
            weight: pct(1.0),
            mirror: None,
            pause: Pause::Manual,
        }])
    }
}

#[test]
fn a_healthy_adaptive_release_doubles_each_clear_interval_to_completion_with_recorded_figures() {
    let plan = adaptive_plan(None);
    let mut r = Rollout::start(&plan, 0);
    let mut path = vec![r.weight.percent()];
    let mut now = 0;
    while r.phase == Phase::Progressing && now < 3_600_000 {
        now += MIN_PAUSE_MS;
        assert!(
            !r.tick(&plan, now),
            "time alone never moves an adaptive release"
        );
        if r.adapt(&plan, &interval(Outcome::Clear, 100), now) {
            path.push(r.weight.percent());
        }
    }
    assert_eq!(r.phase, Phase::Completed);
    assert_eq!(path, [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 100.0]);
    let grow = r
        .history
        .iter()
        .find(|t| t.what == adaptive_moves::GROW)
        .unwrap();
    assert_eq!((grow.actor.as_str(), grow.weight), ("analysis", pct(2.0)));
    assert!(grow.reason.contains("error_rate: 1.0%"), "{}", grow.reason);
}

#[test]
fn pause_freezes_the_adaptive_pace_and_resume_picks_it_up() {
    let plan = adaptive_plan(None);
    let mut r = Rollout::start(&plan, 0);
    r.apply(&plan, Command::Pause, "alice", "", 1_000).unwrap();
    assert!(!r.adapt(&plan, &interval(Outcome::Clear, 100), 60_000));
    assert_eq!(r.weight, pct(1.0));
    r.apply(&plan, Command::Resume, "alice", "", 61_000)
        .unwrap();
    assert!(r.adapt(&plan, &interval(Outcome::Clear, 100), 90_000));
    assert_eq!(r.weight, pct(2.0));
}

#[test]
fn set_weight_overrides_the_adaptive_pace_until_resume() {
    let plan = adaptive_plan(Some(500));
    let mut r = Rollout::start(&plan, 0);
    r.apply(&plan, Command::SetWeight(pct(10.0)), "alice", "", 1_000)
        .unwrap();
    assert!(r.allowed(&plan).contains(&"resume"));
    assert!(!r.adapt(&plan, &interval(Outcome::Clear, 100), 60_000));
    assert_eq!(r.weight, pct(10.0), "held while set by hand");
    r.apply(
        &plan,
        Command::Resume,
        "alice",
        "back to the analysis",
        61_000,
    )
    .unwrap();
    assert!(!r.weight_overridden);
    assert!(r.adapt(&plan, &interval(Outcome::Clear, 100), 91_000));
    assert_eq!(r.weight, pct(20.0), "grows from the weight set by hand");
}

#[test]
fn the_budget_still_stops_a_release_whose_weight_was_set_by_hand() {
    let plan = adaptive_plan(Some(100));
    let mut r = Rollout::start(&plan, 0);
    r.apply(&plan, Command::SetWeight(pct(10.0)), "alice", "", 1_000)
        .unwrap();
    assert!(r.adapt(&plan, &interval(Outcome::Worse, 150), 2_000));
    assert_eq!((r.phase, r.weight), (Phase::Aborted, Weight::ZERO));
    let last = r.history.last().unwrap();
    assert_eq!(last.what, adaptive_moves::BUDGET_SPENT);
    assert!(
        last.reason.contains("max_bad_requests 100"),
        "{}",
        last.reason
    );
}

#[test]
fn promote_jumps_to_max_then_completes_and_abort_and_retry_start_over() {
    let plan = Plan {
        adaptive: Some(Adaptive {
            max: pct(50.0),
            ..bounds(None)
        }),
        ..adaptive_plan(None)
    };
    let mut r = Rollout::start(&plan, 0);
    r.apply(&plan, Command::Promote, "alice", "", 1_000)
        .unwrap();
    assert_eq!((r.phase, r.weight), (Phase::Progressing, pct(50.0)));
    r.apply(&plan, Command::Promote, "alice", "", 2_000)
        .unwrap();
    assert_eq!((r.phase, r.weight), (Phase::Completed, Weight::FULL));
    r.apply(&plan, Command::Rollback, "alice", "", 3_000)
        .unwrap();
    r.apply(&plan, Command::Retry, "alice", "", 4_000).unwrap();
    assert_eq!((r.phase, r.weight), (Phase::Progressing, pct(1.0)));
    assert_eq!(r.adaptive.unwrap().spent, 0);
    r.apply(&plan, Command::Abort, "alice", "", 5_000).unwrap();
    assert_eq!((r.phase, r.weight), (Phase::Aborted, Weight::ZERO));
}

#[test]
fn a_failed_analysis_pauses_an_adaptive_release_with_on_failure_pause() {
    let plan = Plan {
        skip_rollback: true,
        ..adaptive_plan(None)
    };
    let mut r = Rollout::start(&plan, 0);
    assert!(r.adapt(&plan, &interval(Outcome::Failed, 100), 1_000));
    assert_eq!((r.phase, r.weight), (Phase::Paused, pct(1.0)));
    assert_eq!(r.history.last().unwrap().what, "analysis_failed");
}

/// An error-rate check (at most 2 points above the baseline) judged on `requests` of each
/// version with these error counts, as the analysis judges a window.
fn error_rate(requests: u64, candidate_errors: u64, baseline_errors: u64) -> CheckResult {
    let sample = |errors| Sample {
        requests,
        errors,
        seconds: 60.0,
        ..Sample::default()
    };
    let spec = CheckSpec::ErrorRate {
        max: None,
        max_increase: Some(0.02),
    };
    evaluate(
        &spec,
        &sample(candidate_errors),
        &sample(baseline_errors),
        200,
        0.05,
    )
}

#[test]
fn a_regression_in_the_data_since_the_weight_last_changed_leans_worse_however_clear_the_whole_release_is()
 {
    // The release's data is clear (1% against 1% over 20,000 requests), but since the last
    // growth the candidate fails 6% of 2,000 requests: it is new at this weight.
    let release = [error_rate(20_000, 200, 200)];
    assert_eq!(release[0].verdict, Verdict::Pass);
    let recent = [error_rate(2_000, 120, 20)];
    let i = Interval::judged(&Decision::Promote, &release, &recent, 2_000);
    assert_eq!(i.outcome, Outcome::Worse);
    assert!(!i.proven);
    assert!(
        i.figures
            .contains("since the weight last changed: error_rate"),
        "the recent figures that caused it: {}",
        i.figures
    );
    let (m, why) = decide_at(&bounds(Some(500)), 32.0, MIN_PAUSE_MS, &i);
    assert_eq!(m, Move::Stop { budget: true }, "{why}");
    let (m, _) = decide_at(&bounds(None), 32.0, MIN_PAUSE_MS, &i);
    assert_eq!(m, Move::Shrink(pct(16.0)));
}

#[test]
fn a_clear_release_also_clear_since_the_weight_last_changed_is_proven_and_grows_by_grow_squared() {
    let clear = [error_rate(20_000, 200, 200)];
    let i = Interval::judged(&Decision::Promote, &clear, &clear, 2_000);
    assert_eq!((i.outcome, i.proven), (Outcome::Clear, true));
    let (m, why) = decide_at(&bounds(None), 4.0, MIN_PAUSE_MS, &i);
    assert_eq!(m, Move::Grow(pct(16.0)));
    assert!(
        why.contains("4% → 16% (grow 2², proven at this weight"),
        "{why}"
    );

    // Too little data since the change to judge: growth as usual.
    let unjudged = [error_rate(50, 0, 0)];
    assert!(!unjudged[0].enough_data);
    let i = Interval::judged(&Decision::Promote, &clear, &unjudged, 50);
    assert_eq!((i.outcome, i.proven), (Outcome::Clear, false));
    assert_eq!(
        decide_at(&bounds(None), 4.0, MIN_PAUSE_MS, &i).0,
        Move::Grow(pct(8.0))
    );
}

#[test]
fn a_clear_interval_that_would_grow_to_100_percent_completes_at_once() {
    let (m, why) = decide_at(
        &bounds(None),
        64.0,
        MIN_PAUSE_MS,
        &interval(Outcome::Clear, 100),
    );
    assert_eq!(m, Move::Complete);
    assert!(why.contains("64% → 100%, complete"), "{why}");
}

/// A clear interval whose data since the weight last changed is clear on its own too.
fn proven() -> Interval {
    Interval {
        proven: true,
        ..interval(Outcome::Clear, 100)
    }
}

/// Drives an adaptive release one interval per `min_pause` with a candidate that is clear (and
/// proven) below 30% and leans worse from 30% up, as a regression under load does, until it
/// stops or an hour has passed; returns the weights it took.
fn drive_under_load(plan: &Plan, r: &mut Rollout, now: &mut i64) -> Vec<f64> {
    let mut path = vec![r.weight.percent()];
    let end = *now + 3_600_000;
    while r.phase == Phase::Progressing && *now < end {
        *now += MIN_PAUSE_MS;
        let i = if r.weight.percent() >= 30.0 {
            interval(Outcome::Worse, 1_000)
        } else {
            proven()
        };
        let before = r.weight;
        r.adapt(plan, &i, *now);
        if r.weight != before {
            path.push(r.weight.percent());
        }
    }
    path
}

#[test]
fn growth_stays_below_the_weight_where_the_candidate_leaned_worse_and_the_hold_says_why() {
    let b = bounds(None);
    let mut state = AdaptiveState {
        ceiling: Some(pct(32.0)),
        ..AdaptiveState::new(0)
    };
    // Proven at 8%: grow² would reach 32%; one growth stays below it.
    let (m, why) = decide(&b, pct(8.0), false, &mut state, &proven(), MIN_PAUSE_MS);
    assert_eq!(m, Move::Grow(pct(16.0)), "{why}");
    assert!(
        why.contains("held below 32%, where it leaned worse"),
        "{why}"
    );
    // At 16% any growth reaches it: hold, recorded once.
    let mut state = AdaptiveState {
        ceiling: Some(pct(32.0)),
        ..AdaptiveState::new(0)
    };
    let (m, why) = decide(
        &b,
        pct(16.0),
        false,
        &mut state,
        &interval(Outcome::Clear, 100),
        MIN_PAUSE_MS,
    );
    assert_eq!(m, Move::Hold { record: true });
    assert!(
        why.contains("held below 32%, where it leaned worse"),
        "{why}"
    );
    let (m, _) = decide(
        &b,
        pct(16.0),
        false,
        &mut state,
        &interval(Outcome::Clear, 100),
        2 * MIN_PAUSE_MS,
    );
    assert_eq!(m, Move::Hold { record: false }, "said once");
}

#[test]
fn a_candidate_bad_only_under_load_without_a_budget_stops_the_second_time_it_leans_worse_there() {
    let plan = adaptive_plan(None);
    let mut r = Rollout::start(&plan, 0);
    let mut now = 0;
    let path = drive_under_load(&plan, &mut r, &mut now);
    // 64% and 32% lean worse; 32% is the ceiling; proven twice at 16% it goes back once.
    assert_eq!(
        path,
        [1.0, 4.0, 16.0, 64.0, 32.0, 16.0, 32.0, 0.0],
        "no flapping"
    );
    assert_eq!(r.phase, Phase::Aborted);
    let hold = r
        .history
        .iter()
        .find(|t| t.what == adaptive_moves::HOLD)
        .expect("the capped growth is recorded");
    assert_eq!(hold.weight, pct(16.0));
    assert!(
        hold.reason
            .contains("held below 32%, where it leaned worse"),
        "{}",
        hold.reason
    );
    let back = &r.history[r.history.len() - 2];
    assert!(
        back.reason
            .contains("back to 32%, where it leaned worse, after 2 intervals proven at 16%"),
        "{}",
        back.reason
    );
    let last = r.history.last().unwrap();
    assert_eq!(last.what, adaptive_moves::WORSE_AGAIN);
    assert!(
        last.reason.contains("leaning worse again at 32%"),
        "{}",
        last.reason
    );

    // With `on_failure: pause` it pauses there instead.
    let pausing = Plan {
        skip_rollback: true,
        ..adaptive_plan(None)
    };
    let mut r = Rollout::start(&pausing, 0);
    let mut now = 0;
    drive_under_load(&pausing, &mut r, &mut now);
    assert_eq!((r.phase, r.weight), (Phase::Paused, pct(32.0)));
}

#[test]
fn a_candidate_proven_at_its_ceiling_has_it_lifted_and_completes() {
    let plan = adaptive_plan(None);
    let mut r = Rollout::start(&plan, 0);
    let mut now = 0;
    // One unlucky interval at 16%, then a healthy candidate.
    r.weight = pct(16.0);
    let mut worse_once = true;
    let mut path = vec![16.0];
    while r.phase == Phase::Progressing && now < 3_600_000 {
        now += MIN_PAUSE_MS;
        let i = if std::mem::take(&mut worse_once) {
            interval(Outcome::Worse, 500)
        } else {
            proven()
        };
        if r.adapt(&plan, &i, now) && path.last() != Some(&r.weight.percent()) {
            path.push(r.weight.percent());
        }
    }
    assert_eq!(r.phase, Phase::Completed);
    assert_eq!(path, [16.0, 8.0, 16.0, 64.0, 100.0]);
    assert!(
        r.history
            .iter()
            .any(|t| t.reason.contains("proven at 16% where it had leaned worse")),
        "{:?}",
        r.history
    );
}

#[test]
fn the_ceiling_survives_storing_the_release_and_an_older_stored_state_still_reads() {
    let plan = adaptive_plan(None);
    let mut r = Rollout::start(&plan, 0);
    r.weight = pct(32.0);
    r.adapt(&plan, &interval(Outcome::Worse, 1_000), MIN_PAUSE_MS);
    assert_eq!(r.weight, pct(16.0));
    // A restart, or another controller taking the lead, reads it back from the store.
    let stored = serde_json::to_string(&r).unwrap();
    let mut back: Rollout = serde_json::from_str(&stored).unwrap();
    assert_eq!(back, r);
    assert_eq!(back.adaptive.unwrap().ceiling, Some(pct(32.0)));
    back.adapt(&plan, &interval(Outcome::Clear, 100), 2 * MIN_PAUSE_MS);
    assert_eq!(back.weight, pct(16.0), "still held below 32%");

    // A state stored before the ceiling existed has none.
    let old = r#"{"phase":"progressing","step":0,"weight":16000,"weight_overridden":false,
        "step_started_ms":0,"pause_left_ms":null,"winner":null,"previous_until_ms":null,
        "analysis_passed":false,
        "adaptive":{"changed_ms":0,"spent":0,"last_requests":100,"held_noted":false},
        "history":[]}"#;
    let old: Rollout = serde_json::from_str(old).unwrap();
    let state = old.adaptive.unwrap();
    assert_eq!(
        (state.ceiling, state.proven, state.retried),
        (None, 0, false)
    );
}
