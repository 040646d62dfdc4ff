//! `traffic_control` and Redis segments: what a valid section turns into, and the located error
//! each kind of mistake gets.

use std::path::Path;
use std::time::Duration;

use graylane_config::{
    BreakerWindow, Config, ConfigError, Fallback, LimitBackend, OnRedisError, SegmentSource,
    StatusRange,
};

fn with(traffic: &str) -> String {
    format!(
        "listeners: [{{ bind: 127.0.0.1:8080 }}]
segments:
  beta: {{ source: redis, url: \"redis://127.0.0.1:6379\", key: graylane:beta, refresh: 2s }}
services:
  - name: payment
    match: {{ path_prefix: /api/payment }}
    versions:
      stable: {{ endpoints: [127.0.0.1:9001] }}
      canary: {{ endpoints: [127.0.0.1:9002] }}
traffic_control:
{traffic}"
    )
}

fn load(yaml: &str) -> Result<Config, Vec<ConfigError>> {
    graylane_config::load_str(yaml, "t.yaml", Path::new(".")).map_err(|e| e.errors)
}

fn error_at(yaml: &str, key: &str, says: &str) {
    let errors = load(yaml).expect_err("the configuration must be refused");
    assert!(
        errors
            .iter()
            .any(|e| e.key == key && e.message.contains(says) && e.line.is_some()),
        "no located error at `{key}` saying {says:?}: {:#?}",
        errors.iter().map(ToString::to_string).collect::<Vec<_>>()
    );
}

#[test]
fn every_kind_of_policy_parses_into_the_model() {
    let config = load(&with(
        "  rate_limits:
    - service: payment
      path_prefix: /api/payment/checkout
      key: \"header:X-User-Id\"
      rate: 6000/min
      burst: 50
    - service: payment
      rate: 100/s
      backend: redis
      redis_url: redis://127.0.0.1:6379
      on_redis_error: deny
  circuit_breakers:
    - service: payment
      version: canary
      failure_rate_threshold: 0.5
      window: { kind: time, size: 10 }
      failure_on: [5xx, connect_error]
      fallback: { status: 503, headers: { Retry-After: \"5\" }, body: \"try later\" }
  concurrency_limits:
    - { service: payment, version: canary, max: 64 }
  retries:
    - { service: payment, attempts: 2, per_try_timeout: 500ms, retry_on: [connect_error, 503] }
  outlier_detection:
    - { service: payment, consecutive_failures: 3, base_ejection: 10s }
  health_checks:
    - { service: payment, version: canary, path: /healthz, interval: 2s, expect_status: 2xx }
",
    ))
    .unwrap_or_else(|e| panic!("{e:#?}"));
    let tc = &config.traffic_control;
    let route = &tc.rate_limits[0];
    assert_eq!(route.path_prefix.as_deref(), Some("/api/payment/checkout"));
    assert_eq!(
        (route.requests, route.per, route.burst),
        (6000, Duration::from_secs(60), 50)
    );
    assert_eq!(route.backend, LimitBackend::Local);
    assert_eq!(
        tc.rate_limits[1].backend,
        LimitBackend::Redis {
            url: "redis://127.0.0.1:6379".to_string(),
            timeout: Duration::from_millis(20),
            on_error: OnRedisError::Deny,
        }
    );
    let breaker = &tc.circuit_breakers[0];
    assert_eq!(breaker.window, BreakerWindow::Time(Duration::from_secs(10)));
    assert_eq!(
        breaker.failure_on.statuses,
        [StatusRange { from: 500, to: 599 }]
    );
    assert!(breaker.failure_on.connect_errors && !breaker.failure_on.timeouts);
    let Some(Fallback::Static(page)) = &breaker.fallback else {
        panic!("{:?}", breaker.fallback)
    };
    assert_eq!(
        (page.status.as_u16(), page.body.as_str()),
        (503, "try later")
    );
    assert_eq!(tc.concurrency_limits[0].max, 64);
    let retry = &tc.retries[0];
    assert_eq!(
        (retry.attempts, retry.budget, retry.min_concurrent),
        (2, 0.2, 3)
    );
    assert_eq!(retry.per_try_timeout, Some(Duration::from_millis(500)));
    assert_eq!(tc.outlier_detection[0].max_ejection_percent, 50);
    assert_eq!(
        tc.health_checks[0].expect,
        StatusRange { from: 200, to: 299 }
    );
    assert_eq!(
        config.segments[0].source,
        SegmentSource::Redis {
            url: "redis://127.0.0.1:6379".to_string(),
            key: "graylane:beta".to_string(),
            refresh: Duration::from_secs(2),
            max_staleness: Duration::from_secs(300),
        }
    );
}

#[test]
fn a_fallback_version_is_a_version_of_the_service() {
    let config = load(&with(
        "  circuit_breakers:
    - { service: payment, version: canary, fallback: stable }
",
    ))
    .unwrap();
    assert!(matches!(
        config.traffic_control.circuit_breakers[0].fallback,
        Some(Fallback::Version(1))
    ));
    error_at(
        &with(
            "  circuit_breakers:\n    - { service: payment, version: canary, fallback: stabel }\n",
        ),
        "traffic_control.circuit_breakers[0].fallback",
        "did you mean `stable`",
    );
}

#[test]
fn bad_policies_are_refused_with_their_location() {
    let cases = [
        (
            "  rate_limits:\n    - { service: payment, rate: 0/s }\n",
            "traffic_control.rate_limits[0].rate",
            "",
        ),
        (
            "  rate_limits:\n    - { service: payment, rate: 10/s, backend: redis }\n",
            "traffic_control.rate_limits[0].redis_url",
            "needs `redis_url`",
        ),
        (
            "  rate_limits:\n    - { service: payment, rate: 10/s, backend: redis, redis_url: \"http://x\" }\n",
            "traffic_control.rate_limits[0].redis_url",
            "not a Redis URL",
        ),
        (
            "  rate_limits:\n    - { service: payment, rate: 10/s, on_redis_error: deny }\n",
            "traffic_control.rate_limits[0].on_redis_error",
            "only used with `backend: redis`",
        ),
        (
            "  circuit_breakers:\n    - { service: payment, version: canary, failure_rate_threshold: 1.5 }\n",
            "traffic_control.circuit_breakers[0].failure_rate_threshold",
            "fraction",
        ),
        (
            "  circuit_breakers:\n    - { service: payment, version: canary, failure_on: [5xx, teapot] }\n",
            "traffic_control.circuit_breakers[0].failure_on[1]",
            "not a status",
        ),
        (
            "  circuit_breakers:\n    - { service: payment, version: canary, fallback: { status: 42 } }\n",
            "traffic_control.circuit_breakers[0].fallback.status",
            "not an HTTP status",
        ),
        (
            "  concurrency_limits:\n    - { service: payment, max: 0 }\n",
            "traffic_control.concurrency_limits[0].max",
            "at least 1",
        ),
        (
            "  retries:\n    - { service: payment, budget: 2 }\n",
            "traffic_control.retries[0].budget",
            "fraction",
        ),
        (
            "  retries:\n    - { service: paymnet }\n",
            "traffic_control.retries[0].service",
            "did you mean `payment`",
        ),
        (
            "  outlier_detection:\n    - { service: payment, max_ejection_percent: 120 }\n",
            "traffic_control.outlier_detection[0].max_ejection_percent",
            "percentage",
        ),
        (
            "  health_checks:\n    - { service: payment, version: nope, path: /healthz }\n",
            "traffic_control.health_checks[0].version",
            "unknown version",
        ),
        (
            "  health_checks:\n    - { service: payment, path: healthz }\n",
            "traffic_control.health_checks[0].path",
            "must start with /",
        ),
    ];
    for (traffic, key, says) in cases {
        error_at(&with(traffic), key, says);
    }
}

#[test]
fn a_redis_segment_needs_its_url_and_key() {
    let yaml = "listeners: [{ bind: 127.0.0.1:8080 }]
segments:
  beta: { source: redis, key: beta }
  gamma: { source: redis, url: \"redis://127.0.0.1:6379\" }
  delta: { values: [a], url: \"redis://127.0.0.1:6379\" }
";
    error_at(yaml, "segments.beta.url", "needs `url`");
    error_at(yaml, "segments.gamma.key", "needs `key`");
    error_at(yaml, "segments.delta.url", "only used with `source: redis`");
}
