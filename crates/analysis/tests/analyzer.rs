//! The decider's transitions: hold, pause, fail (in a row or in total), promote, reset.

use std::time::Duration;

use graylane_analysis::check::Figures;
use graylane_analysis::{Analyzer, CheckResult, Decision, FailureMode, Judgement, Policy, Verdict};

fn result(check: &str, verdict: Verdict, enough_data: bool) -> CheckResult {
    CheckResult {
        check: check.into(),
        verdict,
        enough_data,
        reason: format!("{check} reason"),
        figures: Figures::default(),
    }
}

fn pass() -> Vec<CheckResult> {
    vec![
        result("error_rate", Verdict::Pass, true),
        result("latency_p99", Verdict::Pass, true),
    ]
}

fn fail() -> Vec<CheckResult> {
    vec![
        result("error_rate", Verdict::Fail, true),
        result("latency_p99", Verdict::Pass, true),
    ]
}

fn unclear() -> Vec<CheckResult> {
    vec![
        result("error_rate", Verdict::Pass, true),
        result("latency_p99", Verdict::Inconclusive, true),
    ]
}

fn no_data() -> Vec<CheckResult> {
    vec![
        CheckResult {
            reason: "not enough data: 37 of 200 requests (candidate)".into(),
            ..result("error_rate", Verdict::Inconclusive, false)
        },
        result("latency_p99", Verdict::Inconclusive, false),
    ]
}

fn policy() -> Policy {
    Policy {
        min_requests: 200,
        failure_limit: 2,
        failure_mode: FailureMode::Consecutive,
        success_needed: 3,
        max_wait_without_data: Some(Duration::from_secs(300)),
        alpha: 0.05,
    }
}

/// Feeds one interval per 30 s from `start_ms` and returns the decisions.
fn run(a: &mut Analyzer, start_ms: u64, intervals: &[Vec<CheckResult>]) -> Vec<Decision> {
    intervals
        .iter()
        .enumerate()
        .map(|(i, r)| a.judge(start_ms + 30_000 * (i as u64 + 1), r))
        .collect()
}

fn is_hold(d: &Decision) -> bool {
    matches!(d, Decision::Hold { .. })
}

#[test]
fn holds_without_data_then_pauses_after_max_wait() {
    let mut a = Analyzer::new(policy());
    a.step_started(1_000_000);
    // 30 s … 270 s: hold, and say why.
    let decisions = run(&mut a, 1_000_000, &vec![no_data(); 9]);
    assert!(decisions.iter().all(is_hold), "{decisions:?}");
    let Decision::Hold { reason } = &decisions[0] else {
        unreachable!()
    };
    assert!(
        reason.starts_with("error_rate: not enough data: 37 of 200 requests (candidate)"),
        "{reason}"
    );
    // 300 s: max_wait_without_data reached.
    let d = a.judge(1_300_000, &no_data());
    let Decision::Pause { reason } = d else {
        panic!("{d:?}")
    };
    assert!(
        reason.starts_with("still not enough data after 300s (max_wait_without_data 300s)"),
        "{reason}"
    );
    // Data arrives: judging resumes.
    assert_eq!(a.judge(1_330_000, &pass()), Decision::Continue);
}

#[test]
fn without_a_wait_limit_it_holds_for_ever() {
    let mut a = Analyzer::new(Policy {
        max_wait_without_data: None,
        ..policy()
    });
    let decisions = run(&mut a, 0, &vec![no_data(); 1000]);
    assert!(decisions.iter().all(is_hold));
}

#[test]
fn not_enough_data_never_fails_nor_promotes() {
    let mut a = Analyzer::new(Policy {
        failure_limit: 1,
        success_needed: 1,
        ..policy()
    });
    a.step_started(0);
    // Inconclusive for lack of data, whatever else they say.
    let decisions = run(&mut a, 0, &vec![no_data(); 5]);
    assert!(decisions.iter().all(is_hold));
    // A check that has data and fails still counts while another waits.
    let mixed = vec![
        result("error_rate", Verdict::Fail, true),
        result("event_rate:x", Verdict::Inconclusive, false),
    ];
    assert!(matches!(a.judge(200_000, &mixed), Decision::Fail { .. }));
}

#[test]
fn fails_after_failure_limit_in_a_row() {
    let mut a = Analyzer::new(policy());
    a.step_started(0);
    // A pass between two failures starts the count over.
    let d = run(&mut a, 0, &[fail(), pass(), fail()]);
    assert_eq!(d, vec![Decision::Continue; 3]);
    // An inconclusive interval does not: fail, unclear, fail is two in a row.
    let d = run(&mut a, 90_000, &[unclear(), no_data(), fail()]);
    let Decision::Fail { reason } = &d[2] else {
        panic!("{d:?}")
    };
    assert_eq!(
        reason,
        "2 failed intervals in a row (failure_limit 2): error_rate: error_rate reason"
    );
    assert_eq!(a.last().unwrap().failures, 2);
}

