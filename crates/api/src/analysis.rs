//! Analysis: a release's checks and judgements, the dashboard's live series, business events
//! and an experiment's results.

use std::collections::BTreeMap;

use graylane_analysis::{CheckResult, Judgement, Srm};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A release's analysis: its checks and its latest judgements with their figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AnalysisView {
    /// The service the release is of.
    pub service: String,
    /// Whether the release has an `analysis` section.
    pub configured: bool,
    /// How often the analysis judges, in seconds.
    pub interval_s: Option<f64>,
    /// The configured checks by name (`error_rate`, `latency_p99`, a query's name, ...).
    pub checks: Vec<String>,
    /// The latest judgement: every check's verdict (pass, fail, inconclusive) with its figures
    /// and the decision.
    #[schema(value_type = Option<Object>)]
    pub latest: Option<Judgement>,
    /// Up to the last 50 judgements, oldest first.
    #[schema(value_type = Vec<Object>)]
    pub history: Vec<Judgement>,
}

/// One second of one version's traffic.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Point {
    /// The second's end, Unix milliseconds.
    pub t_ms: i64,
    /// Requests per second.
    pub rps: f64,
    /// 5xx share; `None` in a second without requests.
    pub error_rate: Option<f64>,
    /// Median latency, milliseconds.
    pub p50_ms: Option<f64>,
    /// 99th-percentile latency, milliseconds.
    pub p99_ms: Option<f64>,
}

/// A release's live series: per version, one point a second.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SeriesView {
    /// The service the release is of.
    pub service: String,
    /// Seconds between points.
    pub interval_s: f64,
    /// Points by version, oldest first.
    pub versions: BTreeMap<String, Vec<Point>>,
}

/// One business event, or a list of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventBody {
    /// The service whose release the event counts for...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// ...or the experiment (the service name of an experiment release).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub experiment: Option<String>,
    /// The user's bucketing key (the value of the release's `bucket_by`).
    pub key: String,
    /// The event's name, as the checks' `event` says.
    pub event: String,
    /// A value (an order's amount, say) for `event_mean`; 1 when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
}

/// `POST /api/v1/events` takes one event or a JSON array of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum EventBatch {
    /// One event.
    One(EventBody),
    /// Several, recorded all or none.
    Many(Vec<EventBody>),
}

/// Where a business event was counted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EventAttribution {
    /// The service whose release counted it.
    pub service: String,
    /// The version its user is bucketed into.
    pub version: String,
    /// The experiment variant, for an experiment.
    pub variant: Option<String>,
}

/// What `POST /api/v1/events` recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EventsRecorded {
    /// Where each event was counted, in the order posted.
    pub recorded: Vec<EventAttribution>,
}

/// An experiment's results: per variant its traffic and events, each against the control.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ExperimentResults {
    /// The service of the experiment release.
    pub service: String,
    /// The first variant, which the others are compared with.
    pub control: String,
    /// Every variant, the control first.
    pub variants: Vec<VariantResult>,
    /// Distinct units (bucketing keys) against the configured weights (an anytime-valid Bayes
    /// factor, flagged at 1000, so p ≤ 0.001, at whatever look). Beyond a few thousand units per
    /// variant the test runs on a uniform sample of the units (see `units`).
    #[schema(value_type = Object)]
    pub srm: Srm,
}

/// One variant of an experiment with its figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct VariantResult {
    /// The variant's name.
    pub name: String,
    /// The version it routes to.
    pub version: String,
    /// Configured share, percent.
    pub weight: f64,
    /// Requests bucketed into the variant (with a sticky cookie: users, since a user is
    /// bucketed once).
    pub exposures: u64,
    /// Distinct units (users, by bucketing key) bucketed into the variant: exact up to a few
    /// thousand per variant and worker, an estimate from a uniform sample beyond.
    pub units: u64,
    /// Requests the variant answered.
    pub requests: u64,
    /// Of those, errors (5xx, or the analysis's error codes).
    pub errors: u64,
    /// `errors / requests`; none without requests.
    pub error_rate: Option<f64>,
    /// Median latency, milliseconds.
    pub latency_p50_ms: Option<f64>,
    /// 99th-percentile latency, milliseconds.
    pub latency_p99_ms: Option<f64>,
    /// Business events by name: count and mean value.
    pub events: BTreeMap<String, EventSummary>,
    /// Each check against the control (empty for the control itself).
    #[schema(value_type = Vec<Object>)]
    pub comparisons: Vec<CheckResult>,
}

/// One business event's figures for a variant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EventSummary {
    /// How many were posted.
    pub count: u64,
    /// Their mean value; none without events.
    pub mean: Option<f64>,
}
