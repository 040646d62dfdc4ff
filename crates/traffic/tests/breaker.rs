//! Circuit breaker behaviour against resilience4j's semantics, on a simulated clock.

use std::time::Duration;

use graylane_traffic::breaker::{
    BreakerConfig, CircuitBreaker, Open, Outcome, State, Transition, Window,
};

const S: u64 = 1_000_000_000;
const MS: u64 = 1_000_000;

const OK: Outcome = Outcome {
    failed: false,
    duration: Duration::from_millis(10),
};
const FAIL: Outcome = Outcome {
    failed: true,
    duration: Duration::from_millis(10),
};

fn breaker(config: BreakerConfig) -> CircuitBreaker {
    CircuitBreaker::new(config).expect("valid config")
}

fn count(n: u32, minimum_calls: u32) -> BreakerConfig {
    BreakerConfig {
        window: Window::Count(n),
        minimum_calls,
        failure_rate_threshold: 0.5,
        open_for: Duration::from_secs(10),
        half_open_calls: 3,
        ..BreakerConfig::default()
    }
}

/// Makes `n` calls at `now`, each with `outcome`; panics if one is refused.
fn calls(b: &CircuitBreaker, now: u64, n: usize, outcome: Outcome) {
    for _ in 0..n {
        b.try_call(now)
            .expect("call permitted")
            .record(now, outcome);
    }
}

/// An open breaker (opened at `t = 0`) with `count(20, 10)` settings.
fn opened() -> CircuitBreaker {
    let b = breaker(count(20, 10));
    calls(&b, 0, 10, FAIL);
    assert_eq!(b.state(), State::Open);
    b
}

#[test]
fn waits_for_minimum_calls() {
    let b = breaker(count(20, 10));
    calls(&b, 0, 9, FAIL);
    // 9 of 9 failed, but fewer than 10 calls: not evaluated yet.
    assert_eq!(b.state(), State::Closed);
    calls(&b, 0, 1, OK);
    // 9 of 10 failed.
    assert_eq!(b.state(), State::Open);
    assert_eq!(b.transitions(), 1);
    assert_eq!(
        b.last_transition(),
        Some(Transition {
            from: State::Closed,
            to: State::Open,
            at_nanos: 0
        })
    );
}

#[test]
fn opens_when_the_failure_rate_reaches_the_threshold() {
    let b = breaker(count(20, 10));
    calls(&b, 0, 6, OK);
    calls(&b, 0, 4, FAIL);
    assert_eq!(b.state(), State::Closed); // 4 / 10
    calls(&b, 0, 1, FAIL);
    assert_eq!(b.state(), State::Closed); // 5 / 11
    calls(&b, 0, 1, FAIL);
    assert_eq!(b.state(), State::Open); // 6 / 12 = 0.5, and the threshold is inclusive
    let snap = b.snapshot(0);
    assert_eq!((snap.calls, snap.failed_calls), (12, 6));
    assert_eq!(snap.failure_rate, 0.5);
}

#[test]
fn thresholds_compare_as_rates() {
    // 3 / 10 is exactly 0.3, though 0.3 × 10 rounds to slightly more than 3 in floating point.
    let b = breaker(BreakerConfig {
        failure_rate_threshold: 0.3,
        ..count(10, 10)
    });
    calls(&b, 0, 7, OK);
    calls(&b, 0, 3, FAIL);
    assert_eq!(b.state(), State::Open);
}

#[test]
fn minimum_is_capped_by_a_count_window() {
    // resilience4j: a window of 5 can never hold 100 calls, so 5 is enough.
    let b = breaker(count(5, 100));
    calls(&b, 0, 5, FAIL);
    assert_eq!(b.state(), State::Open);
}

#[test]
fn count_window_forgets_the_oldest_calls() {
    let b = breaker(count(10, 10));
    calls(&b, 0, 4, FAIL);
    calls(&b, 0, 100, OK);
    calls(&b, 0, 4, FAIL);
    assert_eq!(b.state(), State::Closed);
    let snap = b.snapshot(0);
    assert_eq!((snap.calls, snap.failed_calls), (10, 4));
    calls(&b, 0, 1, FAIL);
    assert_eq!(b.state(), State::Open);
}

