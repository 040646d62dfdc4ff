//! One judge per kind of check: the error rate, a latency percentile, throughput and a
//! business event, each turning two samples into tests against its bounds.

use std::fmt::Write as _;
use std::time::Duration;

use super::{CheckResult, EffectKind, Judge, Side, Verdict, effect, measure, test};
use crate::sample::{Events, Sample};
use crate::stats::{self, Boundary, Estimate, Interval, quantile_bounds};

use super::format::{millis, pct, per_second, pp, range, sig, signed_pct, times};

impl Judge {
    pub(super) fn error_rate(
        mut self,
        max: Option<f64>,
        max_increase: Option<f64>,
        c: &Sample,
        b: &Sample,
        boundary: &Boundary,
    ) -> CheckResult {
        let relative = max_increase.is_some() || max.is_none();
        let max_increase = relative.then(|| max_increase.unwrap_or(0.0));
        if let Some(bad) = [max, max_increase]
            .into_iter()
            .flatten()
            .find(|x| !x.is_finite())
        {
            return self.unusable(format!("threshold {bad} is not a number"));
        }
        let versions: &[(&str, &Sample)] = if relative {
            &[("candidate", c), ("baseline", b)]
        } else {
            &[("candidate", c)]
        };
        for (who, s) in versions {
            if s.errors > s.requests {
                return self.unusable(format!(
                    "{} errors out of {} requests ({who})",
                    s.errors, s.requests
                ));
            }
        }
        let ci = stats::proportion(c.errors, c.requests, boundary);
        let bi = stats::proportion(b.errors, b.requests, boundary);
        self.figures.candidate = measure(c.requests, ci.as_ref());
        self.figures.baseline = Some(measure(b.requests, bi.as_ref()));
        let counts: Vec<(&str, u64)> = versions.iter().map(|(w, s)| (*w, s.requests)).collect();
        if let Some(why) = self.short("requests", &counts) {
            return self.waiting(why);
        }
        let Some(ci) = ci else {
            return self.waiting("no requests (candidate)".into());
        };
        let mut summary = format!("error rate {} {}", pct(ci.value), range(&ci, pct));
        let mut tests = Vec::new();
        if let Some(max) = max {
            let t = test("max", Side::Max, max, &ci, Some(boundary));
            tests.push((t, pct(max)));
        }
        let di =
            stats::proportion_difference((c.errors, c.requests), (b.errors, b.requests), boundary);
        if let (Some(limit), Some(bi), Some(di)) = (max_increase, bi, di) {
            let _ = write!(
                summary,
                " vs {} {}: {} {}",
                pct(bi.value),
                range(&bi, pct),
                pp(di.value),
                range(&di, pp)
            );
            self.figures.effect = Some(effect(EffectKind::Difference, &di));
            let t = test("max_increase", Side::Max, limit, &di, Some(boundary));
            tests.push((t, pp(limit).trim_start_matches('+').to_string()));
        }
        self.conclude(summary, tests)
    }

    pub(super) fn latency(
        mut self,
        percentile: f64,
        max_ms: Option<f64>,
        max_ratio: Option<f64>,
        c: &Sample,
        b: &Sample,
        side: &Boundary,
    ) -> CheckResult {
        let q = percentile / 100.0;
        if !(q > 0.0 && q < 1.0) {
            return self.unusable(format!("percentile {percentile} is not between 0 and 100"));
        }
        if let Some(bad) = [max_ms, max_ratio]
            .into_iter()
            .flatten()
            .find(|x| !x.is_finite())
        {
            return self.unusable(format!("threshold {bad} is not a number"));
        }
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        // The percentile and its rank-based bounds, in milliseconds.
        let look = |s: &Sample| {
            let n = s.latency.count();
            let est = s.latency.quantile(q).map(ms);
            let bounds = quantile_bounds(&s.latency, q, side);
            let i = est.zip(bounds).map(|(value, (lo, hi))| Interval {
                value,
                low: ms(lo),
                high: hi.map_or(f64::INFINITY, ms),
                t: n as f64,
            });
            (n, i)
        };
        let (cn, ci) = look(c);
        let (bn, bi) = look(b);
        self.figures.candidate = measure(cn, ci.as_ref());
        self.figures.baseline = Some(measure(bn, bi.as_ref()));
        let mut counts = vec![("candidate", cn)];
        if max_ratio.is_some() {
            counts.push(("baseline", bn));
        }
        if let Some(why) = self.short("requests", &counts) {
            return self.waiting(why);
        }
        let Some(ci) = ci else {
            return self.waiting("no latency recorded (candidate)".into());
        };
        let mut summary = format!(
            "p{percentile} latency {} {}",
            millis(ci.value),
            range(&ci, millis)
        );
        let mut tests = Vec::new();
        if let Some(max) = max_ms {
            tests.push((test("max_ms", Side::Max, max, &ci, None), millis(max)));
        }
        if let (Some(limit), Some(bi)) = (max_ratio, bi) {
            let ratio = |x: f64, y: f64| if y > 0.0 { x / y } else { f64::INFINITY };
            // Both percentiles' intervals hold together with probability ≥ 1 − alpha.
            let ri = Interval {
                value: ratio(ci.value, bi.value),
                low: ratio(ci.low, bi.high),
                high: ratio(ci.high, bi.low),
                t: ci.t.min(bi.t),
            };
            let _ = write!(
                summary,
                " vs {} {}: {} {}",
                millis(bi.value),
                range(&bi, millis),
                times(ri.value),
                range(&ri, times)
            );
            self.figures.effect = Some(effect(EffectKind::Ratio, &ri));
            tests.push((test("max_ratio", Side::Max, limit, &ri, None), times(limit)));
        }
        self.conclude(summary, tests)
    }

