//! The analysis under synthetic traffic: how fast it catches a bad candidate, how often it fails a
//! good one, what it does without traffic, and how the SRM check behaves. A benchmark of the
//! statistics, not a test; docs/analysis.md records its output.
//!
//! ```text
//! cargo run -p graylane-analysis --release --example simulate -j1
//! cargo run -p graylane-analysis --example simulate -j1 -- srm    # row (e) and the SRM sweep
//! ```
//!
//! Traffic: every simulated second a Poisson number of requests arrives; each goes to the
//! candidate with the scenario's weight, fails with its version's error rate and takes a
//! log-normal time. The analysis runs once per simulated second (the interval) on the data since
//! the step started, exactly as the controller drives it. Seeds are fixed: the output is the same
//! on every run.

use std::time::{Duration, Instant};

use graylane_analysis::srm::{SRM_ALPHA, SRM_PRIOR_CONCENTRATION, ln_bayes_factor};
use graylane_analysis::stats::{chi_square_sf, normal_quantile};
use graylane_analysis::{
    Analyzer, CheckSpec, Decision, Policy, Sample, analyzer::DEFAULT_ALPHA, evaluate,
    sample_ratio_mismatch,
};

#[path = "support/rng.rs"]
mod rng;

use rng::Rng;

/// How one version behaves.
#[derive(Clone, Copy)]
struct Behaviour {
    error_rate: f64,
    /// Median latency in milliseconds.
    median_ms: f64,
    /// σ of ln(latency).
    sigma: f64,
}

impl Behaviour {
    const HEALTHY: Behaviour = Behaviour {
        error_rate: 0.01,
        median_ms: 50.0,
        sigma: 0.5,
    };

    fn quantile_ms(&self, q: f64) -> f64 {
        self.median_ms * (self.sigma * normal_quantile(q)).exp()
    }

    fn serve(&self, rng: &mut Rng, s: &mut Sample) {
        s.requests += 1;
        if rng.uniform() < self.error_rate {
            s.errors += 1;
        }
        let ms = self.median_ms * (self.sigma * rng.normal()).exp();
        s.latency.record((ms * 1e6) as u64);
    }
}

struct Scenario {
    /// Requests per second over both versions.
    rps: f64,
    /// The candidate's share of them.
    weight: f64,
    baseline: Behaviour,
    candidate: Behaviour,
    checks: Vec<CheckSpec>,
    policy: Policy,
    /// Simulated seconds (one interval each).
    seconds: u64,
}

/// What happened in one run.
#[derive(Default)]
struct Run {
    failed_at: Option<u64>,
    promoted_at: Option<u64>,
    paused_at: Option<u64>,
    held: u64,
    intervals: u64,
}

fn simulate(s: &Scenario, seed: u64) -> Run {
    let mut rng = Rng::new(seed);
    let (mut c, mut b) = (Sample::default(), Sample::default());
    let mut analyzer = Analyzer::new(s.policy.clone());
    analyzer.step_started(0);
    let mut run = Run::default();
    for second in 1..=s.seconds {
        for _ in 0..rng.poisson(s.rps) {
            if rng.uniform() < s.weight {
                s.candidate.serve(&mut rng, &mut c);
            } else {
                s.baseline.serve(&mut rng, &mut b);
            }
        }
        c.seconds = second as f64;
        b.seconds = second as f64;
        let results: Vec<_> = s
            .checks
            .iter()
            .map(|spec| evaluate(spec, &c, &b, s.policy.min_requests, s.policy.alpha))
            .collect();
        run.intervals += 1;
        match analyzer.judge(second * 1000, &results) {
            Decision::Fail { .. } => {
                run.failed_at = Some(second);
                // The release would roll back here.
                return run;
            }
            // A healthy release would move on; keep watching the same step instead, the worst
            // case for false failures.
            Decision::Promote => {
                run.promoted_at.get_or_insert(second);
            }
            Decision::Pause { .. } => {
                run.paused_at.get_or_insert(second);
            }
            Decision::Hold { .. } => run.held += 1,
            Decision::Continue => {}
        }
    }
    run
}

