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
    /// No traffic: 0%.
    pub const ZERO: Weight = Weight(0);
    /// All traffic: 100%, i.e. 100 000 thousandths of a percent.
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

    /// The weight in thousandths of a percent, 0 to 100 000.
    pub fn milli_percent(self) -> u32 {
        self.0
    }

    /// The weight in percent, 0.0 to 100.0.
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
    /// How traffic moves between `baseline` and `candidate`.
    pub strategy: Strategy,
    /// Index into [`Service::versions`](super::Service::versions) of the baseline.
    pub baseline: usize,
    /// Index into [`Service::versions`](super::Service::versions) of the candidate.
    pub candidate: usize,
    /// Any matching rule sends the request to the candidate whatever the weight.
    pub force: Vec<Rule>,
    /// The key a request is bucketed on (`bucket_by:`); default the client IP.
    pub bucket_by: KeySpec,
    /// `bucket_by` is read only from a listener's `trusted_hops`; anyone else's request counts
    /// as lacking the key.
    pub bucket_by_trusted_only: bool,
    /// Mixed into the bucketing hash; defaults to the candidate's name so each new candidate
    /// draws a fresh set of users.
    pub salt: String,
    /// Keep each client's bucket in a signed cookie; `None`: no cookie.
    pub sticky: Option<Sticky>,
    /// Canary steps; empty for the other strategies. An adaptive canary has one manual step at
    /// its `start` weight: the analysis, not the steps, moves it on.
    pub steps: Vec<Step>,
    /// `steps: adaptive`: the bounds of the adaptive pace; `None` for fixed steps.
    pub adaptive: Option<Adaptive>,
    /// The methods a mirror step copies to the candidate (`mirror_methods:`); by default the
    /// safe ones without TRACE: GET, HEAD, OPTIONS.
    pub mirror_methods: Vec<http::Method>,
    /// The automatic judgement of each step; `None`: steps move on by their pauses alone.
    pub analysis: Option<Analysis>,
    /// A failed analysis pauses the release instead of rolling it back (for changes that
    /// cannot be reversed, such as a schema migration).
    pub skip_rollback: bool,
    /// Webhooks asked before the release moves (`gates:`), in the order configured.
    pub gates: Vec<Gate>,
}

impl Release {
    /// `mirror_methods` when unset: the safe methods of RFC 9110 §9.2.1 but TRACE (which
    /// echoes the request, credentials included, back): a copy of them changes nothing the
    /// baseline's answer depends on. PUT and DELETE are idempotent but not safe: the candidate
    /// would write to whatever it shares with the baseline.
    pub const DEFAULT_MIRROR_METHODS: [http::Method; 3] =
        [http::Method::GET, http::Method::HEAD, http::Method::OPTIONS];

    /// The weight in effect when a release starts: its first step's.
    pub fn initial_weight(&self) -> Weight {
        self.steps.first().map_or(Weight::ZERO, |s| s.weight)
    }

    /// The share copied to the candidate when a release starts: its first step's mirror, if
    /// it is a mirror step.
    pub fn initial_mirror(&self) -> Option<Weight> {
        self.steps.first().and_then(|s| s.mirror)
    }
}

/// `steps: adaptive`: the analysis sets a canary's weight within these bounds, each interval
/// growing it while every check passes, shrinking it while one leans the wrong way.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Adaptive {
    /// The first weight, and the floor a shrink stops at.
    pub start: Weight,
    /// The highest weight; a pass at it completes the release.
    pub max: Weight,
    /// The factor a passing interval multiplies the weight by (> 1).
    pub grow: f64,
    /// The factor an interval leaning the wrong way multiplies the weight by (between 0 and 1).
    pub shrink: f64,
    /// The shortest time between two changes of the weight.
    pub min_pause: Duration,
    /// How long the weight may stay without a conclusive verdict before the release says it is
    /// held.
    pub max_pause: Duration,
    /// The exposure budget: the most requests the candidate may serve while it looks worse
    /// than the baseline; `None`: no budget.
    pub max_bad_requests: Option<u64>,
}

