//! `evaluate`: clear failures fail, clear passes pass, thin or borderline data is inconclusive,
//! and no input makes it panic.

mod common;

use std::collections::BTreeMap;

use common::Rng;
use graylane_analysis::check::{EffectKind, Figures};
use graylane_analysis::{
    CheckResult, CheckSpec, Events, Histogram, Sample, Verdict, evaluate, evaluate_variants,
};

const ALPHA: f64 = 0.05;

fn sample(requests: u64, errors: u64) -> Sample {
    Sample {
        requests,
        errors,
        seconds: 60.0,
        ..Sample::default()
    }
}

/// A sample whose latencies are log-normal around `median_ms`.
fn timed(requests: u64, median_ms: f64, sigma: f64, seed: u64) -> Sample {
    let mut rng = Rng::new(seed);
    let mut latency = Histogram::new();
    for _ in 0..requests {
        latency.record(rng.latency_nanos(median_ms, sigma));
    }
    Sample {
        latency,
        ..sample(requests, 0)
    }
}

fn with_event(mut s: Sample, name: &str, e: Events) -> Sample {
    s.events = BTreeMap::from([(name.to_string(), e)]);
    s
}

fn error_rate(max: Option<f64>, max_increase: Option<f64>) -> CheckSpec {
    CheckSpec::ErrorRate { max, max_increase }
}

/// Survives JSON (floats may come back off by an ulp: serde_json's default parser).
fn roundtrip(r: &CheckResult) {
    let json = serde_json::to_string(r).unwrap();
    let back: CheckResult = serde_json::from_str(&json).unwrap();
    assert_eq!(
        (&back.check, back.verdict, back.enough_data, &back.reason),
        (&r.check, r.verdict, r.enough_data, &r.reason)
    );
    assert_eq!(back.figures.tests.len(), r.figures.tests.len());
    assert_eq!(back.figures.candidate.n, r.figures.candidate.n);
}

#[test]
fn a_clearly_worse_error_rate_fails_with_its_figures() {
    let spec = error_rate(Some(0.05), Some(0.02));
    let r = evaluate(&spec, &sample(2_000, 200), &sample(20_000, 200), 200, ALPHA);
    assert_eq!(r.verdict, Verdict::Fail, "{}", r.reason);
    assert!(r.enough_data);
    assert_eq!(r.check, "error_rate");
    assert!(r.reason.starts_with("error rate 10.0% ["), "{}", r.reason);
    assert!(r.reason.contains("vs 1.0% ["), "{}", r.reason);
    assert!(r.reason.contains(": +9.0 pp ["), "{}", r.reason);
    assert!(r.reason.contains("above max 5.0%"), "{}", r.reason);
    assert!(
        r.reason.contains("above max_increase 2.0 pp"),
        "{}",
        r.reason
    );
    let f = &r.figures;
    assert_eq!(f.alpha, ALPHA);
    assert_eq!((f.candidate.n, f.candidate.value), (2_000, Some(0.1)));
    assert_eq!(f.baseline.as_ref().unwrap().value, Some(0.01));
    let effect = f.effect.as_ref().unwrap();
    assert_eq!(effect.kind, EffectKind::Difference);
    assert!(effect.low.unwrap() > 0.02 && effect.value.unwrap() > effect.low.unwrap());
    assert_eq!(f.tests.len(), 2);
    for t in &f.tests {
        assert_eq!(t.verdict, Verdict::Fail);
        assert!(t.statistic.unwrap() > 0.0);
        assert!(t.p_value.unwrap() < ALPHA);
    }
    roundtrip(&r);
}