/// `q`-quantile of times (None = never happened), as text.
fn quantile_text(times: &mut [Option<u64>], q: f64) -> String {
    times.sort_by_key(|t| t.unwrap_or(u64::MAX));
    let i = ((times.len() as f64 * q).ceil() as usize).clamp(1, times.len()) - 1;
    match times[i] {
        Some(t) => format!("{t} s"),
        None => "never".into(),
    }
}

struct Row {
    scenario: String,
    setup: String,
    result: String,
    goal: String,
}

fn many(s: &Scenario, runs: u64, seed: u64) -> Vec<Run> {
    (0..runs).map(|i| simulate(s, seed + i)).collect()
}

fn fraction(n: usize, of: usize) -> String {
    format!("{n}/{of} = {:.1}%", n as f64 / of as f64 * 100.0)
}

fn detection_row(name: &str, setup: String, runs: &[Run], goal: &str) -> Row {
    let mut fail: Vec<Option<u64>> = runs.iter().map(|r| r.failed_at).collect();
    let caught = fail.iter().filter(|t| t.is_some()).count();
    Row {
        scenario: name.into(),
        setup,
        result: format!(
            "time to Fail: median {}, p90 {} (caught {})",
            quantile_text(&mut fail, 0.5),
            quantile_text(&mut fail, 0.9),
            fraction(caught, runs.len())
        ),
        goal: goal.into(),
    }
}

fn aa_row(name: &str, setup: String, runs: &[Run], goal: &str) -> Row {
    let failed = runs.iter().filter(|r| r.failed_at.is_some()).count();
    let mut promoted: Vec<Option<u64>> = runs.iter().map(|r| r.promoted_at).collect();
    let promoted_n = promoted.iter().filter(|t| t.is_some()).count();
    Row {
        scenario: name.into(),
        setup,
        result: format!(
            "runs that Fail: {}; runs that reach Promote: {}, median {}",
            fraction(failed, runs.len()),
            fraction(promoted_n, runs.len()),
            quantile_text(&mut promoted, 0.5)
        ),
        goal: goal.into(),
    }
}

/// Prior concentrations the SRM sweep compares (the check uses [`SRM_PRIOR_CONCENTRATION`]).
const SRM_CONCENTRATIONS: [f64; 5] = [100.0, 300.0, 1_000.0, 3_000.0, 10_000.0];

/// Whether the χ² test the SRM check used before (fixed horizon, `p < 0.001`) flags `counts` of
/// a 50/50 split; from 100 users on, its minimum of 8 expected units per variant always holds.
fn chi_square_flags(counts: &[u64; 2]) -> bool {
    let expected = (counts[0] + counts[1]) as f64 / 2.0;
    let x2: f64 = counts
        .iter()
        .map(|o| (*o as f64 - expected).powi(2) / expected)
        .sum();
    chi_square_sf(x2, 1) < 0.001
}

