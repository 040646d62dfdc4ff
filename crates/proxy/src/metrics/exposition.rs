//! The Prometheus text exposition of the request metrics, encoded from the workers' slots at
//! scrape time.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

use super::route::{Event, FALLBACK_KEY, LATENCY_BUCKETS, REASONS, RouteStats};
use crate::upstream::UpstreamErrorKind;

/// A collector shared with its owner (the registry wants to own a `Box`).
#[derive(Debug)]
pub(super) struct Shared(pub(super) Arc<dyn Collector>);

impl Collector for Shared {
    fn encode(&self, encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        self.0.encode(encoder)
    }
}

/// Encodes the per-route stats at scrape time.
#[derive(Default)]
pub(super) struct RouteCollector(pub(super) Vec<Arc<RouteStats>>);

impl std::fmt::Debug for RouteCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RouteCollector")
    }
}

impl Collector for RouteCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        for (name, help, codes) in [
            (
                "graylane_requests",
                "Requests answered, by service, the version that served them (the fallback for a \
                 fallback) and the status the client received",
                RouteStats::codes as fn(&RouteStats) -> BTreeMap<u16, u64>,
            ),
            (
                "graylane_upstream_attempts",
                "Exchanges with a version's upstreams, retried and fallen-back ones included, by \
                 status (a failed exchange as its 502 or 504)",
                RouteStats::attempt_codes,
            ),
        ] {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for r in &self.0 {
                for (code, n) in codes(r) {
                    let code = code.to_string();
                    let labels = [
                        ("service", r.service.as_str()),
                        ("version", r.version.as_str()),
                        ("code", code.as_str()),
                    ];
                    family
                        .encode_family(&labels)?
                        .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
                }
            }
        }
        for (name, help, event) in [
            (
                "graylane_retries",
                "Failed attempts sent again",
                Event::Retry,
            ),
            (
                "graylane_retry_budget_exhausted",
                "Retries the retry policy allowed and the retry budget refused",
                Event::RetryBudgetExhausted,
            ),
            (
                "graylane_fallbacks",
                "Requests of a version answered by its fallback (another version or a static page)",
                Event::Fallback,
            ),
            (
                "graylane_outlier_ejections",
                "Endpoints of a version ejected by outlier detection",
                Event::Ejection,
            ),
        ] {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for r in &self.0 {
                let n = r.sum(|s| s.events[event.index()].load(Relaxed));
                let labels = [
                    ("service", r.service.as_str()),
                    ("version", r.version.as_str()),
                ];
                family
                    .encode_family(&labels)?
                    .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
            }
        }
        let mut shed = encoder.encode_descriptor(
            "graylane_shed",
            "Attempts a version refused without sending them, by reason",
            None,
            MetricType::Counter,
        )?;
        for r in &self.0 {
            for (reason, event) in [
                ("circuit_open", Event::ShedBreakerOpen),
                ("concurrency", Event::ShedConcurrency),
                ("no_healthy_endpoint", Event::ShedNoEndpoint),
            ] {
                let n = r.sum(|s| s.events[event.index()].load(Relaxed));
                let labels = [
                    ("service", r.service.as_str()),
                    ("version", r.version.as_str()),
                    ("reason", reason),
                ];
                shed.encode_family(&labels)?
                    .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
            }
        }
        let mut mirror = encoder.encode_descriptor(
            "graylane_mirror_requests",
            "Requests a mirror step copied to a version (sent), or did not: too many copies in \
             flight (dropped), a streamed body (skipped)",
            None,
            MetricType::Counter,
        )?;
        for r in &self.0 {
            for (outcome, event) in [
                ("sent", Event::MirrorSent),
                ("dropped", Event::MirrorDropped),
                ("skipped", Event::MirrorSkipped),
            ] {
                let n = r.sum(|s| s.events[event.index()].load(Relaxed));
                if n > 0 {
                    let labels = [
                        ("service", r.service.as_str()),
                        ("version", r.version.as_str()),
                        ("outcome", outcome),
                    ];
                    mirror
                        .encode_family(&labels)?
                        .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
                }
            }
        }
        let mut duration = encoder.encode_descriptor(
            "graylane_request_duration_seconds",
            "Time from request to upstream response headers",
            None,
            MetricType::Histogram,
        )?;
        for r in &self.0 {
            let mut buckets = Vec::with_capacity(LATENCY_BUCKETS.len() + 1);
            let mut count = 0;
            for (i, upper) in LATENCY_BUCKETS
                .iter()
                .copied()
                .chain([f64::INFINITY])
                .enumerate()
            {
                let n = r.sum(|s| s.latency[i].load(Relaxed));
                count += n;
                buckets.push((upper, n));
            }
            let sum = r.sum(|s| s.latency_sum_nanos.load(Relaxed)) as f64 / 1e9;
            let labels = [
                ("service", r.service.as_str()),
                ("version", r.version.as_str()),
            ];
            duration
                .encode_family(&labels)?
                .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
        }
        let mut upgraded = encoder.encode_descriptor(
            "graylane_upgraded_connections",
            "Upgraded connections (WebSocket) open now, by the version that switched protocols",
            None,
            MetricType::Gauge,
        )?;
        for r in &self.0 {
            let labels = [
                ("service", r.service.as_str()),
                ("version", r.version.as_str()),
            ];
            upgraded
                .encode_family(&labels)?
                .encode_gauge(&r.upgraded_open())?;
        }
        let mut errors = encoder.encode_descriptor(
            "graylane_upstream_errors",
            "Requests that got no upstream response, by kind",
            None,
            MetricType::Counter,
        )?;
        for r in &self.0 {
            for (i, kind) in UpstreamErrorKind::ALL.iter().enumerate() {
                let n = r.sum(|s| s.upstream_errors[i].load(Relaxed));
                if n > 0 {
                    let labels = [
                        ("service", r.service.as_str()),
                        ("version", r.version.as_str()),
                        ("kind", kind.label()),
                    ];
                    errors
                        .encode_family(&labels)?
                        .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
                }
            }
        }
        let mut decisions = encoder.encode_descriptor(
            "graylane_routing_decisions",
            "Routing decisions by service, chosen version and reason",
            None,
            MetricType::Counter,
        )?;
        for r in &self.0 {
            for (i, reason) in REASONS.iter().enumerate() {
                let n = r.sum(|s| s.decisions[i].load(Relaxed));
                if n > 0 {
                    let labels = [
                        ("service", r.service.as_str()),
                        ("version", r.version.as_str()),
                        ("reason", *reason),
                    ];
                    decisions
                        .encode_family(&labels)?
                        .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
                }
            }
        }
        let mut fallbacks = encoder.encode_descriptor(
            "graylane_bucket_key_fallbacks",
            "Requests without their release's bucketing key, bucketed on the client IP instead",
            None,
            MetricType::Counter,
        )?;
        let mut per_service: BTreeMap<&str, u64> = BTreeMap::new();
        for r in &self.0 {
            *per_service.entry(r.service.as_str()).or_default() +=
                r.sum(|s| s.decisions[FALLBACK_KEY].load(Relaxed));
        }
        for (service, n) in per_service {
            fallbacks
                .encode_family(&[("service", service)])?
                .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
        }
        Ok(())
    }
}
