//! `steps: adaptive` against a fixed plan under synthetic traffic: how soon a healthy candidate
//! reaches 100%, how many requests a bad one serves before it is rolled back, and how often a
//! healthy one is rolled back anyway (A/A). A benchmark, not a test; docs/analysis.md records
//! its output.
//!
//! ```text
//! cargo run -p graylane-rollout --release --example adaptive -j1
//! cargo run -p graylane-rollout --release --example adaptive -j1 -- floor  # the p99's floor
//! ```
//!
//! Both strategies are driven by the code the controller runs: the checks
//! ([`graylane_analysis::evaluate`]) and the [`Analyzer`] judge the data since the step began
//! once per interval; a fixed plan gets `analysis_passed` / `analysis_failed` and its timed
//! pauses ([`Rollout::apply`], [`Rollout::tick`]); an adaptive one also has the checks judge
//! the data since its weight last changed (the recent view), and gets [`Interval::judged`] and
//! [`Rollout::adapt`]. Traffic: Poisson arrivals, each request to the candidate with the current
//! weight, an error with its version's rate, a log-normal time; a candidate may behave worse
//! from some weight up (under load). Seeds are fixed: the output is the same on every run.

use std::time::{Duration, Instant};

use graylane_analysis::{
    Analyzer, CheckSpec, Decision, FailureMode, Policy, Sample, Verdict, evaluate,
};
use graylane_config::{Adaptive, Pause, Step, Weight};
use graylane_rollout::{Command, Interval, Phase, Plan, Rollout};

// The simulators share their random numbers with graylane-analysis's `simulate.rs`.
#[path = "../../analysis/examples/support/rng.rs"]
mod rng;

use rng::Rng;

/// How one version behaves.
#[derive(Clone, Copy)]
struct Behaviour {
    error_rate: f64,
    /// Median latency in milliseconds (σ of ln(latency) 0.5: p99 ≈ 3.2 × the median).
    median_ms: f64,
}

const HEALTHY: Behaviour = Behaviour {
    error_rate: 0.01,
    median_ms: 50.0,
};

/// A candidate that behaves as `below` until its weight reaches `from` percent, then as
/// `above` (under load).
#[derive(Clone, Copy)]
struct Candidate {
    below: Behaviour,
    from: f64,
    above: Behaviour,
}

impl Candidate {
    /// The same at every weight.
    fn always(b: Behaviour) -> Self {
        Candidate {
            below: b,
            from: f64::INFINITY,
            above: b,
        }
    }

    fn at(&self, weight_percent: f64) -> Behaviour {
        if weight_percent >= self.from {
            self.above
        } else {
            self.below
        }
    }
}

impl Behaviour {
    fn serve(&self, rng: &mut Rng, s: &mut Sample) {
        s.requests += 1;
        if rng.uniform() < self.error_rate {
            s.errors += 1;
        }
        let ms = self.median_ms * (0.5 * rng.normal()).exp();
        s.latency.record((ms * 1e6) as u64);
    }
}

/// Requests per second over both versions.
const RPS: f64 = 100.0;
/// The analysis interval, as in the README's example.
const INTERVAL_S: u64 = 30;
/// A run that has not ended by then is cut off.
const HORIZON_S: u64 = 4 * 3600;
const RUNS: u64 = 1000;
/// The weight (percent) from which the "under load" candidate degrades.
const LOADED: f64 = 30.0;

/// The README's analysis: error rate at most 5% and at most 2 points above the baseline, p99
/// under 500 ms; two passes in a row pass, two failures in a row fail.
fn checks() -> Vec<CheckSpec> {
    vec![
        CheckSpec::ErrorRate {
            max: Some(0.05),
            max_increase: Some(0.02),
        },
        CheckSpec::Latency {
            percentile: 99.0,
            max_ms: Some(500.0),
            max_ratio: None,
        },
    ]
}

