//! A release's keys: its strategy, steps, variants, sticky cookie, analysis and checks.

use serde::Deserialize;

use super::RawRule;

/// A service's `release:`. `strategy` decides which of the other keys apply; validation
/// refuses the keys of another strategy.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRelease {
    /// `strategy`: `canary`, `blue_green` or `experiment`.
    pub strategy: String,
    /// `baseline`: canary only; the version traffic returns to when the release stops.
    pub baseline: Option<String>,
    /// `candidate`: canary only; the version being tried.
    pub candidate: Option<String>,
    /// `active`: blue_green only; the version all traffic goes to until `promote`.
    pub active: Option<String>,
    /// `preview`: blue_green only; reached by `force` rules, and by everything after `promote`.
    pub preview: Option<String>,
    /// `keep_previous`: blue_green only; a duration, default `10m`, the previous version is
    /// kept for an instant rollback after a switch.
    pub keep_previous: Option<String>,
    /// `variants`: experiment only; two or more, weights adding up to 100.
    #[serde(default)]
    pub variants: Vec<RawVariant>,
    /// `skip_rollback`: default `false`; `true` pauses instead of aborting on a failed analysis.
    pub skip_rollback: Option<bool>,
    /// `force`: rules any of which sends a request to the candidate (or preview).
    #[serde(default)]
    pub force: Vec<RawRule>,
    /// `bucket_by`: the bucketing key; default `ip`.
    pub bucket_by: Option<RawKey>,
    /// `salt`: mixed into the bucketing hash; defaults to the candidate's name (an experiment's
    /// variant names joined by `,`).
    pub salt: Option<String>,
    /// `sticky`: keep each client's bucket in a signed cookie.
    pub sticky: Option<RawSticky>,
    /// `steps`: canary only; the weights the release moves through, in order, or `adaptive`:
    /// the analysis sets the pace within `adaptive:`'s bounds.
    #[serde(default)]
    pub steps: RawSteps,
    /// `adaptive`: `steps: adaptive` only; the bounds of the adaptive pace.
    pub adaptive: Option<RawAdaptive>,
    /// `max_bad_requests`: `steps: adaptive` only; the exposure budget, the most requests the
    /// candidate may serve while it looks worse than the baseline.
    pub max_bad_requests: Option<u64>,
    /// `mirror_methods`: canary only; the methods a `mirror` step copies to the candidate,
    /// default `[GET, HEAD, OPTIONS]`.
    pub mirror_methods: Option<Vec<String>>,
    /// `analysis`: the automatic judgement of each step.
    pub analysis: Option<RawAnalysis>,
    /// `gates`: webhooks asked before (or after) the release moves.
    #[serde(default)]
    pub gates: Vec<RawGate>,
}

/// One entry of a release's `gates:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGate {
    /// `kind`: `pre_rollout`, `pre_step`, `confirm_promotion` or `post_rollback`.
    pub kind: String,
    /// `url`: an `http://` or `https://` URL the gate's request is `POST`ed to.
    pub url: String,
    /// `timeout`: a duration per attempt; default `5s`, at most `60s`.
    pub timeout: Option<String>,
    /// `retries`: attempts after the first; default 2, at most 10.
    pub retries: Option<u32>,
}

/// One entry of an experiment's `variants:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVariant {
    /// `name`: the variant's name, distinct within the experiment.
    pub name: String,
    /// `version`: the service's version this variant is served by; distinct per variant.
    pub version: String,
    /// `weight`: percent of the bucketed traffic, 0 to 100 in steps of 0.001.
    pub weight: f64,
}

/// A key, written `header:X-User-Id` or `{ key: "header:X-User-Id", trusted_only: true }`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawKey {
    /// `header:NAME`, `cookie:NAME`, `query:NAME` or `ip`.
    Plain(String),
    /// `{ key, trusted_only }`.
    Full(RawKeyFull),
}

/// The long form of a key: `{ key: "header:X-User-Id", trusted_only: true }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKeyFull {
    /// `key`: `header:NAME`, `cookie:NAME`, `query:NAME` or `ip`.
    pub key: String,
    /// `trusted_only`: default `false`; `true` reads the key only from a listener's
    /// `trusted_hops`, from anyone else it counts as missing.
    pub trusted_only: Option<bool>,
}

/// A release's `sticky:`: keep each client's bucket in a signed cookie.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSticky {
    /// `cookie`: the cookie's name.
    pub cookie: String,
    /// `max_age`: a duration sent as the cookie's `Max-Age`; a session cookie when unset.
    pub max_age: Option<String>,
}

/// A canary's `steps:`: a list of steps, or a word (`adaptive`).
#[derive(Debug)]
pub enum RawSteps {
    /// `[{ weight, mirror, pause }, ...]`.
    List(Vec<RawStep>),
    /// A word in place of the list; only `adaptive` is valid.
    Word(String),
}

impl Default for RawSteps {
    fn default() -> Self {
        RawSteps::List(Vec::new())
    }
}