impl Adaptive {
    /// `start` when unset: 1%.
    pub const DEFAULT_START: f64 = 1.0;
    /// `max` when unset: 100%.
    pub const DEFAULT_MAX: f64 = 100.0;
    /// `grow` when unset.
    pub const DEFAULT_GROW: f64 = 2.0;
    /// `shrink` when unset.
    pub const DEFAULT_SHRINK: f64 = 0.5;
    /// `min_pause` when unset: 30 seconds.
    pub const DEFAULT_MIN_PAUSE: Duration = Duration::from_secs(30);
    /// `max_pause` when unset: 10 minutes.
    pub const DEFAULT_MAX_PAUSE: Duration = Duration::from_secs(600);
}

/// How a release shares traffic (`strategy:`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Strategy {
    /// `canary`: the candidate's share moves through the release's `steps`.
    Canary,
    /// `blue_green`: all traffic on the baseline (`active`) until `promote` switches it to the
    /// candidate (`preview`) at once.
    BlueGreen {
        /// How long the previous active version stays routable after a promotion, so a
        /// rollback is an instant switch back.
        keep_previous: Duration,
    },
    /// `experiment`: bucketed traffic split between variants for as long as the release runs.
    Experiment {
        /// Two or more, in bucketing order, weights adding up to 100%.
        variants: Vec<Variant>,
    },
}

impl Strategy {
    /// `keep_previous` when unset: 10 minutes.
    pub const DEFAULT_KEEP_PREVIOUS: Duration = Duration::from_secs(600);

    /// The strategy as written in the file: `canary`, `blue_green`, `experiment`.
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
    /// The variant's name, distinct within the experiment.
    pub name: String,
    /// Index into [`Service::versions`](super::Service::versions); distinct per variant.
    pub version: usize,
    /// The variant's share; the variants' shares add up to 100%.
    pub weight: Weight,
}

/// A sticky cookie (`sticky:`): keeps a client's bucket, signed, across requests.
#[derive(Debug, Clone)]
pub struct Sticky {
    /// The cookie's name.
    pub cookie: String,
    /// Sent as `Max-Age`; `None`: a session cookie.
    pub max_age: Option<Duration>,
}

/// A canary step: the candidate's share and what happens before the next step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// The candidate's share while the step is in effect; zero for a mirror step.
    pub weight: Weight,
    /// A mirror (shadow) step: this share of the requests is copied to the candidate, whose
    /// answers are discarded; users are served by the baseline alone.
    pub mirror: Option<Weight>,
    /// How the step ends.
    pub pause: Pause,
}

/// A release gate (`gates:`): a URL the controller asks, with a JSON body, before (or after) a
/// move of the release; a 2xx answer lets the move happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gate {
    /// When it is asked, and what its answer does.
    pub kind: GateKind,
    /// The `http://` or `https://` URL the request is `POST`ed to.
    pub url: http::Uri,
    /// Per attempt: connect, send and the answer's head and body.
    pub timeout: Duration,
    /// Attempts after the first, for any answer but a 2xx.
    pub retries: u32,
}

impl Gate {
    /// `timeout` when unset: 5 s.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
    /// The longest `timeout` accepted: a gate holds the release's move while it is asked.
    pub const MAX_TIMEOUT: Duration = Duration::from_secs(60);
    /// `retries` when unset: 2.
    pub const DEFAULT_RETRIES: u32 = 2;
    /// The most `retries` accepted.
    pub const MAX_RETRIES: u32 = 10;
}

/// When a [`Gate`] is asked, as Flagger's webhooks are.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum GateKind {
    /// Before the first step sends the candidate any traffic; a failing answer stops the
    /// release (abort, or pause with `on_failure: pause`).
    PreRollout,
    /// Before each step that widens the candidate's share short of 100%; a failing answer
    /// fails the step as a failed analysis does.
    PreStep,
    /// Before the candidate gets all the traffic; a failing answer holds the release at its
    /// weight, asked again every analysis interval, until one passes.
    ConfirmPromotion,
    /// After the release sent everything back to the baseline (abort, failed analysis or gate,
    /// rollback); its answer is only recorded.
    PostRollback,
}

impl GateKind {
    /// Every kind, in the order a release meets them.
    pub const ALL: [GateKind; 4] = [
        GateKind::PreRollout,
        GateKind::PreStep,
        GateKind::ConfirmPromotion,
        GateKind::PostRollback,
    ];