fn policy() -> Policy {
    Policy {
        min_requests: 200,
        failure_limit: 2,
        failure_mode: FailureMode::Consecutive,
        success_needed: 2,
        max_wait_without_data: None,
        alpha: 0.05,
    }
}

fn pct(p: f64) -> Weight {
    Weight::from_percent(p).unwrap_or(Weight::ZERO)
}

/// 5% → 20% → 50% → 100%, ten minutes each, each step moving on only once the analysis passed.
fn fixed_plan() -> Plan {
    let pause = Pause::For(Duration::from_secs(600));
    let step = |weight, pause| Step {
        weight: pct(weight),
        mirror: None,
        pause,
    };
    Plan {
        gated: true,
        ..Plan::canary(vec![
            step(5.0, pause),
            step(20.0, pause),
            step(50.0, pause),
            step(100.0, Pause::None),
        ])
    }
}

/// `steps: adaptive` from `start` percent, with the issue's other bounds and an exposure budget
/// of `budget` requests (`None`: no budget).
fn adaptive_plan(start: f64, budget: Option<u64>) -> Plan {
    Plan {
        gated: true,
        adaptive: Some(Adaptive {
            start: pct(start),
            max: Weight::FULL,
            grow: 2.0,
            shrink: 0.5,
            min_pause: Duration::from_secs(30),
            max_pause: Duration::from_secs(600),
            max_bad_requests: budget,
        }),
        ..Plan::canary(vec![Step {
            weight: pct(start),
            mirror: None,
            pause: Pause::Manual,
        }])
    }
}

/// How one run ended.
struct Run {
    /// Completed (100%) at this simulated second.
    completed_at: Option<u64>,
    /// Rolled back (aborted) at this simulated second.
    aborted_at: Option<u64>,
    /// Requests the candidate served in all.
    candidate_requests: u64,
    /// Requests the candidate served while it behaved worse than at low weights.
    degraded_requests: u64,
}

/// One release from start to its end (or the horizon), judged once per interval as the
/// controller does.
fn run(plan: &Plan, candidate: Candidate, seed: u64) -> Run {
    let mut rng = Rng::new(seed);
    let checks = checks();
    let mut analyzer = Analyzer::new(policy());
    let mut r = Rollout::start(plan, 0);
    analyzer.step_started(0);
    let (mut cand, mut base) = (Sample::default(), Sample::default());
    let mut step = (r.step, r.step_started_ms);
    let mut since = (Sample::default(), Sample::default());
    let mut judged = 0u64;
    // The recent view: when the weight last changed, and the totals then.
    let mut recent = (0i64, (Sample::default(), Sample::default()));
    let mut degraded = 0u64;
    let mut t = 0u64;
    while t < HORIZON_S && matches!(r.phase, Phase::Progressing | Phase::Paused) {
        let changed_ms = r.adaptive.map_or(r.step_started_ms, |a| a.changed_ms);
        if changed_ms != recent.0 {
            recent = (changed_ms, (cand.clone(), base.clone()));
        }
        let weight = r.weight.percent() / 100.0;
        let behaviour = candidate.at(r.weight.percent());
        let bad = r.weight.percent() >= candidate.from;
        for _ in 0..rng.poisson(RPS * INTERVAL_S as f64) {
            if rng.uniform() <= weight {
                behaviour.serve(&mut rng, &mut cand);
                degraded += u64::from(bad);
            } else {
                HEALTHY.serve(&mut rng, &mut base);
            }
        }
        t += INTERVAL_S;
        let now_ms = (t * 1000) as i64;
        cand.seconds = t as f64;
        base.seconds = t as f64;
        // A new step starts a new window of data, as in the controller.
        if (r.step, r.step_started_ms) != step {
            step = (r.step, r.step_started_ms);
            since = (cand.clone(), base.clone());
            judged = 0;
            analyzer.step_started(now_ms as u64);
            continue;
        }
        let judge = |c: &Sample, b: &Sample| -> Vec<_> {
            checks
                .iter()
                .map(|check| evaluate(check, c, b, policy().min_requests, policy().alpha))
                .collect()
        };
        let (c, b) = (cand.sub(&since.0), base.sub(&since.1));
        let results = judge(&c, &b);
        let decision = analyzer.judge(now_ms as u64, &results);
        let served = c.requests - judged;
        judged = c.requests;
        if plan.adaptive.is_some() {
            let zero = &recent.1;
            let recent = judge(&cand.sub(&zero.0), &base.sub(&zero.1));
            let interval = Interval::judged(&decision, &results, &recent, served);
            r.adapt(plan, &interval, now_ms);
        } else {
            let command = match decision {
                Decision::Promote if !r.analysis_passed => Some(Command::AnalysisPassed),
                Decision::Fail { .. } => Some(Command::AnalysisFailed),
                _ => None,
            };
            if let Some(command) = command {
                let _ = r.apply(plan, command, "analysis", "", now_ms);
            }
            r.tick(plan, now_ms);
        }
    }
    Run {
        completed_at: (r.phase == Phase::Completed).then_some(t),
        aborted_at: (r.phase == Phase::Aborted).then_some(t),
        candidate_requests: cand.requests,
        degraded_requests: degraded,
    }
}