/// Dispatches on the YAML node's shape rather than through `#[serde(untagged)]`, which would
/// hide a step's own errors (an unknown key, with its path) behind "did not match any variant".
impl<'de> Deserialize<'de> for RawSteps {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Shape;
        impl<'de> serde::de::Visitor<'de> for Shape {
            type Value = RawSteps;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a list of steps `[{ weight: 5, pause: 10m }, ...]` or `adaptive`")
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawSteps, E> {
                Ok(RawSteps::Word(v.to_string()))
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<RawSteps, A::Error> {
                Vec::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))
                    .map(RawSteps::List)
            }
        }
        deserializer.deserialize_any(Shape)
    }
}

/// `adaptive:`: the bounds within which the analysis moves an adaptive canary's weight.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdaptive {
    /// `start`: default 1; the first weight, and the floor a shrink stops at, in percent.
    pub start: Option<f64>,
    /// `max`: default 100; the highest weight before the release completes, in percent.
    pub max: Option<f64>,
    /// `grow`: default 2.0; the factor a passing interval multiplies the weight by.
    pub grow: Option<f64>,
    /// `shrink`: default 0.5; the factor an interval leaning the wrong way multiplies it by.
    pub shrink: Option<f64>,
    /// `min_pause`: default `30s`; the shortest time between two changes of the weight.
    pub min_pause: Option<String>,
    /// `max_pause`: default `10m`; how long the weight may stay without a conclusive verdict
    /// before the release says it is held.
    pub max_pause: Option<String>,
}

/// One entry of a canary's `steps:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStep {
    /// `weight`: percent of the traffic on the candidate, 0 to 100 in steps of 0.001.
    pub weight: Option<f64>,
    /// `mirror`: instead of `weight`, percent of the requests copied to the candidate (its
    /// answers discarded, users served by the baseline), 1 to 100.
    pub mirror: Option<f64>,
    /// `pause`: a duration or `manual`; unset moves on at once.
    pub pause: Option<String>,
}

/// A release's `analysis:`: the checks that judge the candidate against the baseline.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAnalysis {
    /// `interval`: required; a duration between judgements, e.g. `30s`.
    pub interval: String,
    /// `min_requests`: default 100; requests each of candidate and baseline needs at the step
    /// before a check can pass or fail.
    pub min_requests: Option<u64>,
    /// `checks`: what the candidate is judged on.
    #[serde(default)]
    pub checks: Vec<RawCheck>,
    /// `failure_limit`: default 1; failing intervals that fail the release.
    pub failure_limit: Option<u32>,
    /// `failure_mode`: `consecutive` (default) or `total` (at the step).
    pub failure_mode: Option<String>,
    /// `success_needed`: default 1; passing intervals in a row that pass the step.
    pub success_needed: Option<u32>,
    /// `on_failure`: `rollback` (default) or `pause`.
    pub on_failure: Option<String>,
    /// `max_wait_without_data`: a duration without enough data after which the release pauses;
    /// unset holds forever.
    pub max_wait_without_data: Option<String>,
    /// `confidence`: default 0.95; of every interval a verdict rests on.
    pub confidence: Option<f64>,
    /// `error_codes`: default `["5xx"]`; statuses counted as errors (`503`, `5xx`, `500-504`).
    pub error_codes: Option<Vec<String>>,
    /// `metrics_source`: `in_process` (default) or `prometheus` (for `query` checks).
    pub metrics_source: Option<String>,
    /// `prometheus_url`: the Prometheus server `query` checks are sent to.
    pub prometheus_url: Option<String>,
}

/// One entry of `analysis.checks`: either a built-in `metric` with its bounds, or a
/// Prometheus `query`. Which bounds apply depends on the metric; validation refuses the others.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCheck {
    /// `metric`: `error_rate`, `latency_pNN` (e.g. `latency_p99`), `throughput`, `event_rate`
    /// or `event_mean`.
    pub metric: Option<String>,
    /// `name`: a `query` check's name in verdicts; defaults to the query.
    pub name: Option<String>,
    /// `query`: PROMQL; `{{service}}`, `{{baseline}}`, `{{candidate}}` are filled in.
    pub query: Option<String>,
    /// `event`: for `event_rate` and `event_mean`, the event name posted to `/api/v1/events`.
    pub event: Option<String>,
    /// `max`: `error_rate`: the highest error rate, a fraction (`0.05` is 5%); `query`: the
    /// highest value.
    pub max: Option<f64>,
    /// `min`: `query`: the lowest value.
    pub min: Option<f64>,
    /// `max_increase`: `error_rate`: how much the candidate's rate may exceed the baseline's,
    /// a fraction.
    pub max_increase: Option<f64>,
    /// `max_ms`: `latency_pNN`: the highest latency, in milliseconds.
    pub max_ms: Option<f64>,
    /// `max_ratio`: `latency_pNN`: the highest candidate / baseline latency ratio.
    pub max_ratio: Option<f64>,
    /// `min_rps`: `throughput`: the fewest requests per second.
    pub min_rps: Option<f64>,
    /// `min_change`: `event_rate` and `event_mean`: the smallest change against the baseline;
    /// negative for the drop tolerated.
    pub min_change: Option<f64>,
}