    /// The kind as the configuration writes it: `pre_rollout`, `pre_step`,
    /// `confirm_promotion`, `post_rollback`.
    pub fn as_str(self) -> &'static str {
        match self {
            GateKind::PreRollout => "pre_rollout",
            GateKind::PreStep => "pre_step",
            GateKind::ConfirmPromotion => "confirm_promotion",
            GateKind::PostRollback => "post_rollback",
        }
    }
}

/// How a canary step waits before the next one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pause {
    /// No pause: the next step follows at once.
    None,
    /// Wait for a person to promote.
    Manual,
    /// A timed pause that passes by itself.
    For(Duration),
}

/// A release's analysis (`analysis:`), its defaults applied.
#[derive(Debug, Clone)]
pub struct Analysis {
    /// How often the checks are judged.
    pub interval: Duration,
    /// Requests each of candidate and baseline needs at the step before a check can pass or
    /// fail; below it the step is held.
    pub min_requests: u64,
    /// What the candidate is judged on; every check must pass for an interval to pass.
    pub checks: Vec<Check>,
    /// Failing intervals that fail the release, counted per `failure_mode`; at least 1.
    pub failure_limit: u32,
    /// How failing intervals are counted against `failure_limit`.
    pub failure_mode: FailureMode,
    /// Consecutive passing intervals at a step that promote to the next step.
    pub success_needed: u32,
    /// What a failed release does.
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
    /// The lowest status in the range.
    pub from: u16,
    /// The highest status in the range (inclusive).
    pub to: u16,
}

impl StatusRange {
    /// Whether `status` is in the range.
    pub fn contains(self, status: u16) -> bool {
        (self.from..=self.to).contains(&status)
    }
}

/// How failing analysis intervals count (`failure_mode:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureMode {
    /// `failure_limit` failing intervals in a row.
    Consecutive,
    /// `failure_limit` failing intervals at the step in all.
    Total,
}

/// One analysis check (`checks[]`), comparing candidate and baseline at the current step.
#[derive(Debug, Clone, PartialEq)]
pub enum Check {
    /// `error_rate`: the share of requests that got an error status or no response.
    ErrorRate {
        /// The highest error rate the candidate may have, a fraction (`0.05` is 5%).
        max: Option<f64>,
        /// How much the candidate's error rate may exceed the baseline's, a fraction.
        max_increase: Option<f64>,
    },
    /// `latency_pNN`: a latency percentile.
    Latency {
        /// The percentile, e.g. 99.0 for `latency_p99`.
        percentile: f64,
        /// The highest candidate latency at the percentile, in milliseconds.
        max_ms: Option<f64>,
        /// The highest candidate / baseline latency ratio at the percentile.
        max_ratio: Option<f64>,
    },
    /// `throughput`: the candidate's request rate.
    Throughput {
        /// The fewest requests per second the candidate must serve.
        min_rps: f64,
    },
    /// A PromQL query whose value must stay within bounds; `{{service}}`, `{{baseline}}` and
    /// `{{candidate}}` are replaced before it is sent.
    Query {
        /// The check's name in verdicts; defaults to the query text.
        name: String,
        /// The PromQL text, with its `{{...}}` placeholders.
        query: String,
        /// The highest value that passes.
        max: Option<f64>,
        /// The lowest value that passes.
        min: Option<f64>,
    },
    /// Business events per exposed user, candidate vs baseline.
    EventRate {
        /// The event name, as posted to `/api/v1/events`.
        event: String,
        /// The smallest relative change against the baseline that passes: `-0.05` tolerates a
        /// candidate up to 5% lower.
        min_change: f64,
    },
    /// The mean value of business events, candidate vs baseline.
    EventMean {
        /// The event name, as posted to `/api/v1/events`.
        event: String,
        /// The smallest relative change against the baseline that passes: `-0.05` tolerates a
        /// candidate up to 5% lower.
        min_change: f64,
    },
}

/// What a failed analysis does (`on_failure:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    /// `rollback` (the default): abort; all traffic back to the baseline in the same tick.
    Rollback,
    /// `pause`: hold the release where it is for a person to decide.
    Pause,
}
