//! What the request path records: per (service, version), one cache-line-aligned slot of
//! plain atomics per worker thread, written by that thread alone.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use graylane_analysis::histogram;
use graylane_rules::{Decision, Reason};

use super::units::UnitSample;
use super::{Observed, UnitHashes};
use crate::upstream::UpstreamErrorKind;

/// Upper bounds (seconds) of `graylane_request_duration_seconds` buckets.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Status codes counted in their own lock-free cell; any other code takes a rare slow path.
const COMMON_CODES: [u16; 24] = [
    200, 201, 202, 204, 206, 301, 302, 304, 307, 308, 400, 401, 403, 404, 405, 408, 409, 413, 429,
    500, 501, 502, 503, 504,
];

/// Things the traffic-control path does besides forwarding, counted per version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A failed attempt of the version was sent again (to it).
    Retry,
    /// A retry was allowed by the policy but refused by the retry budget.
    RetryBudgetExhausted,
    /// A request of the version went to its fallback (another version or a static page).
    Fallback,
    /// The version refused an attempt: its breaker was open.
    ShedBreakerOpen,
    /// The version refused an attempt: it was at its concurrency limit.
    ShedConcurrency,
    /// The version refused an attempt: no endpoint was healthy.
    ShedNoEndpoint,
    /// One of the version's endpoints was ejected by outlier detection.
    Ejection,
    /// A mirror step copied a request to the version.
    MirrorSent,
    /// A mirror step's copy to the version was dropped: too many copies were in flight.
    MirrorDropped,
    /// A mirror step did not copy a request to the version: its body was streamed, not read
    /// whole.
    MirrorSkipped,
}

impl Event {
    const COUNT: usize = 10;

    pub(super) fn index(self) -> usize {
        self as usize
    }
}

pub(super) const REASONS: [&str; 6] = Reason::LABELS;
/// Index of `bucket` in [`REASONS`].
const BUCKET: usize = 4;
/// Index of `fallback_key` in [`REASONS`].
pub(super) const FALLBACK_KEY: usize = 5;

/// One worker's counters for one route. Aligned so two workers never share a cache line.
#[repr(align(128))]
pub(super) struct Slot {
    /// What clients received, one per request.
    codes: [AtomicU64; COMMON_CODES.len()],
    other_codes: Mutex<BTreeMap<u16, u64>>,
    /// Every exchange with one of the version's upstreams, retried and fallen-back ones
    /// included; a failed exchange as the 502/504 it stands for.
    attempts: [AtomicU64; COMMON_CODES.len()],
    other_attempts: Mutex<BTreeMap<u16, u64>>,
    pub(super) events: [AtomicU64; Event::COUNT],
    pub(super) latency: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    pub(super) latency_sum_nanos: AtomicU64,
    /// The analysis's fine latency layout (≤ 12.5% relative error), for percentiles and their
    /// confidence bounds.
    fine_latency: [AtomicU64; histogram::BUCKETS],
    pub(super) upstream_errors: [AtomicU64; UpstreamErrorKind::ALL.len()],
    pub(super) decisions: [AtomicU64; REASONS.len()],
}

impl Default for Slot {
    fn default() -> Self {
        Slot {
            codes: Default::default(),
            other_codes: Mutex::default(),
            attempts: Default::default(),
            other_attempts: Mutex::default(),
            events: Default::default(),
            latency: Default::default(),
            latency_sum_nanos: AtomicU64::new(0),
            fine_latency: std::array::from_fn(|_| AtomicU64::new(0)),
            upstream_errors: Default::default(),
            decisions: Default::default(),
        }
    }
}

/// Counters of one (service, version), one slot per worker thread.
pub struct RouteStats {
    pub(super) service: String,
    pub(super) version: String,
    pub(super) slots: Box<[Slot]>,
    /// The distinct units bucketed into this version, one sample per worker; set up (by
    /// [`RouteStats::count_units`]) only for the versions of an experiment, since each costs
    /// a fixed table of unit hashes (128 KiB) per worker.
    pub(super) units: OnceLock<Box<[UnitSample]>>,
    /// Upgraded connections (WebSocket) of this version open now. One shared counter rather
    /// than a slot's: it moves twice per upgraded connection, never per request.
    pub(super) upgraded: AtomicU64,
}

impl RouteStats {
    fn slot(&self, worker: usize) -> &Slot {
        &self.slots[worker % self.slots.len()]
    }

    /// Counts the request's decision, and for a bucketed one its unit (`decision.unit`, the
    /// bucketing key's hash): no lock, no allocation.
    pub fn record_decision(&self, worker: usize, decision: &Decision) {
        self.slot(worker).decisions[decision.reason.label_index()].fetch_add(1, Relaxed);
        if matches!(decision.reason, Reason::Bucket { .. })
            && let Some(units) = self.units.get()
        {
            units[worker % units.len()].insert(decision.unit);
        }
    }

    /// Starts counting the distinct units bucketed into this version (idempotent).
    pub fn count_units(&self) {
        self.units
            .get_or_init(|| (0..self.slots.len()).map(|_| UnitSample::new()).collect());
    }

    /// The answer a client received from (or on behalf of) this version.
    pub fn record_response(&self, worker: usize, status: u16, elapsed: Duration) {
        let slot = self.slot(worker);
        count_code(&slot.codes, &slot.other_codes, code_index(status), status);
        slot.record_duration(elapsed);
    }

