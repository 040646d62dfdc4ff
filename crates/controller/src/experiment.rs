//! An experiment's results: per variant its exposures, error rate, latency and business events;
//! each variant against the control with the configured checks (or, without an analysis, the
//! error rate and p99 latency), at a confidence split over the variants; and the
//! sample-ratio-mismatch check of the distinct units (not requests: one heavy user is one unit)
//! against the configured weights. Also where the controller records a business event for the
//! variant its user is bucketed into.

use std::collections::BTreeMap;

use graylane_analysis::{CheckResult, CheckSpec, Sample, evaluate_variants, sample_ratio_mismatch};
use graylane_api::{EventAttribution, EventSummary, ExperimentResults, VariantResult};
use graylane_config::{Analysis, StatusRange};

use crate::analysis::spec;
use graylane_rollout::Kind;

use crate::analysis::totals;
use crate::controller::{Controller, find, unknown_service};
use crate::error::ControlError;

/// The errors of an experiment without an analysis section: every 5xx.
pub const DEFAULT_ERROR_CODES: [StatusRange; 1] = [StatusRange { from: 500, to: 599 }];

/// `variants`: (name, version, weight percent) in bucket order, the control first; `units`:
/// the distinct units of each variant (in that order) and their sampling level;
/// `observe(version)` gives (exposures, totals since start).
pub(crate) fn results(
    service: &str,
    variants: &[(String, String, f64)],
    analysis: Option<&Analysis>,
    (units, level): &(Vec<u64>, u32),
    observe: impl Fn(&str) -> (u64, Sample),
) -> ExperimentResults {
    let observed: Vec<(u64, Sample)> = variants.iter().map(|(_, v, _)| observe(v)).collect();
    let (min_requests, alpha) =
        analysis.map_or((100, 0.05), |a| (a.min_requests, 1.0 - a.confidence));
    let specs: Vec<CheckSpec> = match analysis {
        Some(a) => a.checks.iter().filter_map(spec).collect(),
        None => Vec::new(),
    };
    let specs = if specs.is_empty() {
        vec![
            CheckSpec::ErrorRate {
                max: None,
                max_increase: Some(0.0),
            },
            CheckSpec::Latency {
                percentile: 99.0,
                max_ms: None,
                max_ratio: Some(1.0),
            },
        ]
    } else {
        specs
    };
    let mut comparisons: Vec<Vec<CheckResult>> = vec![Vec::new(); variants.len()];
    if let Some((control, others)) = observed.split_first() {
        let others: Vec<Sample> = others.iter().map(|(_, s)| s.clone()).collect();
        for spec in &specs {
            let results = evaluate_variants(spec, &control.1, &others, min_requests, alpha);
            for (i, r) in results.into_iter().enumerate() {
                comparisons[i + 1].push(r);
            }
        }
    }
    // On the sampled counts themselves, not the estimates: a uniform sample of units tests
    // the split exactly as the whole would, with its own (smaller) number of units.
    let srm = sample_ratio_mismatch(
        units,
        &variants.iter().map(|(_, _, w)| *w).collect::<Vec<_>>(),
    );
    let ms = |s: &Sample, q: f64| s.latency.quantile(q).map(|d| d.as_secs_f64() * 1000.0);
    ExperimentResults {
        service: service.to_string(),
        control: variants.first().map_or_else(String::new, |v| v.0.clone()),
        variants: variants
            .iter()
            .zip(observed.iter())
            .zip(comparisons)
            .enumerate()
            .map(
                |(i, (((name, version, weight), (exposures, s)), comparisons))| VariantResult {
                    name: name.clone(),
                    version: version.clone(),
                    weight: *weight,
                    exposures: *exposures,
                    units: units.get(i).map_or(0, |n| n.saturating_mul(1 << level)),
                    requests: s.requests,
                    errors: s.errors,
                    error_rate: (s.requests > 0).then(|| s.errors as f64 / s.requests as f64),
                    latency_p50_ms: ms(s, 0.5),
                    latency_p99_ms: ms(s, 0.99),
                    events: s
                        .events
                        .iter()
                        .map(|(name, e)| {
                            (
                                name.clone(),
                                EventSummary {
                                    count: e.count,
                                    mean: (e.count > 0).then(|| e.sum / e.count as f64),
                                },
                            )
                        })
                        .collect(),
                    comparisons,
                },
            )
            .collect(),
        srm,
    }
}