    pub(super) fn throughput(
        mut self,
        min_rps: f64,
        c: &Sample,
        boundary: &Boundary,
    ) -> CheckResult {
        if !(min_rps >= 0.0 && min_rps.is_finite()) {
            return self.unusable(format!("min_rps {min_rps} is not a rate"));
        }
        if !(c.seconds > 0.0 && c.seconds.is_finite()) {
            return self.unusable(format!("a window of {} seconds", c.seconds));
        }
        // The interval on the mean gap between requests, turned into one on requests per second.
        let rps = Estimate::mean_gap(c.requests, c.seconds).map(|gap| {
            let g = gap.interval(boundary);
            Interval {
                value: 1.0 / g.value,
                low: 1.0 / g.high,
                high: if g.low > 0.0 {
                    1.0 / g.low
                } else {
                    f64::INFINITY
                },
                t: g.t,
            }
        });
        self.figures.candidate = measure(c.requests, rps.as_ref());
        if let Some(why) = self.short("requests", &[("candidate", c.requests)]) {
            return self.waiting(why);
        }
        let Some(rps) = rps else {
            return self.waiting("no requests (candidate)".into());
        };
        let summary = format!(
            "throughput {} {}",
            per_second(rps.value),
            range(&rps, per_second)
        );
        let t = test("min_rps", Side::Min, min_rps, &rps, Some(boundary));
        self.conclude(summary, vec![(t, per_second(min_rps))])
    }

    pub(super) fn event(
        mut self,
        event: &str,
        mean: bool,
        min_change: Option<f64>,
        c: &Sample,
        b: &Sample,
        boundary: &Boundary,
    ) -> CheckResult {
        let min_change = min_change.unwrap_or(0.0);
        if !min_change.is_finite() || min_change <= -1.0 {
            return self.unusable(format!("min_change {min_change} is not above -1"));
        }
        // One version's observations (units for a rate, events for a mean), the estimate the
        // comparison uses, and the interval shown for it: a proportion's as the error rate's, a
        // Poisson rate's never below 0.
        let look = |s: &Sample| {
            let e: Events = s.events.get(event).copied().unwrap_or_default();
            if mean {
                let est = Estimate::mean(e.count, e.sum, e.sum_sq);
                return (e.count, est, est.map(|m| m.interval(boundary)));
            }
            let units = if e.units == 0 { s.requests } else { e.units };
            if e.count <= units {
                let shown = stats::proportion(e.count, units, boundary);
                (units, Estimate::proportion(e.count, units), shown)
            } else {
                let est = Estimate::poisson_rate(e.count, units);
                let shown = est.map(|r| {
                    let i = r.interval(boundary);
                    Interval {
                        low: i.low.max(0.0),
                        ..i
                    }
                });
                (units, est, shown)
            }
        };
        let ((cn, ce, ci), (bn, be, bi)) = (look(c), look(b));
        self.figures.candidate = measure(cn, ci.as_ref());
        self.figures.baseline = Some(measure(bn, bi.as_ref()));
        let what = if mean {
            format!("`{event}` events")
        } else {
            "units".into()
        };
        if let Some(why) = self.short(&what, &[("candidate", cn), ("baseline", bn)]) {
            return self.waiting(why);
        }
        let (Some(ce), Some(be), Some(ci), Some(bi)) = (ce, be, ci, bi) else {
            return self.unusable(format!("the `{event}` sums are not numbers"));
        };
        let show = |x: f64| if mean { sig(x) } else { pct(x) };
        let kind = if mean { "mean" } else { "rate" };
        let mut summary = format!(
            "{event} {kind} {} {} vs {} {}",
            show(ci.value),
            range(&ci, show),
            show(bi.value),
            range(&bi, show),
        );
        let Some(ratio) = ce.ratio_interval(&be, boundary) else {
            return self.result(
                Verdict::Inconclusive,
                true,
                format!("{summary}: the baseline's {kind} is too uncertain for a relative change"),
            );
        };
        let change = Interval {
            value: ratio.value - 1.0,
            // A rate cannot fall by more than 100 %.
            low: if mean {
                ratio.low - 1.0
            } else {
                (ratio.low - 1.0).max(-1.0)
            },
            high: ratio.high - 1.0,
            t: ratio.t,
        };
        let _ = write!(
            summary,
            ": {} {}",
            signed_pct(change.value),
            range(&change, signed_pct)
        );
        self.figures.effect = Some(effect(EffectKind::RelativeChange, &change));
        let t = test("min_change", Side::Min, min_change, &change, Some(boundary));
        self.conclude(summary, vec![(t, signed_pct(min_change))])
    }
}
