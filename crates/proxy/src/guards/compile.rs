//! Compiling `traffic_control` into the guards of each service and version, reusing the state
//! of every policy that did not change.

use std::sync::Arc;

use graylane_config::{Config, Fallback, LimitBackend, TrafficControl};
use graylane_redis::{Client, GlobalLimiter, GlobalLimiterConfig, OnError};
use graylane_traffic::breaker::{BreakerConfig, CircuitBreaker, Window};
use graylane_traffic::concurrency::ConcurrencyLimit;
use graylane_traffic::health::HealthState;
use graylane_traffic::outlier::{OutlierConfig, OutlierDetector};
use graylane_traffic::rate::{KeyedRateLimiter, RateLimiter};
use graylane_traffic::retry::RetryBudget;

use super::state::{GuardState, Part};
use super::{FallbackRoute, LimitRoute, Limiter, RetryPolicy, ServiceGuards, VersionGuards};

/// Keys tracked per keyed limit before idle ones are evicted.
const MAX_KEYS: usize = 100_000;

/// Compiles the policies of `config`: per service, then per version of each service.
pub fn compile(
    config: &Config,
    state: &GuardState,
) -> (Vec<ServiceGuards>, Vec<Vec<VersionGuards>>) {
    let tc: &TrafficControl = &config.traffic_control;
    let mut used = Vec::new();
    let mut services: Vec<ServiceGuards> = config
        .services
        .iter()
        .map(|_| ServiceGuards::default())
        .collect();
    let mut versions: Vec<Vec<VersionGuards>> = config
        .services
        .iter()
        .map(|s| {
            s.versions
                .iter()
                .map(|_| VersionGuards::default())
                .collect()
        })
        .collect();
    let name = |s: usize| config.services[s].name.as_str();
    let vname = |s: usize, v: usize| config.services[s].versions[v].name.as_str();

    // State is keyed by names and the settings that shape it, never by positions in the file:
    // adding a service or a limit before this one, or editing a fallback page, keeps every
    // limiter's and breaker's state (and its counters) as it was.
    let mut limit_ids: Vec<String> = Vec::new();
    for rl in &tc.rate_limits {
        let route = rl.path_prefix.as_deref().unwrap_or("*");
        let per_key = rl
            .key
            .as_ref()
            .map_or_else(|| "-".to_string(), |k| k.to_string());
        let id = format!("{}:{route}:{per_key}", name(rl.service));
        // Two limits alike in all this are told apart by their order among themselves.
        let nth = limit_ids.iter().filter(|other| **other == id).count();
        limit_ids.push(id.clone());
        let id = if nth == 0 { id } else { format!("{id}#{nth}") };
        let key = format!(
            "limit:{id}:{}/{:?}:{}:{:?}",
            rl.requests, rl.per, rl.burst, rl.backend
        );
        used.push(key.clone());
        let part = state.part(key, || {
            if let LimitBackend::Redis {
                url,
                timeout,
                on_error,
            } = &rl.backend
            {
                let config = GlobalLimiterConfig {
                    key_prefix: format!("graylane:ratelimit:{id}:"),
                    requests: rl.requests,
                    per: rl.per,
                    // Redis's burst is on top of the steady rate; the configuration's is the
                    // whole bucket.
                    burst: rl.burst.saturating_sub(1),
                    timeout: *timeout,
                    on_error: match on_error {
                        graylane_config::OnRedisError::Allow => OnError::Allow,
                        graylane_config::OnRedisError::Deny => OnError::Deny,
                    },
                };
                let made = state.in_redis(|| {
                    Client::open(url).and_then(|client| GlobalLimiter::new(client, config))
                })?;
                return match made {
                    Ok(g) => Some(Part::Limiter(Arc::new(Limiter::Global(Arc::new(g))))),
                    Err(e) => {
                        tracing::error!(service = name(rl.service), "rate limit not applied: {e}");
                        None
                    }
                };
            }
            let limiter = match rl.key {
                Some(_) => KeyedRateLimiter::new(rl.requests, rl.per, rl.burst, MAX_KEYS)
                    .map(Limiter::PerKey),
                None => RateLimiter::new(rl.requests, rl.per, rl.burst).map(Limiter::Whole),
            };
            match limiter {
                Ok(l) => Some(Part::Limiter(Arc::new(l))),
                Err(e) => {
                    tracing::error!(service = name(rl.service), "rate limit not applied: {e}");
                    None
                }
            }
        });
        if let Some(Part::Limiter(limiter)) = part {
            let per_key = rl
                .key
                .as_ref()
                .map_or_else(String::new, |k| format!(" per {k}"));
            let service = &mut services[rl.service];
            service.limits_global |= matches!(*limiter, Limiter::Global(_));
            let refill = rl.per.as_secs_f64() * f64::from(rl.burst) / f64::from(rl.requests);
            let policy = format!("{};w={}", rl.burst, refill.ceil().max(1.0) as u64);
            service.limits.push(LimitRoute {
                path_prefix: rl.path_prefix.as_deref().map(Into::into),
                key: rl.key.clone(),
                limiter,
                burst: rl.burst,
                policy: http::HeaderValue::try_from(policy)
                    .unwrap_or_else(|_| http::HeaderValue::from_static("0")),
                headers_on_allowed: rl.headers_on_allowed,
                key_trusted_only: rl.key_trusted_only,
                describe: format!(
                    "{} requests per {}{per_key} (burst {})",
                    rl.requests,
                    humantime::format_duration(rl.per),
                    rl.burst
                )
                .into(),
            });
        }
    }

    for cb in &tc.circuit_breakers {
        let v = &mut versions[cb.service][cb.version];
        v.failure_on = cb.failure_on.clone();
        v.fallback = cb.fallback.as_ref().map(|f| match f {
            Fallback::Version(i) => FallbackRoute::Version(*i),
            Fallback::Static(r) => FallbackRoute::Static(r.clone()),
        });
        v.fallback_non_idempotent = cb.fallback_non_idempotent;
        let key = format!(
            "breaker:{}:{}:{:?}:{}:{}:{:?}:{}:{:?}:{}",
            name(cb.service),
            vname(cb.service, cb.version),
            cb.window,
            cb.minimum_calls,
            cb.failure_rate_threshold,
            cb.slow_call_duration,
            cb.slow_call_rate_threshold,
            cb.open_for,
            cb.half_open_calls,
        );
        used.push(key.clone());
        let config = BreakerConfig {
            window: match cb.window {
                graylane_config::BreakerWindow::Count(n) => Window::Count(n),
                graylane_config::BreakerWindow::Time(d) => Window::Time(d),
            },
            minimum_calls: cb.minimum_calls,
            failure_rate_threshold: cb.failure_rate_threshold,
            slow_call_duration: cb.slow_call_duration,
            slow_call_rate_threshold: cb.slow_call_rate_threshold,
            open_for: cb.open_for,
            half_open_calls: cb.half_open_calls,
        };
        let part = state.part(key, || match CircuitBreaker::new(config) {
            Ok(b) => Some(Part::Breaker(b)),
            Err(e) => {
                tracing::error!(
                    service = name(cb.service),
                    "circuit breaker not applied: {e}"
                );
                None
            }
        });
        if let Some(Part::Breaker(b)) = part {
            v.breaker = Some(b);
        }
    }

    for cl in &tc.concurrency_limits {
        let targets: Vec<usize> = match cl.version {
            Some(v) => vec![v],
            None => (0..config.services[cl.service].versions.len()).collect(),
        };
        for v in targets {
            let key = format!(
                "concurrency:{}:{}:{}",
                name(cl.service),
                vname(cl.service, v),
                cl.max
            );
            used.push(key.clone());
            if let Some(Part::Concurrency(c)) = state.part(key, || {
                ConcurrencyLimit::new(cl.max)
                    .ok()
                    .map(|c| Part::Concurrency(Arc::new(c)))
            }) {
                versions[cl.service][v].concurrency = Some(c);
            }
        }
    }

    for r in &tc.retries {
        let key = format!(
            "budget:{}:{}:{}",
            name(r.service),
            r.budget,
            r.min_concurrent
        );
        used.push(key.clone());
        if let Some(Part::Budget(budget)) = state.part(key, || {
            RetryBudget::new(r.budget, r.min_concurrent)
                .ok()
                .map(|b| Part::Budget(Arc::new(b)))
        }) {
            services[r.service].retry = Some(RetryPolicy {
                attempts: r.attempts,
                per_try_timeout: r.per_try_timeout,
                retry_on: r.retry_on.clone(),
                budget,
            });
        }
    }

    for od in &tc.outlier_detection {
        let targets: Vec<usize> = match od.version {
            Some(v) => vec![v],
            None => (0..config.services[od.service].versions.len()).collect(),
        };
        for v in targets {
            let endpoints = &config.services[od.service].versions[v].endpoints;
            // Keyed on the addresses, not their count: when registry instances come and go,
            // an ejection must not pass to the instance that took a departed one's index.
            let key = format!(
                "outlier:{}:{}:{endpoints:?}:{}:{:?}:{:?}:{}",
                name(od.service),
                vname(od.service, v),
                od.consecutive_failures,
                od.base_ejection,
                od.max_ejection,
                od.max_ejection_percent,
            );
            used.push(key.clone());
            let detector = OutlierConfig {
                consecutive_failures: od.consecutive_failures,
                base_ejection: od.base_ejection,
                max_ejection: od.max_ejection,
                max_ejection_percent: od.max_ejection_percent,
            };
            if let Some(Part::Outlier(o)) = state.part(key, || {
                OutlierDetector::new(endpoints.len(), detector)
                    .ok()
                    .map(|o| Part::Outlier(Arc::new(o)))
            }) {
                versions[od.service][v].outlier = Some(o);
            }
        }
    }

    for hc in &tc.health_checks {
        let targets: Vec<usize> = match hc.version {
            Some(v) => vec![v],
            None => (0..config.services[hc.service].versions.len()).collect(),
        };
        for v in targets {
            let endpoints = config.services[hc.service].versions[v].endpoints.len();
            let key = format!(
                "health:{}:{}:{:?}:{}:{:?}:{:?}:{}:{}:{:?}",
                name(hc.service),
                vname(hc.service, v),
                config.services[hc.service].versions[v].endpoints,
                hc.path,
                hc.interval,
                hc.timeout,
                hc.healthy_threshold,
                hc.unhealthy_threshold,
                hc.expect,
            );
            used.push(key.clone());
            if let Some(Part::Health(h)) = state.part(key, || {
                HealthState::new(endpoints, hc.healthy_threshold, hc.unhealthy_threshold)
                    .ok()
                    .map(|h| Part::Health(Arc::new(h)))
            }) {
                versions[hc.service][v].health = Some(h);
                versions[hc.service][v].probe = Some(hc.clone());
            }
        }
    }
    state.retain_for(&used);
    (services, versions)
}
