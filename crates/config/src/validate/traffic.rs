//! Traffic control: rate limits, concurrency limits, circuit breakers, retries, health checks,
//! outlier detection, their targets and fallback responses.

use std::time::Duration;

use super::Validator;
use crate::model::*;
use crate::raw::*;

impl Validator<'_> {
    pub(super) fn traffic_control(
        &mut self,
        raw: RawTrafficControl,
        services: &[Service],
        declared: &[String],
    ) -> TrafficControl {
        let mut tc = TrafficControl::default();
        for (i, rl) in raw.rate_limits.iter().enumerate() {
            let path = format!("traffic_control.rate_limits[{i}]");
            if let Some(l) = self.rate_limit(&path, rl, services, declared) {
                tc.rate_limits.push(l);
            }
        }
        for (i, cb) in raw.circuit_breakers.iter().enumerate() {
            let path = format!("traffic_control.circuit_breakers[{i}]");
            if let Some(b) = self.circuit_breaker(&path, cb, services, declared) {
                tc.circuit_breakers.push(b);
            }
        }
        for (i, c) in raw.concurrency_limits.iter().enumerate() {
            let path = format!("traffic_control.concurrency_limits[{i}]");
            let target = self.target(&path, &c.service, c.version.as_deref(), services, declared);
            if c.max == 0 {
                self.fail(format!("{path}.max"), "must be at least 1");
            }
            if let Some((service, version)) = target
                && c.max > 0
            {
                tc.concurrency_limits.push(ConcurrencyLimit {
                    service,
                    version,
                    max: c.max,
                });
            }
        }
        for (i, r) in raw.retries.iter().enumerate() {
            let path = format!("traffic_control.retries[{i}]");
            if let Some(r) = self.retry(&path, r, services, declared) {
                tc.retries.push(r);
            }
        }
        for (i, o) in raw.outlier_detection.iter().enumerate() {
            let path = format!("traffic_control.outlier_detection[{i}]");
            let target = self.target(&path, &o.service, o.version.as_deref(), services, declared);
            let base = self.duration_or(
                &format!("{path}.base_ejection"),
                o.base_ejection.as_deref(),
                Duration::from_secs(30),
            );
            let max = self.duration_or(
                &format!("{path}.max_ejection"),
                o.max_ejection.as_deref(),
                Duration::from_secs(300),
            );
            if o.consecutive_failures == Some(0) {
                self.fail(format!("{path}.consecutive_failures"), "must be at least 1");
            }
            let percent = o.max_ejection_percent.unwrap_or(50);
            if percent > 100 {
                self.fail(
                    format!("{path}.max_ejection_percent"),
                    format!("{percent} is not a percentage from 0 to 100"),
                );
            }
            if let (Some((service, version)), Some(base), Some(max)) = (target, base, max)
                && percent <= 100
                && o.consecutive_failures != Some(0)
            {
                if max < base {
                    self.fail(
                        format!("{path}.max_ejection"),
                        "must not be shorter than base_ejection",
                    );
                    continue;
                }
                tc.outlier_detection.push(OutlierDetection {
                    service,
                    version,
                    consecutive_failures: o.consecutive_failures.unwrap_or(5),
                    base_ejection: base,
                    max_ejection: max,
                    max_ejection_percent: percent,
                });
            }
        }
        for (i, h) in raw.health_checks.iter().enumerate() {
            let path = format!("traffic_control.health_checks[{i}]");
            let target = self.target(&path, &h.service, h.version.as_deref(), services, declared);
            if !h.path.starts_with('/') {
                self.fail(
                    format!("{path}.path"),
                    format!("`{}` must start with /", h.path),
                );
            }
            let interval = self.duration_or(
                &format!("{path}.interval"),
                h.interval.as_deref(),
                Duration::from_secs(10),
            );
            let timeout = self.duration_or(
                &format!("{path}.timeout"),
                h.timeout.as_deref(),
                Duration::from_secs(1),
            );
            for (key, v) in [
                ("healthy_threshold", h.healthy_threshold),
                ("unhealthy_threshold", h.unhealthy_threshold),
            ] {
                if v == Some(0) {
                    self.fail(format!("{path}.{key}"), "must be at least 1");
                }
            }
            let expect = match &h.expect_status {
                Some(t) => self.status_range(&format!("{path}.expect_status"), t),
                None => Some(StatusRange { from: 200, to: 299 }),
            };
            if let (Some((service, version)), Some(interval), Some(timeout), Some(expect)) =
                (target, interval, timeout, expect)
                && h.path.starts_with('/')
                && h.healthy_threshold != Some(0)
                && h.unhealthy_threshold != Some(0)
            {
                tc.health_checks.push(HealthCheck {
                    service,
                    version,
                    path: h.path.clone(),
                    interval,
                    timeout,
                    healthy_threshold: h.healthy_threshold.unwrap_or(2),
                    unhealthy_threshold: h.unhealthy_threshold.unwrap_or(3),
                    expect,
                });
            }
        }
        tc
    }

    pub(super) fn duration_or(
        &mut self,
        path: &str,
        text: Option<&str>,
        default: Duration,
    ) -> Option<Duration> {
        match text {
            Some(t) => self.duration(path, t),
            None => Some(default),
        }
    }

    /// A service, and optionally one of its versions (`None`: every version).
    pub(super) fn target(
        &mut self,
        path: &str,
        service: &str,
        version: Option<&str>,
        services: &[Service],
        declared: &[String],
    ) -> Option<(usize, Option<usize>)> {
        let s = self.service_ref(&format!("{path}.service"), service, services, declared)?;
        match version {
            None => Some((s, None)),
            Some(v) => {
                let names: Vec<&str> = services[s]
                    .versions
                    .iter()
                    .map(|v| v.name.as_str())
                    .collect();
                let v = self.version_ref(&format!("{path}.version"), v, &names)?;
                Some((s, Some(v)))
            }
        }
    }

    pub(super) fn rate_limit(
        &mut self,
        path: &str,
        rl: &RawRateLimit,
        services: &[Service],
        declared: &[String],
    ) -> Option<RateLimit> {
        let service = self.service_ref(&format!("{path}.service"), &rl.service, services, declared);
        let (key, key_trusted_only) = match &rl.key {
            Some(k) => {
                let (spec, trusted_only) = self.trusted_key(&format!("{path}.key"), k);
                (spec.map(Some), trusted_only)
            }
            None => (Some(None), false),
        };
        let rate = self.rate(&format!("{path}.rate"), &rl.rate);
        let headers_on_allowed = match rl.headers.as_deref() {
            None | Some("refused") => false,
            Some("always") => true,
            Some(other) => {
                self.fail(
                    format!("{path}.headers"),
                    format!("unknown choice `{other}`: use `refused` or `always`"),
                );
                false
            }
        };
        if rl.burst == Some(0) {
            self.fail(format!("{path}.burst"), "must be at least 1");
        }
        if let Some(p) = &rl.path_prefix
            && !p.starts_with('/')
        {
            self.fail(
                format!("{path}.path_prefix"),
                format!("`{p}` must start with /"),
            );
        }
        let backend = match rl.backend.as_deref() {
            None | Some("local") => {
                for (k, set) in [
                    ("redis_url", rl.redis_url.is_some()),
                    ("on_redis_error", rl.on_redis_error.is_some()),
                    ("timeout", rl.timeout.is_some()),
                ] {
                    if set {
                        self.fail(
                            format!("{path}.{k}"),
                            format!("`{k}` is only used with `backend: redis`"),
                        );
                    }
                }
                Some(LimitBackend::Local)
            }
            Some("redis") => {
                let url = match &rl.redis_url {
                    Some(u) => self.redis_url(&format!("{path}.redis_url"), u),
                    None => {
                        self.fail(
                            format!("{path}.redis_url"),
                            "`backend: redis` needs `redis_url`, e.g. redis://127.0.0.1:6379",
                        );
                        None
                    }
                };
                let timeout = self.duration_or(
                    &format!("{path}.timeout"),
                    rl.timeout.as_deref(),
                    Duration::from_millis(20),
                );
                let on_error = match rl.on_redis_error.as_deref() {
                    None | Some("allow") => Some(OnRedisError::Allow),
                    Some("deny") => Some(OnRedisError::Deny),
                    Some(other) => {
                        self.fail(
                            format!("{path}.on_redis_error"),
                            format!("unknown action `{other}`: use `allow` or `deny`"),
                        );
                        None
                    }
                };
                Some(LimitBackend::Redis {
                    url: url?,
                    timeout: timeout?,
                    on_error: on_error?,
                })
            }
            Some(other) => {
                self.fail(
                    format!("{path}.backend"),
                    format!("unknown backend `{other}`: use `local` or `redis`"),
                );
                None
            }
        };
        let (requests, per) = rate?;
        if rl.burst == Some(0) {
            return None;
        }
        Some(RateLimit {
            service: service?,
            path_prefix: rl.path_prefix.clone().filter(|p| p.starts_with('/')),
            key: key?,
            requests,
            per,
            burst: rl.burst.unwrap_or(requests).max(1),
            backend: backend?,
            headers_on_allowed,
            key_trusted_only,
        })
    }

    /// `5xx`, `503`, `500-504`, `connect_error`, `timeout`.
    pub(super) fn failure_kinds(
        &mut self,
        path: &str,
        raw: Option<&Vec<String>>,
    ) -> Option<FailureKinds> {
        let Some(list) = raw else {
            return Some(FailureKinds::default());
        };
        let mut kinds = FailureKinds {
            statuses: Vec::new(),
            connect_errors: false,
            timeouts: false,
        };
        let mut ok = true;
        for (i, item) in list.iter().enumerate() {
            match item.as_str() {
                "connect_error" => kinds.connect_errors = true,
                "timeout" => kinds.timeouts = true,
                other => match self.status_range(&format!("{path}[{i}]"), other) {
                    Some(r) => kinds.statuses.push(r),
                    None => ok = false,
                },
            }
        }
        ok.then_some(kinds)
    }

    pub(super) fn retry(
        &mut self,
        path: &str,
        r: &RawRetry,
        services: &[Service],
        declared: &[String],
    ) -> Option<Retry> {
        let service = self.service_ref(&format!("{path}.service"), &r.service, services, declared);
        let per_try_timeout = match &r.per_try_timeout {
            Some(t) => Some(self.duration(&format!("{path}.per_try_timeout"), t)?),
            None => None,
        };
        let retry_on = self.failure_kinds(&format!("{path}.retry_on"), r.retry_on.as_ref());
        let budget = r.budget.unwrap_or(0.2);
        if !(budget > 0.0 && budget <= 1.0) {
            self.fail(
                format!("{path}.budget"),
                format!("{budget} must be a fraction in (0, 1], e.g. 0.2"),
            );
        }
        if r.attempts == Some(0) {
            self.fail(
                format!("{path}.attempts"),
                "must be at least 1 (retries after the first try)",
            );
        }
        if r.attempts.is_some_and(|a| a > 10) {
            self.fail(format!("{path}.attempts"), "at most 10 retries");
        }
        let attempts = r.attempts.unwrap_or(1);
        if !(budget > 0.0 && budget <= 1.0 && (1..=10).contains(&attempts)) {
            return None;
        }
        Some(Retry {
            service: service?,
            attempts,
            per_try_timeout,
            retry_on: retry_on?,
            budget,
            min_concurrent: r.min_concurrent.unwrap_or(3),
        })
    }

    pub(super) fn circuit_breaker(
        &mut self,
        path: &str,
        cb: &RawCircuitBreaker,
        services: &[Service],
        declared: &[String],
    ) -> Option<CircuitBreaker> {
        let service =
            self.service_ref(&format!("{path}.service"), &cb.service, services, declared)?;
        let names: Vec<&str> = services[service]
            .versions
            .iter()
            .map(|v| v.name.as_str())
            .collect();
        let version = self.version_ref(&format!("{path}.version"), &cb.version, &names);
        let fallback = match &cb.fallback {
            Some(RawFallback::Version(f)) => {
                let idx = self.version_ref(&format!("{path}.fallback"), f, &names);
                if idx.is_some() && idx == version {
                    self.fail(
                        format!("{path}.fallback"),
                        "a version cannot fall back to itself",
                    );
                }
                Some(idx.map(Fallback::Version))
            }
            Some(RawFallback::Static(r)) => {
                Some(self.static_response(&format!("{path}.fallback"), r))
            }
            None => None,
        };
        let failure_on = self.failure_kinds(&format!("{path}.failure_on"), cb.failure_on.as_ref());
        let rate = |v: &mut Self, key: &str, value: Option<f64>, default: f64| -> Option<f64> {
            let x = value.unwrap_or(default);
            if !(x > 0.0 && x <= 1.0) {
                v.fail(
                    format!("{path}.{key}"),
                    format!("{x} must be a fraction in (0, 1], e.g. 0.5 for 50%"),
                );
                return None;
            }
            Some(x)
        };
        let failure_rate_threshold = rate(
            self,
            "failure_rate_threshold",
            cb.failure_rate_threshold,
            0.5,
        );
        let slow_call_rate_threshold = rate(
            self,
            "slow_call_rate_threshold",
            cb.slow_call_rate_threshold,
            1.0,
        );
        let slow_call_duration = cb
            .slow_call_duration
            .as_ref()
            .map(|d| self.duration(&format!("{path}.slow_call_duration"), d));
        let window = match &cb.window {
            None => Some(BreakerWindow::Count(100)),
            Some(w) if w.size == 0 => {
                self.fail(format!("{path}.window.size"), "must be at least 1");
                None
            }
            Some(w) => {
                match w.kind.as_str() {
                    "count" => Some(BreakerWindow::Count(w.size)),
                    "time" => Some(BreakerWindow::Time(Duration::from_secs(w.size.into()))),
                    other => {
                        self.fail(format!("{path}.window.kind"), format!("unknown window kind `{other}`: use `count` or `time` (size in seconds)"));
                        None
                    }
                }
            }
        };
        let open_for = match &cb.open_for {
            Some(d) => self.duration(&format!("{path}.open_for"), d),
            None => Some(Duration::from_secs(60)),
        };
        let minimum_calls = cb.minimum_calls.unwrap_or(match window {
            Some(BreakerWindow::Count(n)) => n,
            _ => 100,
        });
        Some(CircuitBreaker {
            service,
            version: version?,
            failure_rate_threshold: failure_rate_threshold?,
            slow_call_duration: slow_call_duration.map(|d| d.ok_or(())).transpose().ok()?,
            slow_call_rate_threshold: slow_call_rate_threshold?,
            minimum_calls,
            window: window?,
            open_for: open_for?,
            half_open_calls: cb.half_open_calls.unwrap_or(10).max(1),
            failure_on: failure_on?,
            fallback: fallback.map(|f| f.ok_or(())).transpose().ok()?,
            fallback_non_idempotent: cb.fallback_non_idempotent.unwrap_or(false),
        })
    }

    pub(super) fn static_response(
        &mut self,
        path: &str,
        r: &RawStaticResponse,
    ) -> Option<Fallback> {
        let status = http::StatusCode::from_u16(r.status)
            .ok()
            .filter(|_| (200..=599).contains(&r.status));
        if status.is_none() {
            self.fail(
                format!("{path}.status"),
                format!("{} is not an HTTP status from 200 to 599", r.status),
            );
        }
        let mut headers = Vec::new();
        for (name, value) in &r.headers {
            let n = self.header_name(&format!("{path}.headers.{name}"), name);
            match http::HeaderValue::from_str(value) {
                Ok(v) => {
                    if let Some(n) = n {
                        headers.push((n, v));
                    }
                }
                Err(_) => self.fail(
                    format!("{path}.headers.{name}"),
                    format!("`{value}` is not a valid header value"),
                ),
            }
        }
        if headers.len() != r.headers.len() {
            return None;
        }
        Some(Fallback::Static(StaticResponse {
            status: status?,
            headers,
            body: r.body.clone().unwrap_or_default(),
        }))
    }
}
