//! Releases: the traffic share, strategies, steps, experiments' variants and the analysis that
//! judges a candidate.

use std::time::Duration;

use super::{KeySpec, Rule};

/// A traffic share in thousandths of a percent: `Weight(5_000)` is 5%, `Weight(100_000)` is all.
/// It is also the bucket threshold: a key whose bucket is below it goes to the candidate.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(transparent)]
pub struct Weight(u32);

impl Weight {
    pub const ZERO: Weight = Weight(0);
    pub const FULL: Weight = Weight(100_000);

    /// A weight from a percentage; `None` outside 0–100 or finer than 0.001%.
    pub fn from_percent(percent: f64) -> Option<Weight> {
        if !(0.0..=100.0).contains(&percent) {
            return None;
        }
        let scaled = percent * 1000.0;
        let rounded = scaled.round();
        if (scaled - rounded).abs() > 1e-6 {
            return None;
        }
        Some(Weight(rounded as u32))
    }

    /// A weight from thousandths of a percent, clamped to 100%.
    pub fn from_milli_percent(milli: u32) -> Weight {
        Weight(milli.min(100_000))
    }

    pub fn milli_percent(self) -> u32 {
        self.0
    }

    pub fn percent(self) -> f64 {
        f64::from(self.0) / 1000.0
    }
}

impl std::fmt::Display for Weight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}%", self.percent())
    }
}

/// A release. `baseline` is the version traffic returns to when the release stops (a blue-green
/// release's `active`, an experiment's first variant); `candidate` is the one being tried (a
/// blue-green release's `preview`, an experiment's second variant).
#[derive(Debug, Clone)]
pub struct Release {
    pub strategy: Strategy,
    pub baseline: usize,
    pub candidate: usize,
    /// Any matching rule sends the request to the candidate whatever the weight.
    pub force: Vec<Rule>,
    pub bucket_by: KeySpec,
    /// `bucket_by` is read only from a listener's `trusted_hops`; anyone else's request counts
    /// as lacking the key.
    pub bucket_by_trusted_only: bool,
    /// Mixed into the bucketing hash; defaults to the candidate's name so each new candidate
    /// draws a fresh set of users.
    pub salt: String,
    pub sticky: Option<Sticky>,
    /// Canary steps; empty for the other strategies.
    pub steps: Vec<Step>,
    pub analysis: Option<Analysis>,
    /// A failed analysis pauses the release instead of rolling it back (for changes that
    /// cannot be reversed, such as a schema migration).
    pub skip_rollback: bool,
}

impl Release {
    /// The weight in effect when a release starts: its first step's.
    pub fn initial_weight(&self) -> Weight {
        self.steps.first().map_or(Weight::ZERO, |s| s.weight)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Strategy {
    Canary,
    BlueGreen {
        /// How long the previous active version stays routable after a promotion, so a
        /// rollback is an instant switch back.
        keep_previous: Duration,
    },
    Experiment {
        variants: Vec<Variant>,
    },
}

impl Strategy {
    pub const DEFAULT_KEEP_PREVIOUS: Duration = Duration::from_secs(600);

    pub fn as_str(&self) -> &'static str {
        match self {
            Strategy::Canary => "canary",
            Strategy::BlueGreen { .. } => "blue_green",
            Strategy::Experiment { .. } => "experiment",
        }
    }
}

/// One arm of an experiment: a version and its share of the bucketed traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variant {
    pub name: String,
    pub version: usize,
    pub weight: Weight,
}

#[derive(Debug, Clone)]
pub struct Sticky {
    pub cookie: String,
    pub max_age: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    pub weight: Weight,
    pub pause: Pause,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pause {
    /// No pause: the next step follows at once.
    None,
    /// Wait for a person to promote.
    Manual,
    For(Duration),
}

#[derive(Debug, Clone)]
pub struct Analysis {
    /// How often the checks are judged.
    pub interval: Duration,
    /// Requests each of candidate and baseline needs at the step before a check can pass or
    /// fail; below it the step is held.
    pub min_requests: u64,
    pub checks: Vec<Check>,
    pub failure_limit: u32,
    pub failure_mode: FailureMode,
    /// Consecutive passing intervals at a step that promote to the next step.
    pub success_needed: u32,
    pub on_failure: OnFailure,
    /// Without enough data for this long at a step, the release pauses and says why.
    pub max_wait_without_data: Option<Duration>,
    /// Confidence of every interval a verdict rests on, e.g. 0.95.
    pub confidence: f64,
    /// Response statuses that count as errors (`5xx` by default); a request that got no
    /// upstream response always counts.
    pub error_codes: Vec<StatusRange>,
    /// Where `query` checks are sent.
    pub prometheus_url: Option<http::Uri>,
}

/// Statuses from `from` to `to`, inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusRange {
    pub from: u16,
    pub to: u16,
}

impl StatusRange {
    pub fn contains(self, status: u16) -> bool {
        (self.from..=self.to).contains(&status)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureMode {
    /// `failure_limit` failing intervals in a row.
    Consecutive,
    /// `failure_limit` failing intervals at the step in all.
    Total,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Check {
    ErrorRate {
        max: Option<f64>,
        max_increase: Option<f64>,
    },
    Latency {
        /// The percentile, e.g. 99.0 for `latency_p99`.
        percentile: f64,
        max_ms: Option<f64>,
        max_ratio: Option<f64>,
    },
    Throughput {
        min_rps: f64,
    },
    /// A PromQL query whose value must stay within bounds; `{{service}}`, `{{baseline}}` and
    /// `{{candidate}}` are replaced before it is sent.
    Query {
        name: String,
        query: String,
        max: Option<f64>,
        min: Option<f64>,
    },
    /// Business events per exposed user, candidate vs baseline.
    EventRate {
        event: String,
        min_change: f64,
    },
    /// The mean value of business events, candidate vs baseline.
    EventMean {
        event: String,
        min_change: f64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    Rollback,
    Pause,
}
