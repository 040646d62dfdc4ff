//! Prometheus metrics of the controller, computed at scrape time from its state:
//! `graylane_release_weight{service,version}` (percent), `graylane_release_step{service}`,
//! `graylane_release_state{service,state}` (1 for the current state),
//! `graylane_analysis_decision{service,decision}` (1 for the latest decision),
//! `graylane_experiment_srm_p_value{service}` and `graylane_experiment_srm_flagged{service}`,
//! and `graylane_webhook_deliveries_total{result}`.

use std::sync::Arc;

use graylane_notify::Notifier;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use crate::Controller;

/// Reads the controller (and the webhook notifier) on every scrape.
pub struct ReleaseCollector {
    /// The controller whose releases are exposed.
    pub controller: Arc<Controller>,
    /// The webhook notifier whose deliveries are counted; `None` exposes no delivery counts.
    pub notifier: Option<Notifier>,
    /// The clock, so pause timers read the same as the API's.
    pub now_ms: fn() -> i64,
}

impl std::fmt::Debug for ReleaseCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReleaseCollector")
    }
}

const DECISIONS: [&str; 5] = ["continue", "promote", "hold", "pause", "fail"];
const STATES: [&str; 5] = [
    "progressing",
    "paused",
    "completed",
    "aborted",
    "rolled_back",
];

/// A gauge family with one series per (service, value): 1 for each service's current value,
/// 0 for the others, so a dashboard can graph states without parsing labels.
fn one_hot<'a>(
    encoder: &mut DescriptorEncoder<'_>,
    (name, help): (&str, &str),
    (label, values): (&str, &[&str]),
    current: impl Iterator<Item = (&'a str, &'a str)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (service, now) in current {
        for v in values {
            let labels = [("service", service), (label, *v)];
            ConstGauge::new(i64::from(now == *v)).encode(family.encode_family(&labels)?)?;
        }
    }
    Ok(())
}

impl Collector for ReleaseCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let releases = self.controller.releases((self.now_ms)());
        {
            let mut weight = encoder.encode_descriptor(
                "graylane_release_weight",
                "Percent of a release's bucketed traffic per version",
                None,
                MetricType::Gauge,
            )?;
            for r in &releases {
                for (version, pct) in &r.weights {
                    let labels = [
                        ("service", r.service.as_str()),
                        ("version", version.as_str()),
                    ];
                    ConstGauge::new(*pct).encode(weight.encode_family(&labels)?)?;
                }
            }
        }
        {
            let mut step = encoder.encode_descriptor(
                "graylane_release_step",
                "Index of a release's current step",
                None,
                MetricType::Gauge,
            )?;
            for r in &releases {
                let labels = [("service", r.service.as_str())];
                ConstGauge::new(r.step as i64).encode(step.encode_family(&labels)?)?;
            }
        }
        one_hot(
            &mut encoder,
            (
                "graylane_release_state",
                "1 for a release's current state, 0 for the others",
            ),
            ("state", &STATES),
            releases
                .iter()
                .map(|r| (r.service.as_str(), r.state.as_str())),
        )?;
        one_hot(
            &mut encoder,
            (
                "graylane_analysis_decision",
                "1 for the latest analysis decision of a release, 0 for the others",
            ),
            ("decision", &DECISIONS),
            releases
                .iter()
                .filter_map(|r| Some((r.service.as_str(), r.analysis.as_ref()?.decision.as_str()))),
        )?;
        {
            let mut p_value = encoder.encode_descriptor(
                "graylane_experiment_srm_p_value",
                "anytime-valid p-value of an experiment's sample-ratio-mismatch check (1 / its Bayes factor)",
                None,
                MetricType::Gauge,
            )?;
            for r in &releases {
                if let Some(srm) = &r.srm {
                    let labels = [("service", r.service.as_str())];
                    ConstGauge::new(srm.p_value).encode(p_value.encode_family(&labels)?)?;
                }
            }
        }
        {
            let mut flagged = encoder.encode_descriptor(
                "graylane_experiment_srm_flagged",
                "1 when an experiment's exposures do not match its weights (Bayes factor ≥ 1000, p ≤ 0.001 at any look)",
                None,
                MetricType::Gauge,
            )?;
            for r in &releases {
                if let Some(srm) = &r.srm {
                    let labels = [("service", r.service.as_str())];
                    ConstGauge::new(i64::from(srm.flagged))
                        .encode(flagged.encode_family(&labels)?)?;
                }
            }
        }
        if let Some(n) = &self.notifier {
            let stats = n.stats();
            let mut deliveries = encoder.encode_descriptor(
                "graylane_webhook_deliveries",
                "Webhook events by outcome: delivered, failed (after retries), dropped (queue full)",
                None,
                MetricType::Counter,
            )?;
            for (result, count) in [
                ("delivered", stats.delivered),
                ("failed", stats.failed),
                ("dropped", stats.dropped),
            ] {
                ConstCounter::new(count)
                    .encode(deliveries.encode_family(&[("result", result)])?)?;
            }
        }
        Ok(())
    }
}