fn quantile(sorted: &[u64], q: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    Some(sorted[i])
}

fn minutes(s: Option<u64>) -> String {
    s.map_or_else(
        || "never".to_string(),
        |s| format!("{:.1} min", s as f64 / 60.0),
    )
}

fn share(n: usize, of: u64) -> String {
    format!("{n}/{of} = {:.1}%", 100.0 * n as f64 / of as f64)
}

/// How many requests the latency-regression candidate must serve before its p99 check can fail
/// at all, whatever the pace: the check looked at after every single request from
/// `min_requests` on (no interval, no `failure_limit`), until it first fails.
fn floor() {
    const FLOOR_RUNS: u64 = 4000;
    let candidate = Behaviour {
        median_ms: 200.0,
        ..HEALTHY
    };
    let check = &checks()[1];
    let policy = policy();
    let mut first: Vec<u64> = (0..FLOOR_RUNS)
        .map(|seed| {
            let mut rng = Rng::new(30_000 + seed);
            let mut c = Sample::default();
            // Bounded: a p99 of 640 ms fails long before 100,000 requests.
            while c.requests < 100_000 {
                candidate.serve(&mut rng, &mut c);
                if c.requests >= policy.min_requests {
                    let r = evaluate(check, &c, &c, policy.min_requests, policy.alpha);
                    if r.verdict == Verdict::Fail {
                        break;
                    }
                }
            }
            c.requests
        })
        .collect();
    first.sort_unstable();
    println!(
        "latency p99 160 → 640 ms, checked after every candidate request from min_requests {}: first failure after a median {} requests (p10 {}, p90 {}; {FLOOR_RUNS} runs)",
        policy.min_requests,
        quantile(&first, 0.5).unwrap_or(0),
        quantile(&first, 0.1).unwrap_or(0),
        quantile(&first, 0.9).unwrap_or(0),
    );
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some("floor") {
        floor();
        return;
    }
    let started = Instant::now();
    let strategies = [
        ("fixed 5 → 20 → 50 → 100%, 10m pauses", fixed_plan()),
        (
            "adaptive from 1% ×2, max_bad_requests 500",
            adaptive_plan(1.0, Some(500)),
        ),
        (
            "adaptive from 5% ×2, max_bad_requests 500",
            adaptive_plan(5.0, Some(500)),
        ),
        (
            "adaptive from 1% ×2, max_bad_requests 100",
            adaptive_plan(1.0, Some(100)),
        ),
        (
            "adaptive from 1% ×2, no max_bad_requests",
            adaptive_plan(1.0, None),
        ),
    ];
    println!(
        "{RPS} req/s, interval {INTERVAL_S} s, min_requests 200, success_needed 2, failure_limit 2, alpha 0.05; \
         checks error_rate max 5% / +2 pp, latency_p99 max 500 ms; {RUNS} runs each, cut off at {} h\n",
        HORIZON_S / 3600
    );
    println!("| scenario | plan | result |");
    println!("|---|---|---|");
    for (name, plan) in &strategies {
        let runs: Vec<Run> = (0..RUNS)
            .map(|seed| run(plan, Candidate::always(HEALTHY), seed))
            .collect();
        let mut done: Vec<u64> = runs.iter().filter_map(|r| r.completed_at).collect();
        done.sort_unstable();
        let false_rollbacks = runs.iter().filter(|r| r.aborted_at.is_some()).count();
        println!(
            "| healthy (A/A: 1% errors, p99 160 ms both) | {name} | 100% reached in {}: median {}, p90 {}; rolled back {} |",
            share(done.len(), RUNS),
            minutes(quantile(&done, 0.5)),
            minutes(quantile(&done, 0.9)),
            share(false_rollbacks, RUNS),
        );
    }
    let bad = [
        (
            "errors 1% → 5%",
            Behaviour {
                error_rate: 0.05,
                ..HEALTHY
            },
        ),
        (
            "latency p99 160 → 640 ms",
            Behaviour {
                median_ms: 200.0,
                ..HEALTHY
            },
        ),
    ];
    for (what, behaviour) in bad {
        for (name, plan) in &strategies {
            let runs: Vec<Run> = (0..RUNS)
                .map(|seed| run(plan, Candidate::always(behaviour), 10_000 + seed))
                .collect();
            let mut served: Vec<u64> = runs
                .iter()
                .filter(|r| r.aborted_at.is_some())
                .map(|r| r.candidate_requests)
                .collect();
            served.sort_unstable();
            let completed = runs.iter().filter(|r| r.completed_at.is_some()).count();
            let mut at: Vec<u64> = runs.iter().filter_map(|r| r.aborted_at).collect();
            at.sort_unstable();
            println!(
                "| bad: {what} | {name} | rolled back {}, completed {}; candidate requests before rollback: median {}, p90 {}; rolled back at median {} |",
                share(served.len(), RUNS),
                share(completed, RUNS),
                quantile(&served, 0.5).unwrap_or(0),
                quantile(&served, 0.9).unwrap_or(0),
                minutes(quantile(&at, 0.5)),
            );
        }
    }
    let under_load = Candidate {
        below: HEALTHY,
        from: LOADED,
        above: Behaviour {
            error_rate: 0.05,
            ..HEALTHY
        },
    };
    for (name, plan) in &strategies {
        let runs: Vec<Run> = (0..RUNS)
            .map(|seed| run(plan, under_load, 20_000 + seed))
            .collect();
        let rolled_back = runs.iter().filter(|r| r.aborted_at.is_some()).count();
        let completed = runs.iter().filter(|r| r.completed_at.is_some()).count();
        let going = RUNS as usize - rolled_back - completed;
        let mut degraded: Vec<u64> = runs.iter().map(|r| r.degraded_requests).collect();
        degraded.sort_unstable();
        let mut at: Vec<u64> = runs.iter().filter_map(|r| r.aborted_at).collect();
        at.sort_unstable();
        println!(
            "| bad under load: errors 1% → 5% from {LOADED}% of the traffic up | {name} | rolled back {}, completed {}, still going at {} h {}; candidate requests while bad: median {}, p90 {}; rolled back at median {}, p90 {} |",
            share(rolled_back, RUNS),
            share(completed, RUNS),
            HORIZON_S / 3600,
            share(going, RUNS),
            quantile(&degraded, 0.5).unwrap_or(0),
            quantile(&degraded, 0.9).unwrap_or(0),
            minutes(quantile(&at, 0.5)),
            minutes(quantile(&at, 0.9)),
        );
    }
    println!("\n(simulated in {:.0} s)", started.elapsed().as_secs_f64());
}
