//! Per-version time series of each release for the dashboard's live charts: one point a second
//! (requests/s, error rate, p50 and p99 latency) for the last 15 minutes, computed from the data
//! plane's running totals, so the request path does no extra work for them.

use std::collections::{BTreeMap, VecDeque};

use graylane_api::{Point, SeriesView};

use crate::analysis::Observation;
use graylane_rollout::Kind;

use crate::controller::{Controller, find};
use crate::error::ControlError;

/// Points kept per version: 15 minutes at one a second.
pub const POINTS: usize = 900;
/// How often a point is taken.
pub const INTERVAL_MS: i64 = 1000;

struct Track {
    last: Observation,
    last_ms: i64,
    points: VecDeque<Point>,
}

/// Every release's series: service → version → track.
#[derive(Default)]
pub(crate) struct Series {
    tracks: BTreeMap<String, BTreeMap<String, Track>>,
    last_ms: i64,
}

impl Series {
    /// Whether a point is due (once a second).
    pub(crate) fn due(&self, now_ms: i64) -> bool {
        now_ms - self.last_ms >= INTERVAL_MS
    }

    /// Records one point per (service, version) in `observed`, from the totals' change since
    /// the previous point; releases and versions no longer observed are dropped.
    pub(crate) fn record(
        &mut self,
        now_ms: i64,
        observed: BTreeMap<String, BTreeMap<String, Observation>>,
    ) {
        self.last_ms = now_ms;
        self.tracks
            .retain(|service, _| observed.contains_key(service));
        for (service, versions) in observed {
            let tracks = self.tracks.entry(service).or_default();
            tracks.retain(|version, _| versions.contains_key(version));
            for (version, now) in versions {
                match tracks.get_mut(&version) {
                    None => {
                        tracks.insert(
                            version,
                            Track {
                                last: now,
                                last_ms: now_ms,
                                points: VecDeque::new(),
                            },
                        );
                    }
                    Some(track) => {
                        let point = point(&track.last, &now, track.last_ms, now_ms);
                        track.last = now;
                        track.last_ms = now_ms;
                        track.points.push_back(point);
                        while track.points.len() > POINTS {
                            track.points.pop_front();
                        }
                    }
                }
            }
        }
    }

    /// `service`'s points after `since_ms`.
    pub(crate) fn view(&self, service: &str, since_ms: i64) -> SeriesView {
        SeriesView {
            service: service.to_string(),
            interval_s: INTERVAL_MS as f64 / 1000.0,
            versions: self
                .tracks
                .get(service)
                .map(|tracks| {
                    tracks
                        .iter()
                        .map(|(version, t)| {
                            let points = t
                                .points
                                .iter()
                                .filter(|p| p.t_ms > since_ms)
                                .copied()
                                .collect();
                            (version.clone(), points)
                        })
                        .collect()
                })
                .unwrap_or_default(),
        }
    }
}

fn point(before: &Observation, now: &Observation, before_ms: i64, now_ms: i64) -> Point {
    let count = |o: &Observation, errors_only: bool| -> u64 {
        o.codes
            .iter()
            .filter(|(code, _)| !errors_only || (500..600).contains(*code))
            .map(|(_, n)| n)
            .sum()
    };
    let requests = count(now, false).saturating_sub(count(before, false));
    let errors = count(now, true).saturating_sub(count(before, true));
    let seconds = ((now_ms - before_ms) as f64 / 1000.0).max(0.001);
    let latency = now.latency.sub(&before.latency);
    let ms = |q: f64| latency.quantile(q).map(|d| d.as_secs_f64() * 1000.0);
    Point {
        t_ms: now_ms,
        rps: requests as f64 / seconds,
        error_rate: (requests > 0).then(|| errors as f64 / requests as f64),
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
    }
}

impl Controller {
    /// Takes the once-a-second point of every release's versions (the dashboard's charts).
    pub fn sample_series(&self, now_ms: i64) {
        if !self
            .series
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .due(now_ms)
        {
            return;
        }
        let versions: Vec<(String, Vec<String>)> = {
            let state = self.lock();
            state
                .releases
                .iter()
                .filter_map(|(name, m)| {
                    let svc = state.config.service(name)?;
                    let mut vs = vec![m.plan.baseline, m.plan.candidate];
                    if let Kind::Experiment { variants } = &m.plan.kind {
                        vs.extend(variants.iter().map(|v| v.1));
                    }
                    vs.sort_unstable();
                    vs.dedup();
                    let names = vs
                        .into_iter()
                        .filter_map(|v| Some(svc.versions.get(v)?.name.clone()))
                        .collect();
                    Some((name.clone(), names))
                })
                .collect()
        };
        let observed = versions
            .into_iter()
            .map(|(service, names)| {
                let by_version = names
                    .into_iter()
                    .map(|v| {
                        let o = self.plane.observe(&service, &v);
                        (v, o)
                    })
                    .collect();
                (service, by_version)
            })
            .collect();
        self.series
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record(now_ms, observed);
    }

    /// `service`'s live series after `since_ms`.
    pub fn series(&self, service: &str, since_ms: i64) -> Result<SeriesView, ControlError> {
        find(&self.lock(), service)?;
        Ok(self
            .series
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .view(service, since_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use graylane_analysis::Histogram;

    fn observed(ok: u64, errors: u64, latency_ms: u64) -> Observation {
        let mut latency = Histogram::new();
        for _ in 0..ok + errors {
            latency.record(latency_ms * 1_000_000);
        }
        Observation {
            codes: [(200, ok), (503, errors)].into_iter().collect(),
            latency,
            bucketed: 0,
            events: BTreeMap::new(),
        }
    }

    fn at(
        service: &str,
        version: &str,
        o: Observation,
    ) -> BTreeMap<String, BTreeMap<String, Observation>> {
        [(
            service.to_string(),
            [(version.to_string(), o)].into_iter().collect(),
        )]
        .into_iter()
        .collect()
    }

    #[test]
    fn a_point_is_the_change_of_the_totals_over_the_second() {
        let mut s = Series::default();
        s.record(1_000, at("shop", "v1", observed(100, 0, 5)));
        assert!(
            s.view("shop", 0).versions["v1"].is_empty(),
            "the first totals are the zero"
        );
        s.record(3_000, at("shop", "v1", observed(280, 20, 5)));
        let p = s.view("shop", 0).versions["v1"][0];
        assert_eq!(p.rps, 100.0);
        assert_eq!(p.error_rate, Some(0.1));
        let p50 = p.p50_ms.unwrap();
        assert!((4.4..=5.7).contains(&p50), "{p50}");
        assert!(
            s.view("shop", 3_000).versions["v1"].is_empty(),
            "only points after since_ms"
        );
    }

    #[test]
    fn tracks_are_bounded_and_dropped_with_their_release() {
        let mut s = Series::default();
        for i in 0..(POINTS as u64 + 10) {
            s.record(i as i64 * 1000, at("shop", "v1", observed(i, 0, 1)));
        }
        assert_eq!(s.view("shop", 0).versions["v1"].len(), POINTS);
        s.record(2_000_000, BTreeMap::new());
        assert!(s.view("shop", 0).versions.is_empty());
        assert!(s.due(2_001_000) && !s.due(2_000_500));
    }
}