/// Row (e): 50/50 configured, users arriving 100 per interval and the check run after each
/// interval, up to 40,000 users. The anytime-valid check against the fixed-horizon χ² it
/// replaced, on the same users; and, per prior concentration, how often the Bayes factor
/// reaches 1/α (the sweep's lines).
fn srm() -> (Vec<Row>, Vec<String>) {
    const SEEDS: u64 = 10_000;
    const MID: u64 = 20_000;
    const END: u64 = 40_000;
    let threshold = -SRM_ALPHA.ln();
    let mut rows = Vec::new();
    // Per share: for each concentration, the users at the first flag of every seed.
    let mut firsts = Vec::new();
    for (share, label, goal) in [
        (0.52, "52/48 delivered", "flagged by 20,000 users"),
        (0.50, "50/50 delivered", "≤ 0.1% flagged at any check"),
    ] {
        // The check as shipped, then the χ² it replaced: flagged at MID, first flag.
        let mut tests = [(0usize, Vec::new()), (0usize, Vec::new())];
        let mut sweep = vec![Vec::new(); SRM_CONCENTRATIONS.len()];
        for seed in 0..SEEDS {
            let mut rng = Rng::new(400_000 + seed);
            let mut counts = [0u64; 2];
            let mut first = [None; 2];
            let mut first_c = [None; SRM_CONCENTRATIONS.len()];
            for user in 1..=END {
                counts[usize::from(rng.uniform() >= share)] += 1;
                if user % 100 != 0 {
                    continue;
                }
                let now = [
                    sample_ratio_mismatch(&counts, &[1.0, 1.0]).flagged,
                    chi_square_flags(&counts),
                ];
                for (i, flagged) in now.into_iter().enumerate() {
                    if flagged {
                        first[i].get_or_insert(user);
                        tests[i].0 += usize::from(user == MID);
                    }
                }
                for (c, f) in SRM_CONCENTRATIONS.iter().zip(&mut first_c) {
                    if f.is_none()
                        && ln_bayes_factor(&counts, &[1.0, 1.0], *c)
                            .is_some_and(|ln_bf| ln_bf >= threshold)
                    {
                        *f = Some(user);
                    }
                }
            }
            tests[0].1.push(first[0]);
            tests[1].1.push(first[1]);
            for (s, f) in sweep.iter_mut().zip(first_c) {
                s.push(f);
            }
        }
        for ((at_mid, first), test) in tests.iter().zip([
            format!(
                "anytime-valid Bayes factor (c = {SRM_PRIOR_CONCENTRATION}, flags at {})",
                1.0 / SRM_ALPHA
            ),
            "before: fixed-horizon χ² at p < 0.001".into(),
        ]) {
            rows.push(Row {
                scenario: "(e) SRM, 50/50 configured".into(),
                setup: format!("{label}; {SEEDS} seeds; checked every 100 users; {test}"),
                result: format!(
                    "flagged at 20,000 users: {}; at any of the 200 checks up to 20,000: {}; \
                     of the 400 up to 40,000: {}",
                    fraction(*at_mid, SEEDS as usize),
                    by(first, MID),
                    by(first, END)
                ),
                goal: goal.into(),
            });
        }
        firsts.push(sweep);
    }
    let mut lines = Vec::new();
    for (i, c) in SRM_CONCENTRATIONS.iter().enumerate() {
        let mut skew = firsts[0][i].clone();
        lines.push(format!(
            "| {c} | {} | {} | {} | {} |",
            by(&skew, MID),
            by(&skew, END),
            median_users(&mut skew),
            by(&firsts[1][i], END)
        ));
    }
    (rows, lines)
}

/// The median of the users at the first flag (None = never flagged), as text.
fn median_users(firsts: &mut [Option<u64>]) -> String {
    firsts.sort_by_key(|f| f.unwrap_or(u64::MAX));
    match firsts[(firsts.len() - 1) / 2] {
        Some(u) => u.to_string(),
        None => "never".into(),
    }
}

/// The share of runs whose first flag came by `users`, as text.
fn by(firsts: &[Option<u64>], users: u64) -> String {
    fraction(
        firsts
            .iter()
            .filter(|f| f.is_some_and(|u| u <= users))
            .count(),
        firsts.len(),
    )
}

fn print_srm_sweep(lines: &[String]) {
    println!(
        "\nSRM prior concentration c, flagged at Bayes factor ≥ {}, 50/50 configured, checked \
         every 100 users, 10000 seeds:\n\n\
         | c | 52/48: flagged by 20,000 users | by 40,000 | median users at the first flag | \
         50/50: flagged by 40,000 |\n\
         |---|---|---|---|---|",
        1.0 / SRM_ALPHA
    );
    for line in lines {
        println!("{line}");
    }
}

