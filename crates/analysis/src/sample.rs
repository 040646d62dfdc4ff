//! What one version did in the window being judged.
//!
//! The analysis judges the data gathered *since the current step started*, cumulatively: the
//! confidence sequences in [`crate::stats`] are valid however often they are looked at, so each
//! interval simply looks again at more data. The controller keeps cumulative counters per version
//! and gets a step's window with [`Sample::sub`] against the snapshot taken when the step began.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::histogram::Histogram;

/// Requests, errors, response times and business events of one version over a window.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sample {
    /// Requests answered (the denominator of the error rate and the throughput).
    pub requests: u64,
    /// Requests that count as errors (5xx and upstream failures, as the data plane defines them).
    pub errors: u64,
    /// Response times of those requests.
    pub latency: Histogram,
    /// Length of the window in seconds (the denominator of the throughput).
    pub seconds: f64,
    /// Custom events by name (business events posted to the API, or counts read from a metrics
    /// backend), for the `event_rate` and `event_mean` checks.
    pub events: BTreeMap<String, Events>,
}

impl Sample {
    /// What happened since `earlier`, a previous snapshot of the same cumulative sample. Counts
    /// saturate at 0 (a restarted gateway resets its counters), seconds at 0.
    pub fn sub(&self, earlier: &Sample) -> Sample {
        Sample {
            requests: self.requests.saturating_sub(earlier.requests),
            errors: self.errors.saturating_sub(earlier.errors),
            latency: self.latency.sub(&earlier.latency),
            seconds: (self.seconds - earlier.seconds).max(0.0),
            events: self
                .events
                .iter()
                .map(|(name, e)| {
                    let diff = earlier.events.get(name).map_or(*e, |before| e.sub(before));
                    (name.clone(), diff)
                })
                .collect(),
        }
    }
}

/// Occurrences of one custom event for one version.
///
/// * `event_rate` judges `count / units`: conversions per exposed user, say. When
///   `count ≤ units` each unit is taken to convert at most once (a proportion); otherwise the
///   count is taken as Poisson (several events per unit).
/// * `event_mean` judges `sum / count`, the mean value per event (an order's amount, say), with
///   the variance from `sum_sq`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Events {
    /// How many times the event happened.
    pub count: u64,
    /// Sum of the events' values (0 for events without a value).
    pub sum: f64,
    /// Sum of the squares of the events' values.
    pub sum_sq: f64,
    /// Units exposed to the version (users, sessions). 0 means "per request": the version's
    /// `requests` are used instead.
    pub units: u64,
}

impl Events {
    /// What happened since `earlier`; counts saturate at 0, and so does the sum of squares.
    pub fn sub(&self, earlier: &Events) -> Events {
        Events {
            count: self.count.saturating_sub(earlier.count),
            sum: self.sum - earlier.sum,
            sum_sq: (self.sum_sq - earlier.sum_sq).max(0.0),
            units: self.units.saturating_sub(earlier.units),
        }
    }
}