#[test]
fn a_clearly_healthy_error_rate_passes_with_enough_data() {
    let spec = error_rate(Some(0.05), Some(0.02));
    let r = evaluate(&spec, &sample(5_000, 50), &sample(50_000, 500), 200, ALPHA);
    assert_eq!(r.verdict, Verdict::Pass, "{}", r.reason);
    assert!(
        r.reason
            .contains("below max 5.0%; below max_increase 2.0 pp"),
        "{}",
        r.reason
    );
    for t in &r.figures.tests {
        assert!(
            t.statistic.unwrap() < 0.0 && t.p_value.unwrap() < ALPHA,
            "{t:?}"
        );
    }
}

#[test]
fn below_min_requests_is_not_enough_data() {
    let spec = error_rate(Some(0.05), Some(0.02));
    // Even with every request failing: too few to judge.
    let r = evaluate(&spec, &sample(37, 37), &sample(5_000, 50), 200, ALPHA);
    assert_eq!(r.verdict, Verdict::Inconclusive);
    assert!(!r.enough_data);
    assert_eq!(r.reason, "not enough data: 37 of 200 requests (candidate)");
    assert_eq!(r.figures.candidate.n, 37);
    let r = evaluate(&spec, &sample(5_000, 50), &sample(10, 0), 200, ALPHA);
    assert_eq!(r.reason, "not enough data: 10 of 200 requests (baseline)");
    // An absolute ceiling alone does not need the baseline.
    let r = evaluate(
        &error_rate(Some(0.05), None),
        &sample(5_000, 50),
        &sample(0, 0),
        200,
        ALPHA,
    );
    assert_eq!(r.verdict, Verdict::Pass, "{}", r.reason);
    roundtrip(&r);
}

#[test]
fn borderline_error_rates_are_inconclusive() {
    // 3% against 1% with 2 pp tolerated: the truth may be on either side.
    let spec = error_rate(None, Some(0.02));
    let r = evaluate(&spec, &sample(2_000, 60), &sample(2_000, 20), 200, ALPHA);
    assert_eq!(r.verdict, Verdict::Inconclusive, "{}", r.reason);
    assert!(r.enough_data);
    assert!(
        r.reason
            .contains("not yet clear against max_increase 2.0 pp"),
        "{}",
        r.reason
    );
    let t = &r.figures.tests[0];
    assert!(t.p_value.unwrap() >= ALPHA);
    // Close to an absolute ceiling.
    let r = evaluate(
        &error_rate(Some(0.05), None),
        &sample(1_000, 50),
        &sample(0, 0),
        200,
        ALPHA,
    );
    assert_eq!(r.verdict, Verdict::Inconclusive, "{}", r.reason);
}

#[test]
fn no_bound_compares_with_the_baseline() {
    let spec = error_rate(None, None);
    let r = evaluate(&spec, &sample(4_000, 200), &sample(4_000, 40), 200, ALPHA);
    assert_eq!(r.verdict, Verdict::Fail, "{}", r.reason);
    assert!(
        r.reason.contains("above max_increase 0.0 pp"),
        "{}",
        r.reason
    );
    let r = evaluate(&spec, &sample(4_000, 40), &sample(4_000, 40), 200, ALPHA);
    assert_eq!(r.verdict, Verdict::Inconclusive, "{}", r.reason);
}

