//! Business events (`POST /api/v1/events`): a conversion, an order value… posted for a user and
//! attributed to the version (or experiment variant) that user is bucketed into, so the analysis
//! can compare them per version. Kept as running totals per (service, version, event) since
//! start, like the request metrics; the analysis diffs two snapshots to judge a window.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// Distinct event names kept per service, so a misbehaving client cannot grow memory without
/// bound.
pub const MAX_EVENT_NAMES: usize = 64;

/// Running totals of one event for one version.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EventTotals {
    /// Events recorded.
    pub count: u64,
    /// The sum of their values (an event without a value counts as 1).
    pub sum: f64,
    /// The sum of their values' squares, for the variance.
    pub sum_sq: f64,
}

impl EventTotals {
    /// Adds `other`'s totals (another node's, or an earlier life's).
    pub fn add(&mut self, other: &EventTotals) {
        self.count = self.count.saturating_add(other.count);
        self.sum += other.sum;
        self.sum_sq += other.sum_sq;
    }
}

/// Adds every event of `from` to `into`.
pub fn add_events(into: &mut BTreeMap<String, EventTotals>, from: &BTreeMap<String, EventTotals>) {
    for (name, t) in from {
        into.entry(name.clone()).or_default().add(t);
    }
}

/// event → version → totals.
type ByEvent = BTreeMap<String, BTreeMap<String, EventTotals>>;

/// This process's running totals of business events, by service, event name and version.
#[derive(Default)]
pub struct EventLog {
    /// By service.
    totals: Mutex<BTreeMap<String, ByEvent>>,
}

/// Why an event was not recorded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EventError {
    /// The service already has [`MAX_EVENT_NAMES`] event names and this one is new.
    #[error(
        "service `{service}` already has {MAX_EVENT_NAMES} distinct event names; `{event}` was not recorded"
    )]
    TooManyNames {
        /// The event's service.
        service: String,
        /// The new event name that was refused.
        event: String,
    },
}

impl EventLog {
    /// Adds one `event` of `version` of `service`, with `value` (1 when `None`) to its totals;
    /// refused when it would be the service's event name past [`MAX_EVENT_NAMES`].
    pub fn record(
        &self,
        service: &str,
        version: &str,
        event: &str,
        value: Option<f64>,
    ) -> Result<(), EventError> {
        let mut totals = self.totals.lock().unwrap_or_else(|e| e.into_inner());
        let by_event = totals.entry(service.to_string()).or_default();
        if !by_event.contains_key(event) && by_event.len() >= MAX_EVENT_NAMES {
            return Err(EventError::TooManyNames {
                service: service.to_string(),
                event: event.to_string(),
            });
        }
        let t = by_event
            .entry(event.to_string())
            .or_default()
            .entry(version.to_string())
            .or_default();
        let v = value.unwrap_or(1.0);
        t.count += 1;
        t.sum += v;
        t.sum_sq += v * v;
        Ok(())
    }

    /// Every (service, version) with its events' totals, by event name: what a fleet node
    /// reports.
    pub fn all(&self) -> Vec<(String, String, BTreeMap<String, EventTotals>)> {
        let totals = self.totals.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: BTreeMap<(String, String), BTreeMap<String, EventTotals>> = BTreeMap::new();
        for (service, by_event) in totals.iter() {
            for (event, by_version) in by_event {
                for (version, t) in by_version {
                    out.entry((service.clone(), version.clone()))
                        .or_default()
                        .insert(event.clone(), *t);
                }
            }
        }
        out.into_iter().map(|((s, v), e)| (s, v, e)).collect()
    }

    /// Every event's totals for `version` of `service`, by event name.
    pub fn totals(&self, service: &str, version: &str) -> BTreeMap<String, EventTotals> {
        let totals = self.totals.lock().unwrap_or_else(|e| e.into_inner());
        totals
            .get(service)
            .map(|by_event| {
                by_event
                    .iter()
                    .filter_map(|(name, by_version)| {
                        Some((name.clone(), *by_version.get(version)?))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_add_up_per_version_and_event() {
        let log = EventLog::default();
        log.record("shop", "v2", "purchase", Some(10.0)).unwrap();
        log.record("shop", "v2", "purchase", Some(30.0)).unwrap();
        log.record("shop", "v1", "purchase", None).unwrap();
        let v2 = log.totals("shop", "v2")["purchase"];
        assert_eq!((v2.count, v2.sum, v2.sum_sq), (2, 40.0, 1000.0));
        assert_eq!(log.totals("shop", "v1")["purchase"].sum, 1.0);
        assert!(log.totals("shop", "v3").is_empty());
    }

    #[test]
    fn event_names_are_bounded_per_service() {
        let log = EventLog::default();
        for i in 0..MAX_EVENT_NAMES {
            log.record("shop", "v1", &format!("e{i}"), None).unwrap();
        }
        assert!(log.record("shop", "v1", "one-more", None).is_err());
        assert!(
            log.record("shop", "v2", "e0", None).is_ok(),
            "known names still count"
        );
        assert!(log.record("other", "v1", "one-more", None).is_ok());
    }
}