impl Controller {
    /// `Ok` when `service` has a release (so events can be attributed), else which ones do.
    pub fn check_release(&self, service: &str) -> Result<(), ControlError> {
        find(&self.lock(), service).map(|_| ())
    }

    /// Records a business event for the user whose bucketing key is `key`, attributed to the
    /// version (experiment variant) that user is bucketed into.
    pub fn post_event(
        &self,
        service: &str,
        key: &str,
        event: &str,
        value: Option<f64>,
    ) -> Result<EventAttribution, ControlError> {
        let variant_of = {
            let state = self.lock();
            let m = find(&state, service)?;
            match &m.plan.kind {
                Kind::Experiment { variants } => {
                    let svc = state.config.service(service);
                    variants
                        .iter()
                        .filter_map(|(name, v, _)| {
                            Some((svc?.versions.get(*v)?.name.clone(), name.clone()))
                        })
                        .collect()
                }
                _ => BTreeMap::new(),
            }
        };
        if value.is_some_and(|v| !v.is_finite()) {
            return Err(ControlError::BadEvent(
                "`value` must be a finite number".to_string(),
            ));
        }
        let version = self.plane.assign(service, key).ok_or_else(|| {
            ControlError::BadEvent(format!(
                "service `{service}` has no release to attribute events to"
            ))
        })?;
        self.events
            .record(service, &version, event, value)
            .map_err(|e| ControlError::BadEvent(e.to_string()))?;
        Ok(EventAttribution {
            service: service.to_string(),
            variant: variant_of.get(&version).cloned(),
            version,
        })
    }

    /// An experiment's results since the gateway started: per variant its exposures, error
    /// rate, latency and events, effects against the control with their intervals, and the
    /// sample-ratio-mismatch check.
    pub fn experiment_results(&self, service: &str) -> Result<ExperimentResults, ControlError> {
        let (variants, analysis) = {
            let state = self.lock();
            let m = find(&state, service)?;
            let Kind::Experiment { variants } = &m.plan.kind else {
                return Err(ControlError::NotAnExperiment {
                    service: service.to_string(),
                    strategy: m.plan.kind.as_str(),
                });
            };
            let svc = state
                .config
                .service(service)
                .ok_or_else(|| unknown_service(&state, service))?;
            let variants: Vec<(String, String, f64)> = variants
                .iter()
                .filter_map(|(name, v, w)| {
                    Some((
                        name.clone(),
                        svc.versions.get(*v)?.name.clone(),
                        w.percent(),
                    ))
                })
                .collect();
            (
                variants,
                svc.release.as_ref().and_then(|r| r.analysis.clone()),
            )
        };
        let versions: Vec<&str> = variants.iter().map(|(_, v, _)| v.as_str()).collect();
        let units = self.plane.units(service, &versions);
        Ok(crate::experiment::results(
            service,
            &variants,
            analysis.as_ref(),
            &units,
            |version| {
                let codes = analysis
                    .as_ref()
                    .map_or(&crate::experiment::DEFAULT_ERROR_CODES[..], |a| {
                        &a.error_codes
                    });
                let observed = self.plane.observe(service, version);
                (
                    observed.bucketed,
                    totals(
                        &observed,
                        &self.events_of(service, version, &observed),
                        codes,
                        0,
                    ),
                )
            },
        ))
    }

    /// The business events of `version` of `service`: those posted here and, on a fleet node,
    /// the other nodes' (in `observed`).
    pub(crate) fn events_of(
        &self,
        service: &str,
        version: &str,
        observed: &crate::analysis::Observation,
    ) -> BTreeMap<String, crate::events::EventTotals> {
        let mut events = self.events.totals(service, version);
        crate::events::add_events(&mut events, &observed.events);
        events
    }
}