#[test]
fn latency_thresholds_and_ratios() {
    let fast = timed(20_000, 50.0, 0.3, 1);
    let slow = timed(20_000, 150.0, 0.3, 2);
    let p99 = |max_ms, max_ratio| CheckSpec::Latency {
        percentile: 99.0,
        max_ms,
        max_ratio,
    };
    // p99 of the fast one ≈ 100 ms, of the slow one ≈ 300 ms.
    let r = evaluate(&p99(Some(200.0), None), &fast, &fast, 200, ALPHA);
    assert_eq!(r.verdict, Verdict::Pass, "{}", r.reason);
    assert_eq!(r.check, "latency_p99");
    assert!(r.reason.starts_with("p99 latency "), "{}", r.reason);
    let r = evaluate(&p99(Some(200.0), None), &slow, &fast, 200, ALPHA);
    assert_eq!(r.verdict, Verdict::Fail, "{}", r.reason);
    let r = evaluate(&p99(None, Some(1.5)), &slow, &fast, 200, ALPHA);
    assert_eq!(r.verdict, Verdict::Fail, "{}", r.reason);
    let effect = r.figures.effect.as_ref().unwrap();
    assert_eq!(effect.kind, EffectKind::Ratio);
    assert!(
        effect.low.unwrap() > 1.5 && effect.value.unwrap() > 2.5,
        "{effect:?}"
    );
    let r = evaluate(&p99(None, Some(1.5)), &fast, &slow, 200, ALPHA);
    assert_eq!(r.verdict, Verdict::Pass, "{}", r.reason);
    // The same distribution against a ratio of 1: cannot be told apart.
    let other_fast = timed(20_000, 50.0, 0.3, 3);
    let r = evaluate(&p99(None, None), &fast, &other_fast, 200, ALPHA);
    assert_eq!(r.verdict, Verdict::Inconclusive, "{}", r.reason);
    // 300 requests cannot bound a p99 from above: no pass, and no fail either.
    let few = timed(300, 50.0, 0.3, 4);
    let r = evaluate(&p99(Some(1_000.0), None), &few, &few, 200, ALPHA);
    assert_eq!(r.verdict, Verdict::Inconclusive, "{}", r.reason);
    assert!(r.figures.candidate.high.is_none());
    roundtrip(&r);
}

#[test]
fn throughput_against_min_rps() {
    let s = |requests| Sample {
        requests,
        seconds: 10.0,
        ..Sample::default()
    };
    let spec = |min_rps| CheckSpec::Throughput { min_rps };
    let r = evaluate(&spec(50.0), &s(1_000), &Sample::default(), 200, ALPHA);
    assert_eq!(r.verdict, Verdict::Pass, "{}", r.reason);
    assert!(r.reason.starts_with("throughput 100 rps ["), "{}", r.reason);
    assert!(r.figures.baseline.is_none());
    let r = evaluate(&spec(200.0), &s(1_000), &Sample::default(), 200, ALPHA);
    assert_eq!(r.verdict, Verdict::Fail, "{}", r.reason);
    assert!(r.reason.contains("below min_rps 200 rps"), "{}", r.reason);
    assert!(r.figures.tests[0].statistic.unwrap() > 0.0);
    let r = evaluate(&spec(100.0), &s(1_000), &Sample::default(), 200, ALPHA);
    assert_eq!(r.verdict, Verdict::Inconclusive, "{}", r.reason);
    let r = evaluate(&spec(1.0), &s(50), &Sample::default(), 200, ALPHA);
    assert_eq!(r.reason, "not enough data: 50 of 200 requests (candidate)");
}