fn main() {
    let started = Instant::now();
    if std::env::args().nth(1).as_deref() == Some("srm") {
        // Row (e) and the SRM sweep alone.
        let (rows, lines) = srm();
        println!("| scenario | setup | result | goal |");
        println!("|---|---|---|---|");
        for r in &rows {
            println!(
                "| {} | {} | {} | {} |",
                r.scenario, r.setup, r.result, r.goal
            );
        }
        print_srm_sweep(&lines);
        println!("\n(simulated in {:.1} s)", started.elapsed().as_secs_f64());
        return;
    }
    let alpha = DEFAULT_ALPHA;
    let base_policy = Policy {
        min_requests: 100,
        failure_limit: 1,
        success_needed: 3,
        alpha,
        ..Policy::default()
    };
    let error_cmp = CheckSpec::ErrorRate {
        max: None,
        max_increase: None,
    };
    let error_tol = CheckSpec::ErrorRate {
        max: Some(0.05),
        max_increase: Some(0.02),
    };
    let p99_cmp = CheckSpec::Latency {
        percentile: 99.0,
        max_ms: None,
        max_ratio: None,
    };
    let p99_tol = CheckSpec::Latency {
        percentile: 99.0,
        max_ms: None,
        max_ratio: Some(1.2),
    };
    let bad_errors = Behaviour {
        error_rate: 0.05,
        ..Behaviour::HEALTHY
    };
    // Same median, a heavier tail: σ chosen so that p99 is 1.5 × the baseline's.
    let slow_tail = Behaviour {
        sigma: Behaviour::HEALTHY.sigma + 1.5f64.ln() / normal_quantile(0.99),
        ..Behaviour::HEALTHY
    };
    let scenario =
        |weight: f64, candidate: Behaviour, checks: Vec<CheckSpec>, seconds: u64| Scenario {
            rps: 200.0,
            weight,
            baseline: Behaviour::HEALTHY,
            candidate,
            checks,
            policy: base_policy.clone(),
            seconds,
        };
    let mut rows = Vec::new();

    // (a) Detection of an error-rate regression.
    for (weight, check, label) in [
        (0.5, &error_cmp, "error_rate (no bound: any increase)"),
        (0.2, &error_cmp, "error_rate (no bound: any increase)"),
        (0.5, &error_tol, "error_rate max 5%, max_increase 2 pp"),
    ] {
        let s = scenario(weight, bad_errors, vec![check.clone()], 600);
        rows.push(detection_row(
            "(a) detection: 1% → 5% errors",
            format!("{label}; {:.0}% canary", weight * 100.0),
            &many(&s, 1000, 1),
            "median ≤ 3 s",
        ));
    }

    // (b) A/A: nothing differs, ten minutes of looking every second.
    for (weight, checks, label) in [
        (0.5, vec![error_cmp.clone()], "error_rate (no bound)"),
        (0.2, vec![error_cmp.clone()], "error_rate (no bound)"),
        (0.5, vec![p99_cmp.clone()], "latency_p99 (no bound)"),
        (
            0.5,
            vec![error_cmp.clone(), p99_cmp.clone()],
            "error_rate + latency_p99 (no bounds)",
        ),
        (
            0.5,
            vec![error_tol.clone(), p99_tol.clone()],
            "error_rate max 5%/+2 pp, latency_p99 max_ratio 1.2",
        ),
    ] {
        let s = scenario(weight, Behaviour::HEALTHY, checks, 600);
        rows.push(aa_row(
            "(b) A/A: 1% vs 1%, same latency",
            format!("{label}; {:.0}% canary, 1000 runs × 600 s", weight * 100.0),
            &many(&s, 1000, 100_000),
            "≤ 1% Fail",
        ));
    }

    // (c) Detection of a latency regression: p99 +50%.
    for (check, label) in [
        (&p99_cmp, "latency_p99 (no bound: any increase)"),
        (&p99_tol, "latency_p99 max_ratio 1.2"),
    ] {
        let s = scenario(0.5, slow_tail, vec![check.clone()], 600);
        rows.push(detection_row(
            "(c) detection: p99 +50%",
            format!(
                "{label}; 50% canary; p99 {:.0} → {:.0} ms",
                Behaviour::HEALTHY.quantile_ms(0.99),
                slow_tail.quantile_ms(0.99)
            ),
            &many(&s, 1000, 200_000),
            "(no goal set)",
        ));
    }

    // (d) Low traffic: 2 req/s, min_requests 200, 5% canary — 0.1 req/s on the candidate.
    for (candidate, label) in [(Behaviour::HEALTHY, "healthy"), (bad_errors, "5% errors")] {
        for wait in [None, Some(Duration::from_secs(300))] {
            let s = Scenario {
                rps: 2.0,
                weight: 0.05,
                baseline: Behaviour::HEALTHY,
                candidate,
                checks: vec![error_tol.clone(), p99_tol.clone()],
                policy: Policy {
                    min_requests: 200,
                    max_wait_without_data: wait,
                    ..base_policy.clone()
                },
                seconds: 600,
            };
            let runs = many(&s, 200, 300_000);
            let failed = runs.iter().filter(|r| r.failed_at.is_some()).count();
            let promoted = runs.iter().filter(|r| r.promoted_at.is_some()).count();
            let held: u64 = runs.iter().map(|r| r.held).sum();
            let intervals: u64 = runs.iter().map(|r| r.intervals).sum();
            let mut paused: Vec<Option<u64>> = runs.iter().map(|r| r.paused_at).collect();
            rows.push(Row {
                scenario: "(d) low traffic: 2 req/s".into(),
                setup: format!(
                    "candidate {label}, 5% canary, min_requests 200, max_wait_without_data {}; \
                     200 runs × 600 s",
                    wait.map_or("none".into(), |w| format!("{}s", w.as_secs()))
                ),
                result: format!(
                    "Fail {}, Promote {}, Hold {} of intervals{}",
                    fraction(failed, runs.len()),
                    fraction(promoted, runs.len()),
                    fraction(held as usize, intervals as usize),
                    if wait.is_some() {
                        format!(", Pause at {}", quantile_text(&mut paused, 0.5))
                    } else {
                        String::new()
                    }
                ),
                goal: "never fails, holds".into(),
            });
        }
    }

    // (e) SRM, and the SRM prior's sweep.
    let (srm_rows, srm_sweep) = srm();
    rows.extend(srm_rows);

    // (f) The trade-off α sets: detection (a) against false failures (b), error_rate only.
    let mut sweep = Vec::new();
    for a in [0.01, 0.02, 0.05, 0.1, 0.2] {
        let with = |candidate, weight| Scenario {
            policy: Policy {
                alpha: a,
                ..base_policy.clone()
            },
            ..scenario(weight, candidate, vec![error_cmp.clone()], 600)
        };
        let mut detect: Vec<Option<u64>> = many(&with(bad_errors, 0.5), 1000, 1)
            .iter()
            .map(|r| r.failed_at)
            .collect();
        let aa = many(&with(Behaviour::HEALTHY, 0.5), 1000, 100_000);
        let false_fails = aa.iter().filter(|r| r.failed_at.is_some()).count();
        sweep.push(format!(
            "| {a} | {} | {} | {} |",
            quantile_text(&mut detect, 0.5),
            quantile_text(&mut detect, 0.9),
            fraction(false_fails, aa.len())
        ));
    }

    println!(
        "alpha = {alpha}, interval 1 s, 200 req/s unless said, failure_limit 1, \
         success_needed 3, min_requests 100 unless said\n"
    );
    println!("| scenario | setup | result | goal |");
    println!("|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {} |",
            r.scenario, r.setup, r.result, r.goal
        );
    }
    println!(
        "\nα sweep, error_rate (no bound), 50% canary, 200 req/s, 1000 runs each:\n\n\
         | alpha | (a) 1% → 5%: median time to Fail | p90 | (b) A/A: runs that Fail in 600 s |\n\
         |---|---|---|---|"
    );
    for line in &sweep {
        println!("{line}");
    }
    print_srm_sweep(&srm_sweep);
    println!("\n(simulated in {:.1} s)", started.elapsed().as_secs_f64());
}
