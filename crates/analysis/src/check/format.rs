//! How a check writes its figures into reasons: significant digits, percentages, percentage
//! points, milliseconds and intervals.

use crate::stats::Interval;

/// `[low, high]` with unbounded ends shown as `…`.
pub(super) fn range(i: &Interval, show: impl Fn(f64) -> String) -> String {
    let end = |x: f64| if x.is_finite() { show(x) } else { "…".into() };
    format!("[{}, {}]", end(i.low), end(i.high))
}

/// At least two significant digits, at most three decimals beyond them.
pub(super) fn sig(x: f64) -> String {
    if x == 0.0 || !x.is_finite() {
        return format!("{x}");
    }
    let decimals = (2 - x.abs().log10().floor() as i32).clamp(0, 6) as usize;
    format!("{x:.decimals$}")
}

pub(super) fn pct(x: f64) -> String {
    format!("{}%", sig_pct(x * 100.0))
}

pub(super) fn signed_pct(x: f64) -> String {
    let s = pct(x);
    if x > 0.0 { format!("+{s}") } else { s }
}

/// Percentage points of a difference of rates.
pub(super) fn pp(x: f64) -> String {
    let s = sig_pct(x * 100.0);
    if x > 0.0 {
        format!("+{s} pp")
    } else {
        format!("{s} pp")
    }
}

/// A percentage with one decimal, two below 1 %, three below 0.1 %.
pub(super) fn sig_pct(p: f64) -> String {
    let a = p.abs();
    if a == 0.0 || a >= 1.0 {
        format!("{p:.1}")
    } else if a >= 0.1 {
        format!("{p:.2}")
    } else {
        format!("{p:.3}")
    }
}

pub(super) fn millis(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0} ms")
    } else {
        format!("{} ms", sig(x))
    }
}

pub(super) fn times(x: f64) -> String {
    format!("×{x:.2}")
}

pub(super) fn per_second(x: f64) -> String {
    format!("{} rps", sig(x))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formatting() {
        assert_eq!(pct(0.049), "4.9%");
        assert_eq!(pct(0.006), "0.60%");
        assert_eq!(pp(0.039), "+3.9 pp");
        assert_eq!(pp(-0.0004), "-0.040 pp");
        assert_eq!(millis(312.4), "312 ms");
        assert_eq!(millis(1.234), "1.23 ms");
        assert_eq!(sig(0.0123), "0.0123");
        let i = Interval {
            value: 1.0,
            low: f64::NEG_INFINITY,
            high: 2.0,
            t: 1.0,
        };
        assert_eq!(range(&i, sig), "[…, 2.00]");
        assert_eq!(signed_pct(0.05), "+5.0%");
    }
}