#[test]
fn event_rates_and_means_against_min_change() {
    let conv = |count, units| Events {
        count,
        units,
        ..Events::default()
    };
    let rate = |min_change| CheckSpec::EventRate {
        event: "checkout".into(),
        min_change,
    };
    let base = with_event(sample(0, 0), "checkout", conv(1_000, 10_000));
    // 7% against 10%: a 30% drop, well past a tolerated 5%.
    let worse = with_event(sample(0, 0), "checkout", conv(700, 10_000));
    let r = evaluate(&rate(Some(-0.05)), &worse, &base, 200, ALPHA);
    assert_eq!(r.verdict, Verdict::Fail, "{}", r.reason);
    assert_eq!(r.check, "event_rate:checkout");
    assert!(r.reason.contains("below min_change -5.0%"), "{}", r.reason);
    let effect = r.figures.effect.as_ref().unwrap();
    assert_eq!(effect.kind, EffectKind::RelativeChange);
    assert!((effect.value.unwrap() + 0.3).abs() < 1e-12);
    let same = with_event(sample(0, 0), "checkout", conv(1_000, 10_000));
    let r = evaluate(&rate(Some(-0.2)), &same, &base, 200, ALPHA);
    assert_eq!(r.verdict, Verdict::Pass, "{}", r.reason);
    let r = evaluate(&rate(None), &same, &base, 200, ALPHA);
    assert_eq!(r.verdict, Verdict::Inconclusive, "{}", r.reason);
    // Units default to requests; several events per unit are a Poisson rate.
    let per_request = with_event(sample(1_000, 0), "click", conv(3_000, 0));
    let spec = CheckSpec::EventRate {
        event: "click".into(),
        min_change: Some(-0.1),
    };
    let r = evaluate(&spec, &per_request, &per_request, 200, ALPHA);
    assert_eq!(r.figures.candidate.n, 1_000);
    assert_eq!(r.figures.candidate.value, Some(3.0));
    assert_eq!(r.verdict, Verdict::Pass, "{}", r.reason);
    // A missing event with requests is a rate of 0; without requests or units, no data.
    let r = evaluate(&rate(None), &sample(500, 0), &base, 200, ALPHA);
    assert_eq!(r.verdict, Verdict::Fail, "{}", r.reason);
    assert_eq!(r.figures.candidate.low, Some(0.0));
    assert!(r.figures.effect.as_ref().unwrap().low.unwrap() >= -1.0);
    let r = evaluate(&rate(None), &sample(0, 0), &base, 200, ALPHA);
    assert_eq!(r.reason, "not enough data: 0 of 200 units (candidate)");

    // Means: order values around 50 with sd ~10.
    let orders = |n: u64, mean: f64| Events {
        count: n,
        sum: mean * n as f64,
        sum_sq: (mean * mean + 100.0) * n as f64,
        units: 0,
    };
    let spec = CheckSpec::EventMean {
        event: "order".into(),
        min_change: Some(-0.02),
    };
    let base = with_event(sample(0, 0), "order", orders(2_000, 50.0));
    let r = evaluate(
        &spec,
        &with_event(sample(0, 0), "order", orders(2_000, 45.0)),
        &base,
        200,
        ALPHA,
    );
    assert_eq!(r.verdict, Verdict::Fail, "{}", r.reason);
    assert_eq!(r.check, "event_mean:order");
    let r = evaluate(
        &spec,
        &with_event(sample(0, 0), "order", orders(2_000, 50.0)),
        &base,
        200,
        ALPHA,
    );
    assert_eq!(r.verdict, Verdict::Pass, "{}", r.reason);
    let r = evaluate(
        &spec,
        &with_event(sample(0, 0), "order", orders(20, 50.0)),
        &base,
        200,
        ALPHA,
    );
    assert_eq!(
        r.reason,
        "not enough data: 20 of 200 `order` events (candidate)"
    );
    // A baseline indistinguishable from 0 gives no relative change.
    let zero = with_event(sample(0, 0), "order", orders(2_000, 0.0));
    let r = evaluate(&spec, &base, &zero, 200, ALPHA);
    assert_eq!(r.verdict, Verdict::Inconclusive, "{}", r.reason);
    assert!(r.reason.contains("too uncertain"), "{}", r.reason);
    roundtrip(&r);
}

#[test]
fn variants_share_the_error_budget() {
    let spec = error_rate(None, None);
    let control = sample(10_000, 100);
    let variants = [
        sample(10_000, 100),
        sample(10_000, 400),
        sample(10_000, 110),
    ];
    let results = evaluate_variants(&spec, &control, &variants, 200, ALPHA);
    assert_eq!(results.len(), 3);
    let verdicts: Vec<Verdict> = results.iter().map(|r| r.verdict).collect();
    assert_eq!(
        verdicts,
        [Verdict::Inconclusive, Verdict::Fail, Verdict::Inconclusive]
    );
    for r in &results {
        assert!((r.figures.alpha - ALPHA / 3.0).abs() < 1e-15);
    }
    assert!(evaluate_variants(&spec, &control, &[], 200, ALPHA).is_empty());
}