#[test]
fn fails_after_failure_limit_in_total() {
    let mut a = Analyzer::new(Policy {
        failure_mode: FailureMode::Total,
        failure_limit: 3,
        ..policy()
    });
    a.step_started(0);
    let d = run(
        &mut a,
        0,
        &[fail(), pass(), pass(), fail(), unclear(), pass()],
    );
    assert!(
        d.iter().all(|d| !matches!(d, Decision::Fail { .. })),
        "{d:?}"
    );
    let d = a.judge(999_000, &fail());
    let Decision::Fail { reason } = d else {
        panic!("{d:?}")
    };
    assert!(
        reason.starts_with("3 failed intervals at this step (failure_limit 3)"),
        "{reason}"
    );
}

#[test]
fn promotes_after_success_needed_passes_in_a_row() {
    let mut a = Analyzer::new(policy());
    a.step_started(0);
    let d = run(
        &mut a,
        0,
        &[pass(), pass(), unclear(), pass(), pass(), pass()],
    );
    assert_eq!(
        d,
        vec![
            Decision::Continue,
            Decision::Continue,
            Decision::Continue, // breaks the run of passes
            Decision::Continue,
            Decision::Continue,
            Decision::Promote,
        ]
    );
    assert_eq!(a.last().unwrap().passes, 3);
    // A failure also breaks it.
    let mut a = Analyzer::new(policy());
    let d = run(&mut a, 0, &[pass(), pass(), fail(), pass(), pass(), pass()]);
    assert_eq!(d.last(), Some(&Decision::Promote));
    assert_eq!(d.iter().filter(|d| **d == Decision::Promote).count(), 1);
}

#[test]
fn step_started_resets_counters_and_the_wait() {
    let mut a = Analyzer::new(policy());
    a.step_started(0);
    run(&mut a, 0, &[pass(), pass(), fail()]);
    a.step_started(100_000);
    // The earlier failure is forgotten: one more is not two in a row.
    assert_eq!(a.judge(130_000, &fail()), Decision::Continue);
    a.step_started(200_000);
    let d = run(&mut a, 200_000, &[pass(), pass()]);
    assert_eq!(d, vec![Decision::Continue; 2]);
    assert_eq!(a.judge(290_000, &pass()), Decision::Promote);
    // The wait for data counts from the new step.
    a.step_started(1_000_000);
    assert!(is_hold(&a.judge(1_290_000, &no_data())));
    assert!(matches!(
        a.judge(1_300_000, &no_data()),
        Decision::Pause { .. }
    ));
}

#[test]
fn no_checks_and_odd_policies() {
    let mut a = Analyzer::new(policy());
    assert_eq!(a.judge(0, &[]), Decision::Continue);
    // Limits of 0 behave as 1.
    let mut a = Analyzer::new(Policy {
        failure_limit: 0,
        success_needed: 0,
        ..policy()
    });
    assert_eq!(a.judge(0, &pass()), Decision::Promote);
    assert!(matches!(a.judge(1, &fail()), Decision::Fail { .. }));
    // Time going backwards does not underflow the wait.
    let mut a = Analyzer::new(policy());
    a.step_started(1_000_000);
    assert!(is_hold(&a.judge(0, &no_data())));
}

#[test]
fn judgements_are_recorded_and_serialize() {
    let mut a = Analyzer::new(policy());
    assert!(a.last().is_none());
    a.step_started(0);
    a.judge(30_000, &fail());
    let j = a.last().unwrap().clone();
    assert_eq!((j.at_ms, j.passes, j.failures), (30_000, 0, 1));
    assert_eq!(j.results, fail());
    assert_eq!(j.decision, Decision::Continue);
    let json = serde_json::to_value(&j).unwrap();
    assert_eq!(
        json["decision"],
        serde_json::json!({ "decision": "continue" })
    );
    assert_eq!(json["results"][0]["verdict"], "fail");
    let back: Judgement = serde_json::from_value(json).unwrap();
    assert_eq!(back, j);
    let fail = Decision::Fail { reason: "r".into() };
    assert_eq!(
        serde_json::to_value(&fail).unwrap(),
        serde_json::json!({ "decision": "fail", "reason": "r" })
    );
    assert_eq!(a.policy(), &policy());
}
