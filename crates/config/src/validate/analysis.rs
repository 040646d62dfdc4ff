//! Release analysis: its checks (error rate, latency, throughput, events, Prometheus queries),
//! their thresholds and failure handling, status ranges and URLs.

use super::Validator;
use crate::error::did_you_mean;
use crate::model::*;
use crate::raw::*;
use crate::redact::redact_url;

impl Validator<'_> {
    pub(super) fn analysis(&mut self, path: &str, raw: &RawAnalysis) -> Option<Analysis> {
        let errors_before = self.problems.len();
        let interval = self.duration(&format!("{path}.interval"), &raw.interval);
        let on_failure = match raw.on_failure.as_deref() {
            None | Some("rollback") => Some(OnFailure::Rollback),
            Some("pause") => Some(OnFailure::Pause),
            Some(other) => {
                self.fail(
                    format!("{path}.on_failure"),
                    format!("unknown action `{other}`: use `rollback` or `pause`"),
                );
                None
            }
        };
        let failure_mode = match raw.failure_mode.as_deref() {
            None | Some("consecutive") => FailureMode::Consecutive,
            Some("total") => FailureMode::Total,
            Some(other) => {
                self.fail(
                    format!("{path}.failure_mode"),
                    format!("unknown mode `{other}`: use `consecutive` or `total`"),
                );
                FailureMode::Consecutive
            }
        };
        if raw.failure_limit == Some(0) {
            self.fail(format!("{path}.failure_limit"), "must be at least 1");
        }
        if raw.success_needed == Some(0) {
            self.fail(format!("{path}.success_needed"), "must be at least 1");
        }
        let confidence = raw.confidence.unwrap_or(0.95);
        if !(confidence > 0.5 && confidence < 1.0) {
            self.fail(
                format!("{path}.confidence"),
                format!("{confidence} must be between 0.5 and 1 (exclusive), e.g. 0.95"),
            );
        }
        let max_wait_without_data = match &raw.max_wait_without_data {
            Some(d) => self.duration(&format!("{path}.max_wait_without_data"), d),
            None => None,
        };
        let error_codes = match &raw.error_codes {
            None => vec![StatusRange { from: 500, to: 599 }],
            Some(codes) => codes
                .iter()
                .enumerate()
                .filter_map(|(i, c)| self.status_range(&format!("{path}.error_codes[{i}]"), c))
                .collect(),
        };
        let prometheus_url = match (raw.metrics_source.as_deref(), &raw.prometheus_url) {
            (None | Some("in_process"), None) => None,
            (Some("prometheus"), Some(url)) => {
                self.http_url(&format!("{path}.prometheus_url"), url)
            }
            (Some("prometheus"), None) => {
                self.fail(
                    format!("{path}.prometheus_url"),
                    "`metrics_source: prometheus` needs `prometheus_url`, e.g. http://127.0.0.1:9090",
                );
                None
            }
            (None | Some("in_process"), Some(_)) => {
                self.fail(
                    format!("{path}.prometheus_url"),
                    "`prometheus_url` is only used with `metrics_source: prometheus`",
                );
                None
            }
            (Some(other), _) => {
                self.fail(
                    format!("{path}.metrics_source"),
                    format!("unknown metrics source `{other}`: use `in_process` or `prometheus`"),
                );
                None
            }
        };
        let checks: Vec<Option<Check>> = raw
            .checks
            .iter()
            .enumerate()
            .map(|(i, c)| self.check(&format!("{path}.checks[{i}]"), c, prometheus_url.is_some()))
            .collect();
        if self.problems.len() > errors_before {
            return None;
        }
        Some(Analysis {
            interval: interval?,
            min_requests: raw.min_requests.unwrap_or(100),
            checks: checks.into_iter().collect::<Option<Vec<_>>>()?,
            failure_limit: raw.failure_limit.unwrap_or(1).max(1),
            failure_mode,
            success_needed: raw.success_needed.unwrap_or(1).max(1),
            on_failure: on_failure?,
            max_wait_without_data,
            confidence,
            error_codes,
            prometheus_url,
        })
    }

    /// `500`, `5xx` or `500-504`.
    pub(super) fn status_range(&mut self, path: &str, text: &str) -> Option<StatusRange> {
        let t = text.trim();
        let range = if let Some(d) = t.strip_suffix("xx").filter(|d| d.len() == 1) {
            d.parse::<u16>().ok().map(|d| StatusRange {
                from: d * 100,
                to: d * 100 + 99,
            })
        } else if let Some((a, b)) = t.split_once('-') {
            match (a.trim().parse::<u16>(), b.trim().parse::<u16>()) {
                (Ok(from), Ok(to)) if from <= to => Some(StatusRange { from, to }),
                _ => None,
            }
        } else {
            t.parse::<u16>()
                .ok()
                .map(|c| StatusRange { from: c, to: c })
        };
        match range {
            Some(r) if (100..=599).contains(&r.from) && (100..=599).contains(&r.to) => Some(r),
            _ => {
                self.fail(
                    path,
                    format!("`{text}` is not a status, a class or a range: write `503`, `5xx` or `500-504`"),
                );
                None
            }
        }
    }

    pub(super) fn http_url(&mut self, path: &str, text: &str) -> Option<http::Uri> {
        match text.parse::<http::Uri>() {
            Ok(u) if u.scheme_str() == Some("http") && u.host().is_some() => Some(u),
            _ => {
                self.fail(
                    path,
                    format!(
                        "`{}` is not an http URL like http://127.0.0.1:9090",
                        redact_url(text)
                    ),
                );
                None
            }
        }
    }

    pub(super) fn check(
        &mut self,
        path: &str,
        c: &RawCheck,
        has_prometheus: bool,
    ) -> Option<Check> {
        let given: Vec<(&str, Option<f64>)> = vec![
            ("max", c.max),
            ("min", c.min),
            ("max_increase", c.max_increase),
            ("max_ms", c.max_ms),
            ("max_ratio", c.max_ratio),
            ("min_rps", c.min_rps),
            ("min_change", c.min_change),
        ];
        let metric = match (c.metric.as_deref(), &c.query) {
            (Some(m), None) => m,
            (None | Some("query"), Some(_)) => "query",
            (Some(m), Some(_)) => {
                self.fail(
                    format!("{path}.query"),
                    format!(
                        "a check has either `metric` or `query`; `{m}` is computed by graylane"
                    ),
                );
                return None;
            }
            (None, None) => {
                self.fail(
                    path.to_string(),
                    "a check needs `metric` (error_rate, latency_pNN, throughput, event_rate, event_mean) or a Prometheus `query`",
                );
                return None;
            }
        };
        let event = |v: &mut Self| -> Option<String> {
            match &c.event {
                Some(e) if !e.is_empty() => Some(e.clone()),
                _ => {
                    v.fail(
                        format!("{path}.event"),
                        format!("`{metric}` needs `event`: the name posted to /api/v1/events"),
                    );
                    None
                }
            }
        };
        let (check, allowed): (Option<Check>, &[&str]) = if metric == "error_rate" {
            (
                Some(Check::ErrorRate {
                    max: c.max,
                    max_increase: c.max_increase,
                }),
                &["max", "max_increase"],
            )
        } else if let Some(p) = metric.strip_prefix("latency_p") {
            let percentile = parse_percentile(p);
            if percentile.is_none() {
                self.fail(
                    format!("{path}.metric"),
                    format!(
                        "`{metric}`: the percentile must be between 0 and 100, e.g. `latency_p99`"
                    ),
                );
            }
            (
                percentile.map(|percentile| Check::Latency {
                    percentile,
                    max_ms: c.max_ms,
                    max_ratio: c.max_ratio,
                }),
                &["max_ms", "max_ratio"],
            )
        } else if metric == "throughput" {
            (
                c.min_rps.map(|min_rps| Check::Throughput { min_rps }),
                &["min_rps"],
            )
        } else if metric == "event_rate" || metric == "event_mean" {
            let event = event(self);
            let check = match (event, c.min_change) {
                (Some(event), Some(min_change)) if metric == "event_rate" => {
                    Some(Check::EventRate { event, min_change })
                }
                (Some(event), Some(min_change)) => Some(Check::EventMean { event, min_change }),
                _ => None,
            };
            (check, &["min_change"])
        } else if metric == "query" {
            if !has_prometheus {
                self.fail(
                    format!("{path}.query"),
                    "a `query` check needs `metrics_source: prometheus` and `prometheus_url` in the analysis",
                );
            }
            let query = c.query.clone().unwrap_or_default();
            if query.trim().is_empty() {
                self.fail(format!("{path}.query"), "the query is empty");
            }
            (
                Some(Check::Query {
                    name: c.name.clone().unwrap_or_else(|| query.clone()),
                    query,
                    max: c.max,
                    min: c.min,
                }),
                &["max", "min"],
            )
        } else {
            let hint = did_you_mean(
                metric,
                [
                    "error_rate",
                    "latency_p99",
                    "throughput",
                    "event_rate",
                    "event_mean",
                ],
            )
            .map(|s| format!("; did you mean `{s}`?"))
            .unwrap_or_default();
            self.fail(
                format!("{path}.metric"),
                format!(
                    "unknown metric `{metric}`: use `error_rate`, `latency_pNN`, `throughput`, `event_rate`, `event_mean`, or a Prometheus `query`{hint}"
                ),
            );
            return None;
        };
        if c.event.is_some() && !matches!(metric, "event_rate" | "event_mean") {
            self.fail(
                format!("{path}.event"),
                format!("`event` does not apply to `{metric}`"),
            );
        }
        let mut ok = true;
        for (key, value) in &given {
            match value {
                Some(_) if !allowed.contains(key) => {
                    ok = false;
                    self.fail(
                        format!("{path}.{key}"),
                        format!(
                            "`{key}` does not apply to `{metric}`; it takes {}",
                            allowed.join(", ")
                        ),
                    );
                }
                Some(v) if !v.is_finite() => {
                    ok = false;
                    self.fail(format!("{path}.{key}"), format!("{v} is not a number"));
                }
                // A change may be negative (a tolerated drop); a query's bounds may be too.
                Some(v) if *v < 0.0 && !matches!(*key, "min_change" | "max" | "min") => {
                    ok = false;
                    self.fail(
                        format!("{path}.{key}"),
                        format!("{v} must be a non-negative number"),
                    );
                }
                _ => {}
            }
        }
        if metric == "error_rate" {
            for (key, v) in [("max", c.max), ("max_increase", c.max_increase)] {
                if v.is_some_and(|v| v > 1.0) {
                    ok = false;
                    self.fail(
                        format!("{path}.{key}"),
                        "an error rate is a fraction from 0 to 1 (0.05 is 5%)",
                    );
                }
            }
        }
        if !given
            .iter()
            .any(|(k, v)| v.is_some() && allowed.contains(k))
        {
            ok = false;
            self.fail(
                path.to_string(),
                format!("`{metric}` needs a threshold: {}", allowed.join(" or ")),
            );
        }
        if ok { check } else { None }
    }
}

fn parse_percentile(s: &str) -> Option<f64> {
    let p: f64 = s.parse().ok()?;
    (p > 0.0 && p < 100.0).then_some(p)
}