#[test]
fn bad_input_is_inconclusive_with_a_reason() {
    let ok = sample(1_000, 10);
    let cases: Vec<(CheckSpec, Sample, f64, &str)> = vec![
        (
            error_rate(None, None),
            ok.clone(),
            f64::NAN,
            "alpha NaN is not between 0 and 1",
        ),
        (
            error_rate(None, None),
            ok.clone(),
            1.0,
            "alpha 1 is not between 0 and 1",
        ),
        (
            error_rate(Some(f64::NAN), None),
            ok.clone(),
            ALPHA,
            "threshold NaN is not a number",
        ),
        (
            error_rate(None, None),
            sample(10, 20),
            ALPHA,
            "20 errors out of 10 requests (candidate)",
        ),
        (
            CheckSpec::Latency {
                percentile: 120.0,
                max_ms: Some(1.0),
                max_ratio: None,
            },
            ok.clone(),
            ALPHA,
            "percentile 120 is not between 0 and 100",
        ),
        (
            CheckSpec::Throughput { min_rps: f64::NAN },
            ok.clone(),
            ALPHA,
            "min_rps NaN is not a rate",
        ),
        (
            CheckSpec::Throughput { min_rps: 1.0 },
            Sample {
                seconds: f64::NAN,
                ..ok.clone()
            },
            ALPHA,
            "a window of NaN seconds",
        ),
        (
            CheckSpec::EventMean {
                event: "x".into(),
                min_change: Some(-2.0),
            },
            ok.clone(),
            ALPHA,
            "min_change -2 is not above -1",
        ),
        (
            CheckSpec::EventMean {
                event: "x".into(),
                min_change: None,
            },
            with_event(
                ok.clone(),
                "x",
                Events {
                    count: 500,
                    sum: f64::INFINITY,
                    sum_sq: 1.0,
                    units: 0,
                },
            ),
            ALPHA,
            "the `x` sums are not numbers",
        ),
    ];
    for (spec, s, alpha, why) in cases {
        let r = evaluate(&spec, &s, &s, 100, alpha);
        assert_eq!(r.verdict, Verdict::Inconclusive, "{why}");
        assert_eq!(r.reason, format!("cannot judge: {why}"));
        roundtrip(&r);
    }
    // Requests but no latency recorded.
    let spec = CheckSpec::Latency {
        percentile: 99.0,
        max_ms: Some(1.0),
        max_ratio: None,
    };
    let r = evaluate(&spec, &ok, &ok, 100, ALPHA);
    assert_eq!(r.verdict, Verdict::Inconclusive);
    assert_eq!(r.reason, "not enough data: 0 of 100 requests (candidate)");
}

