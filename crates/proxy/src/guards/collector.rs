//! Traffic-control state as metrics, read at scrape time.

use std::sync::Arc;

use graylane_traffic::breaker::CircuitBreaker;

use super::GuardState;

/// Exports traffic-control state at scrape time: every version's circuit breaker
/// (`graylane_circuit_state{service,version,state}`, 1 for the current state, and
/// `graylane_circuit_transitions_total{service,version}`), Redis errors of the global rate
/// limits (`graylane_ratelimit_redis_errors_total`) and stale Redis segments
/// (`graylane_segment_stale{segment}`).
pub struct BreakerCollector(
    pub Arc<arc_swap::ArcSwap<crate::snapshot::Snapshot>>,
    pub Arc<GuardState>,
);

impl std::fmt::Debug for BreakerCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BreakerCollector")
    }
}

impl prometheus_client::collector::Collector for BreakerCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        use graylane_traffic::breaker::State;
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::MetricType;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;
        let snapshot = self.0.load_full();
        let breakers: Vec<(&str, &str, &CircuitBreaker)> = snapshot
            .services
            .iter()
            .flat_map(|s| {
                s.versions.iter().filter_map(move |v| {
                    Some((s.name.as_str(), v.name.as_str(), v.guards.breaker.as_ref()?))
                })
            })
            .collect();
        {
            let mut state = encoder.encode_descriptor(
                "graylane_circuit_state",
                "1 for a version's current circuit-breaker state, 0 for the others",
                None,
                MetricType::Gauge,
            )?;
            for (service, version, b) in &breakers {
                let now = b.state();
                for s in [State::Closed, State::Open, State::HalfOpen] {
                    let labels = [
                        ("service", *service),
                        ("version", *version),
                        ("state", s.as_str()),
                    ];
                    ConstGauge::new(i64::from(now == s)).encode(state.encode_family(&labels)?)?;
                }
            }
        }
        {
            let mut transitions = encoder.encode_descriptor(
                "graylane_circuit_transitions",
                "Circuit-breaker state changes of a version",
                None,
                MetricType::Counter,
            )?;
            for (service, version, b) in &breakers {
                let labels = [("service", *service), ("version", *version)];
                ConstCounter::new(b.transitions()).encode(transitions.encode_family(&labels)?)?;
            }
        }
        let errors = self.1.redis_errors();
        let stale = self.1.stale_segments(&snapshot.config);
        let redis_errors = encoder.encode_descriptor(
            "graylane_ratelimit_redis_errors",
            "Global rate-limit checks Redis could not answer (on_redis_error applied)",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(errors).encode(redis_errors)?;
        let mut stale_gauge = encoder.encode_descriptor(
            "graylane_segment_stale",
            "1 while a Redis segment's members are not known to be current: not read since the start (the members cached in the data dir are served), or not for max_staleness (it counts as empty)",
            None,
            MetricType::Gauge,
        )?;
        for (name, is_stale) in &stale {
            let labels = [("segment", *name)];
            ConstGauge::new(i64::from(*is_stale)).encode(stale_gauge.encode_family(&labels)?)?;
        }
        Ok(())
    }
}