#[test]
fn slow_calls_open_it() {
    let b = breaker(BreakerConfig {
        slow_call_duration: Some(Duration::from_millis(100)),
        slow_call_rate_threshold: 0.5,
        ..count(10, 4)
    });
    let slow = Outcome {
        failed: false,
        duration: Duration::from_millis(250),
    };
    let at_threshold = Outcome {
        failed: false,
        duration: Duration::from_millis(100),
    };
    // Exactly the threshold is not slow (resilience4j: `duration > threshold`).
    calls(&b, 0, 2, at_threshold);
    calls(&b, 0, 1, slow);
    assert_eq!(b.state(), State::Closed);
    let snap = b.snapshot(0);
    assert_eq!((snap.calls, snap.slow_calls, snap.failed_calls), (3, 1, 0));
    calls(&b, 0, 1, slow);
    assert_eq!(b.state(), State::Open); // 2 of 4 slow, no failures
    assert_eq!(b.snapshot(0).slow_call_rate, 0.5);
}

#[test]
fn slow_failures_count_in_both_rates() {
    let b = breaker(BreakerConfig {
        slow_call_duration: Some(Duration::from_millis(100)),
        slow_call_rate_threshold: 1.0,
        failure_rate_threshold: 1.0,
        ..count(10, 2)
    });
    let slow_failure = Outcome {
        failed: true,
        duration: Duration::from_secs(1),
    };
    calls(&b, 0, 1, slow_failure);
    let snap = b.snapshot(0);
    assert_eq!((snap.failed_calls, snap.slow_calls), (1, 1));
}

#[test]
fn open_refuses_with_the_time_left_then_goes_half_open() {
    let b = opened();
    assert_eq!(
        b.try_call(4 * S).unwrap_err(),
        Open {
            retry_after: Duration::from_secs(6)
        }
    );
    assert_eq!(
        b.try_call(10 * S - 1).unwrap_err().retry_after,
        Duration::from_nanos(1)
    );
    // The state stays Open until a call comes (no automatic transition).
    assert_eq!(b.state(), State::Open);
    let trial = b.try_call(10 * S).expect("first trial");
    assert_eq!(b.state(), State::HalfOpen);
    assert_eq!(b.transitions(), 2);
    assert_eq!(
        b.last_transition(),
        Some(Transition {
            from: State::Open,
            to: State::HalfOpen,
            at_nanos: 10 * S
        })
    );
    drop(trial);
}

#[test]
fn half_open_permits_exactly_the_trial_calls() {
    let b = opened();
    let trials: Vec<_> = (0..3).map(|_| b.try_call(10 * S).expect("trial")).collect();
    let refused = b.try_call(10 * S).unwrap_err();
    assert_eq!(refused.retry_after, Duration::from_secs(1));
    assert!(b.try_call(20 * S).is_err());
    assert_eq!(b.state(), State::HalfOpen);
    drop(trials);
}

#[test]
fn successful_trials_close_it_with_an_empty_window() {
    let b = opened();
    let trials: Vec<_> = (0..3).map(|_| b.try_call(10 * S).expect("trial")).collect();
    let mut trials = trials.into_iter();
    trials.next().unwrap().record(10 * S, OK);
    // One failed trial of three is below the 50% threshold.
    trials.next().unwrap().record(10 * S, FAIL);
    assert_eq!(b.state(), State::HalfOpen);
    let snap = b.snapshot(10 * S);
    assert_eq!((snap.calls, snap.failed_calls), (2, 1));
    trials.next().unwrap().record(11 * S, OK);
    assert_eq!(b.state(), State::Closed);
    assert_eq!(b.transitions(), 3);
    assert_eq!(b.last_transition().map(|t| t.to), Some(State::Closed));
    assert_eq!(b.snapshot(11 * S).calls, 0);
    // A fresh window: it takes the minimum number of calls again to open.
    calls(&b, 11 * S, 9, FAIL);
    assert_eq!(b.state(), State::Closed);
}