    /// One exchange with an upstream of this version, that did not become the client's answer
    /// (it was retried or fell back) or whose answer is recorded apart.
    pub fn record_attempt(&self, worker: usize, status: u16, took: Duration) {
        let slot = self.slot(worker);
        count_code(
            &slot.attempts,
            &slot.other_attempts,
            code_index(status),
            status,
        );
        slot.record_fine_duration(took);
    }

    /// A request answered by the version's one and only exchange: both an attempt and the
    /// client's answer, recorded with one look-up.
    pub fn record_served(&self, worker: usize, status: u16, elapsed: Duration) {
        let slot = self.slot(worker);
        let i = code_index(status);
        count_code(&slot.codes, &slot.other_codes, i, status);
        count_code(&slot.attempts, &slot.other_attempts, i, status);
        slot.record_duration(elapsed);
        slot.record_fine_duration(elapsed);
    }

    /// Counts one `event` of the version in `worker`'s slot (the worker's index; no lock, no
    /// allocation).
    pub fn record_event(&self, worker: usize, event: Event) {
        self.slot(worker).events[event.index()].fetch_add(1, Relaxed);
    }

    /// Counts an attempt of the version that failed before any response, by `kind`, in
    /// `worker`'s slot (`graylane_upstream_errors_total`).
    pub fn record_upstream_error(&self, worker: usize, kind: UpstreamErrorKind) {
        let i = UpstreamErrorKind::ALL
            .iter()
            .position(|k| *k == kind)
            .unwrap_or(0);
        self.slot(worker).upstream_errors[i].fetch_add(1, Relaxed);
    }

    /// An upgraded connection of the version opened (its `101` was sent).
    pub fn upgraded_opened(&self) {
        self.upgraded.fetch_add(1, Relaxed);
    }

    /// An upgraded connection of the version closed.
    pub fn upgraded_closed(&self) {
        self.upgraded.fetch_sub(1, Relaxed);
    }

    /// The version's upgraded connections open now (`graylane_upgraded_connections`).
    pub fn upgraded_open(&self) -> u64 {
        self.upgraded.load(Relaxed)
    }

    pub(super) fn observed(&self) -> Observed {
        Observed {
            codes: self.attempt_codes(),
            latency: (0..histogram::BUCKETS)
                .map(|i| self.sum(|s| s.fine_latency[i].load(Relaxed)))
                .collect(),
            bucketed: self.bucketed(),
        }
    }

    /// The workers' unit samples together, brought to the highest of their levels; `None` when
    /// units are not counted.
    pub(super) fn unit_hashes(&self) -> Option<UnitHashes> {
        let samples = self.units.get()?;
        let mut level = 0;
        let mut hashes = Vec::new();
        for sample in samples.iter() {
            level = level.max(sample.read_into(&mut hashes));
        }
        hashes.retain(|h| UnitSample::kept(*h, level));
        hashes.sort_unstable();
        hashes.dedup();
        Some(UnitHashes { level, hashes })
    }

    pub(super) fn bucketed(&self) -> u64 {
        self.sum(|s| s.decisions[BUCKET].load(Relaxed) + s.decisions[FALLBACK_KEY].load(Relaxed))
    }

    pub(super) fn sum(&self, f: impl Fn(&Slot) -> u64) -> u64 {
        self.slots.iter().map(f).sum()
    }

    pub(super) fn codes(&self) -> BTreeMap<u16, u64> {
        self.sum_codes(|s| (&s.codes, &s.other_codes))
    }

    pub(super) fn attempt_codes(&self) -> BTreeMap<u16, u64> {
        self.sum_codes(|s| (&s.attempts, &s.other_attempts))
    }

    fn sum_codes(
        &self,
        cells: impl Fn(&Slot) -> (&[AtomicU64; COMMON_CODES.len()], &OtherCodes),
    ) -> BTreeMap<u16, u64> {
        let mut out = BTreeMap::new();
        for slot in self.slots.iter() {
            let (common, other) = cells(slot);
            for (i, c) in COMMON_CODES.iter().enumerate() {
                let n = common[i].load(Relaxed);
                if n > 0 {
                    *out.entry(*c).or_default() += n;
                }
            }
            let other = other.lock().unwrap_or_else(|e| e.into_inner());
            for (c, n) in other.iter() {
                *out.entry(*c).or_default() += n;
            }
        }
        out
    }
}

type OtherCodes = Mutex<BTreeMap<u16, u64>>;

fn code_index(status: u16) -> Option<usize> {
    COMMON_CODES.iter().position(|c| *c == status)
}

fn count_code(
    common: &[AtomicU64; COMMON_CODES.len()],
    other: &OtherCodes,
    index: Option<usize>,
    status: u16,
) {
    match index {
        Some(i) => {
            common[i].fetch_add(1, Relaxed);
        }
        None => {
            let mut other = other.lock().unwrap_or_else(|e| e.into_inner());
            *other.entry(status).or_default() += 1;
        }
    }
}

impl Slot {
    fn record_duration(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.latency[bucket].fetch_add(1, Relaxed);
        self.latency_sum_nanos
            .fetch_add(elapsed.as_nanos().min(u128::from(u64::MAX)) as u64, Relaxed);
    }

    fn record_fine_duration(&self, took: Duration) {
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.fine_latency[histogram::bucket_of(nanos)].fetch_add(1, Relaxed);
    }
}