#[test]
fn no_input_makes_evaluate_panic() {
    let mut rng = Rng::new(99);
    let floats = [
        0.0,
        -1.0,
        1e-300,
        0.5,
        1.0,
        99.0,
        1e300,
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
    ];
    let ints = [0, 1, 2, 199, 200, 10_000, u64::MAX / 2, u64::MAX];
    let pick_f = |rng: &mut Rng| floats[(rng.next_u64() % floats.len() as u64) as usize];
    let pick_i = |rng: &mut Rng| ints[(rng.next_u64() % ints.len() as u64) as usize];
    for _ in 0..3_000 {
        let opt = |rng: &mut Rng, f: f64| (!rng.next_u64().is_multiple_of(3)).then_some(f);
        let (a, b, c) = (pick_f(&mut rng), pick_f(&mut rng), pick_f(&mut rng));
        let spec = match rng.next_u64() % 5 {
            0 => error_rate(opt(&mut rng, a), opt(&mut rng, b)),
            1 => CheckSpec::Latency {
                percentile: c,
                max_ms: opt(&mut rng, a),
                max_ratio: opt(&mut rng, b),
            },
            2 => CheckSpec::Throughput { min_rps: a },
            3 => CheckSpec::EventRate {
                event: "e".into(),
                min_change: opt(&mut rng, a),
            },
            _ => CheckSpec::EventMean {
                event: "e".into(),
                min_change: opt(&mut rng, a),
            },
        };
        let side = |rng: &mut Rng| {
            let mut counts = vec![0u64; 8];
            for c in counts.iter_mut() {
                *c = pick_i(rng);
            }
            let mut latency = Histogram::from_counts(&counts);
            latency.record(pick_i(rng));
            let e = Events {
                count: pick_i(rng),
                sum: pick_f(rng),
                sum_sq: pick_f(rng),
                units: pick_i(rng),
            };
            with_event(
                Sample {
                    requests: pick_i(rng),
                    errors: pick_i(rng),
                    latency,
                    seconds: pick_f(rng),
                    events: BTreeMap::new(),
                },
                "e",
                e,
            )
        };
        let (cand, base) = (side(&mut rng), side(&mut rng));
        let alpha = if rng.next_u64().is_multiple_of(2) {
            ALPHA
        } else {
            pick_f(&mut rng)
        };
        let r = evaluate(&spec, &cand, &base, pick_i(&mut rng), alpha);
        assert!(!r.reason.is_empty());
        // Whatever came in, the figures survive JSON.
        let json = serde_json::to_string(&r.figures).unwrap();
        let _: Figures = serde_json::from_str(&json).unwrap();
    }
}

#[test]
fn a_check_whose_estimate_is_past_its_bound_leans_worse_before_it_fails() {
    let spec = CheckSpec::ErrorRate {
        max: None,
        max_increase: Some(0.01),
    };
    // 3% against 1%: past the 1-point tolerance, too few requests to be sure.
    let r = evaluate(&spec, &sample(200, 6), &sample(2_000, 20), 100, ALPHA);
    assert_eq!(r.verdict, Verdict::Inconclusive, "{}", r.reason);
    assert!(r.leans_worse(), "{}", r.reason);
    // The same rates on far more requests: a failure, which leans worse too.
    let r = evaluate(
        &spec,
        &sample(20_000, 600),
        &sample(20_000, 200),
        100,
        ALPHA,
    );
    assert_eq!(r.verdict, Verdict::Fail, "{}", r.reason);
    assert!(r.leans_worse());
}

#[test]
fn a_check_whose_estimate_is_within_its_bound_does_not_lean_worse() {
    let spec = CheckSpec::ErrorRate {
        max: Some(0.05),
        max_increase: Some(0.02),
    };
    // 1.5% against 1%: unclear against the tolerance yet, but on the passing side of it.
    let r = evaluate(&spec, &sample(200, 3), &sample(2_000, 20), 100, ALPHA);
    assert_eq!(r.verdict, Verdict::Inconclusive, "{}", r.reason);
    assert!(!r.leans_worse(), "{}", r.reason);
    // Not enough data never leans, whatever the estimate.
    let r = evaluate(&spec, &sample(20, 5), &sample(2_000, 20), 100, ALPHA);
    assert!(!r.enough_data);
    assert!(!r.leans_worse());
}

#[test]
fn a_latency_ratio_leans_worse_on_its_effect_estimate() {
    let spec = CheckSpec::Latency {
        percentile: 50.0,
        max_ms: None,
        max_ratio: Some(1.2),
    };
    let slow = evaluate(
        &spec,
        &timed(150, 70.0, 0.5, 1),
        &timed(3_000, 50.0, 0.5, 2),
        100,
        ALPHA,
    );
    assert_ne!(slow.verdict, Verdict::Pass, "{}", slow.reason);
    assert!(slow.leans_worse(), "{}", slow.reason);
    let same = evaluate(
        &spec,
        &timed(150, 50.0, 0.5, 3),
        &timed(3_000, 50.0, 0.5, 4),
        100,
        ALPHA,
    );
    assert!(!same.leans_worse(), "{}", same.reason);
}