#[test]
fn failed_trials_reopen_it() {
    let b = opened();
    let trials: Vec<_> = (0..3).map(|_| b.try_call(10 * S).expect("trial")).collect();
    for (i, t) in trials.into_iter().enumerate() {
        t.record(12 * S, if i == 0 { OK } else { FAIL });
    }
    assert_eq!(b.state(), State::Open);
    assert_eq!(b.transitions(), 3);
    // Open for `open_for` again, counted from the deciding outcome.
    assert_eq!(
        b.try_call(13 * S).unwrap_err().retry_after,
        Duration::from_secs(9)
    );
    assert!(b.try_call(22 * S).is_ok());
}

#[test]
fn a_dropped_trial_gives_its_slot_back() {
    let b = opened();
    let first = b.try_call(10 * S).expect("trial");
    let _second = b.try_call(10 * S).expect("trial");
    let _third = b.try_call(10 * S).expect("trial");
    assert!(b.try_call(10 * S).is_err());
    drop(first); // cancelled request
    let replacement = b.try_call(10 * S).expect("the freed slot");
    assert!(b.try_call(10 * S).is_err());
    drop(replacement);
}

#[test]
fn outcomes_are_counted_by_the_state_that_admitted_the_call() {
    let b = breaker(count(20, 10));
    let early = b.try_call(0).expect("closed");
    calls(&b, 0, 10, FAIL);
    assert_eq!(b.state(), State::Open);
    let trial = b.try_call(10 * S).expect("trial");
    // The call admitted while closed completes during half-open: it is not a trial.
    early.record(10 * S, OK);
    assert_eq!(b.snapshot(10 * S).calls, 0);
    drop(trial);
    assert_eq!(b.state(), State::HalfOpen);
}

#[test]
fn time_window_forgets_old_calls() {
    let config = BreakerConfig {
        window: Window::Time(Duration::from_secs(10)),
        minimum_calls: 5,
        ..count(1, 1)
    };
    // Within the window, 4 old failures and one new one open it.
    let b = breaker(config);
    calls(&b, 0, 4, FAIL);
    calls(&b, 9 * S, 1, FAIL);
    assert_eq!(b.state(), State::Open);

    // Ten seconds later the old failures are gone: 1 failure of 5 calls.
    let b = breaker(config);
    calls(&b, 0, 4, FAIL);
    assert_eq!(b.snapshot(9 * S + 999 * MS).calls, 4);
    assert_eq!(b.snapshot(10 * S).calls, 0);
    calls(&b, 10 * S, 4, OK);
    calls(&b, 10 * S, 1, FAIL);
    assert_eq!(b.state(), State::Closed);
    let snap = b.snapshot(10 * S);
    assert_eq!((snap.calls, snap.failed_calls), (5, 1));
    assert_eq!(snap.failure_rate, 0.2);

    // A long silence empties the whole ring at once.
    calls(&b, 3600 * S, 1, OK);
    assert_eq!(b.snapshot(3600 * S).calls, 1);
}

#[test]
fn time_window_slides_second_by_second() {
    let b = breaker(BreakerConfig {
        window: Window::Time(Duration::from_secs(3)),
        minimum_calls: 100,
        ..count(1, 1)
    });
    for second in 0..3 {
        calls(&b, second * S, 2, OK);
    }
    assert_eq!(b.snapshot(2 * S).calls, 6);
    assert_eq!(b.snapshot(3 * S).calls, 4);
    assert_eq!(b.snapshot(4 * S).calls, 2);
    // A late record from a thread whose clock read 1.5s: still inside the window.
    calls(&b, S + 500 * MS, 1, OK);
    assert_eq!(b.snapshot(4 * S).calls, 2);
    calls(&b, 2 * S + 500 * MS, 1, OK);
    assert_eq!(b.snapshot(4 * S).calls, 3);
}

#[test]
fn time_window_reopens_and_closes() {
    let b = breaker(BreakerConfig {
        window: Window::Time(Duration::from_secs(5)),
        minimum_calls: 4,
        half_open_calls: 1,
        ..count(1, 1)
    });
    calls(&b, 0, 4, FAIL);
    assert_eq!(b.state(), State::Open);
    b.try_call(10 * S).expect("trial").record(10 * S, OK);
    assert_eq!(b.state(), State::Closed);
    assert_eq!(b.snapshot(10 * S).calls, 0);
    calls(&b, 10 * S, 3, FAIL);
    assert_eq!(b.state(), State::Closed);
    calls(&b, 10 * S, 1, FAIL);
    assert_eq!(b.state(), State::Open);
}

#[test]
fn concurrent_calls_keep_the_breaker_consistent() {
    let b = breaker(BreakerConfig {
        window: Window::Count(50),
        minimum_calls: 20,
        open_for: Duration::from_millis(1),
        half_open_calls: 5,
        ..BreakerConfig::default()
    });
    std::thread::scope(|s| {
        for thread in 0..4u64 {
            let b = b.clone();
            s.spawn(move || {
                for i in 0..50_000u64 {
                    // Time moves forward 10µs per call; failures come in waves.
                    let now = i * 10_000;
                    let failed = (now / 50_000_000 + thread).is_multiple_of(3);
                    if let Ok(token) = b.try_call(now) {
                        token.record(
                            now,
                            Outcome {
                                failed,
                                duration: Duration::ZERO,
                            },
                        );
                    }
                    let snap = b.snapshot(now);
                    assert!(snap.calls <= 50, "{snap:?}");
                    assert!(snap.failed_calls <= 50, "{snap:?}");
                }
            });
        }
    });
    assert!(b.transitions() > 0);
}

#[test]
fn invalid_settings_are_refused() {
    let field = |c: BreakerConfig| CircuitBreaker::new(c).unwrap_err().field();
    let base = BreakerConfig::default();
    assert_eq!(
        field(BreakerConfig {
            window: Window::Count(0),
            ..base
        }),
        "window"
    );
    assert_eq!(
        field(BreakerConfig {
            window: Window::Time(Duration::ZERO),
            ..base
        }),
        "window"
    );
    assert_eq!(
        field(BreakerConfig {
            window: Window::Time(Duration::from_secs(86_401)),
            ..base
        }),
        "window"
    );
    assert_eq!(
        field(BreakerConfig {
            minimum_calls: 0,
            ..base
        }),
        "minimum_calls"
    );
    for bad in [0.0, -0.5, 1.01, f64::NAN] {
        assert_eq!(
            field(BreakerConfig {
                failure_rate_threshold: bad,
                ..base
            }),
            "failure_rate_threshold"
        );
        assert_eq!(
            field(BreakerConfig {
                slow_call_rate_threshold: bad,
                ..base
            }),
            "slow_call_rate_threshold"
        );
    }
    assert_eq!(
        field(BreakerConfig {
            slow_call_duration: Some(Duration::ZERO),
            ..base
        }),
        "slow_call_duration"
    );
    assert_eq!(
        field(BreakerConfig {
            open_for: Duration::ZERO,
            ..base
        }),
        "open_for"
    );
    for bad in [0, 4096] {
        assert_eq!(
            field(BreakerConfig {
                half_open_calls: bad,
                ..base
            }),
            "half_open_calls"
        );
    }
    let err = CircuitBreaker::new(BreakerConfig {
        failure_rate_threshold: 50.0,
        ..base
    })
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "failure_rate_threshold: 50 must be a fraction in (0, 1], e.g. 0.5 for 50%"
    );
}

#[test]
fn state_labels() {
    assert_eq!(State::HalfOpen.as_str(), "half_open");
    assert_eq!(State::Closed.as_str(), "closed");
    assert_eq!(State::Open.as_str(), "open");
}
