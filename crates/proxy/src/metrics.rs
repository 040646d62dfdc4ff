//! Request metrics, recorded without locks on the request path.
//!
//! Every (service, version) pair gets one [`RouteStats`], resolved once when a routing snapshot
//! is built, so a request never looks up a label set. Inside it each worker thread owns a
//! cache-line-aligned [`Slot`] of plain atomics that only that thread writes; a scrape sums the
//! slots. Counters live in [`Metrics`] (not in the snapshot), so they survive reloads.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use graylane_analysis::histogram;
use graylane_rules::{Decision, Reason};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Upper bounds (seconds) of `graylane_request_duration_seconds` buckets.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Status codes counted in their own lock-free cell; any other code takes a rare slow path.
const COMMON_CODES: [u16; 24] = [
    200, 201, 202, 204, 206, 301, 302, 304, 307, 308, 400, 401, 403, 404, 405, 408, 409, 413, 429,
    500, 501, 502, 503, 504,
];

/// Why a request did not get an upstream response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamErrorKind {
    ConnectRefused,
    ConnectTimeout,
    ConnectError,
    Timeout,
    Protocol,
}

impl UpstreamErrorKind {
    const ALL: [UpstreamErrorKind; 5] = [
        UpstreamErrorKind::ConnectRefused,
        UpstreamErrorKind::ConnectTimeout,
        UpstreamErrorKind::ConnectError,
        UpstreamErrorKind::Timeout,
        UpstreamErrorKind::Protocol,
    ];

    pub fn label(self) -> &'static str {
        match self {
            UpstreamErrorKind::ConnectRefused => "connect_refused",
            UpstreamErrorKind::ConnectTimeout => "connect_timeout",
            UpstreamErrorKind::ConnectError => "connect_error",
            UpstreamErrorKind::Timeout => "timeout",
            UpstreamErrorKind::Protocol => "protocol",
        }
    }
}

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
}

impl Event {
    const COUNT: usize = 7;

    fn index(self) -> usize {
        self as usize
    }
}

const REASONS: [&str; 6] = Reason::LABELS;
/// Index of `bucket` in [`REASONS`].
const BUCKET: usize = 4;
/// Index of `fallback_key` in [`REASONS`].
const FALLBACK_KEY: usize = 5;

/// One worker's counters for one route. Aligned so two workers never share a cache line.
#[repr(align(128))]
struct Slot {
    /// What clients received, one per request.
    codes: [AtomicU64; COMMON_CODES.len()],
    other_codes: Mutex<BTreeMap<u16, u64>>,
    /// Every exchange with one of the version's upstreams, retried and fallen-back ones
    /// included; a failed exchange as the 502/504 it stands for.
    attempts: [AtomicU64; COMMON_CODES.len()],
    other_attempts: Mutex<BTreeMap<u16, u64>>,
    events: [AtomicU64; Event::COUNT],
    latency: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    latency_sum_nanos: AtomicU64,
    /// The analysis's fine latency layout (≤ 12.5% relative error), for percentiles and their
    /// confidence bounds.
    fine_latency: [AtomicU64; histogram::BUCKETS],
    upstream_errors: [AtomicU64; UpstreamErrorKind::ALL.len()],
    decisions: [AtomicU64; REASONS.len()],
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

/// What one (service, version) has done since the gateway started: the raw material of the
/// analysis, which diffs two of these to judge a window.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observed {
    /// The version's upstream exchanges by status (a failed one as its 502/504), including
    /// those that were retried or fell back: how the version itself behaved, not what clients
    /// ended up with.
    pub codes: BTreeMap<u16, u64>,
    /// Exchange times in [`histogram`]'s layout.
    pub latency: Vec<u64>,
    /// Requests routed to the version by bucketing (an experiment's exposures).
    pub bucketed: u64,
}

/// The distinct units one (service, version) has seen, its workers' samples taken together: the
/// unit hashes held, sorted and distinct, all within the same 1 / 2^`level` share of the hash
/// space (at level 0, every unit).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnitHashes {
    pub level: u32,
    pub hashes: Vec<u64>,
}

/// One (service, version)'s figures, as [`Metrics::export`] gives them.
#[derive(Debug, Clone, PartialEq)]
pub struct Exported {
    pub service: String,
    pub version: String,
    pub observed: Observed,
    /// `None` for a version whose units are not counted (not an experiment's).
    pub units: Option<UnitHashes>,
}

/// Counters of one (service, version), one slot per worker thread.
pub struct RouteStats {
    service: String,
    version: String,
    slots: Box<[Slot]>,
    /// The distinct units bucketed into this version, one sample per worker; set up (by
    /// [`RouteStats::count_units`]) only for the versions of an experiment, since each costs
    /// [`UNIT_SLOTS`] × 8 bytes.
    units: OnceLock<Box<[UnitSample]>>,
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

    pub fn record_event(&self, worker: usize, event: Event) {
        self.slot(worker).events[event.index()].fetch_add(1, Relaxed);
    }

    pub fn record_upstream_error(&self, worker: usize, kind: UpstreamErrorKind) {
        let i = UpstreamErrorKind::ALL
            .iter()
            .position(|k| *k == kind)
            .unwrap_or(0);
        self.slot(worker).upstream_errors[i].fetch_add(1, Relaxed);
    }

    fn observed(&self) -> Observed {
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
    fn unit_hashes(&self) -> Option<UnitHashes> {
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

    fn bucketed(&self) -> u64 {
        self.sum(|s| s.decisions[BUCKET].load(Relaxed) + s.decisions[FALLBACK_KEY].load(Relaxed))
    }

    fn sum(&self, f: impl Fn(&Slot) -> u64) -> u64 {
        self.slots.iter().map(f).sum()
    }

    fn codes(&self) -> BTreeMap<u16, u64> {
        self.sum_codes(|s| (&s.codes, &s.other_codes))
    }

    fn attempt_codes(&self) -> BTreeMap<u16, u64> {
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

/// Slots of one worker's unit table: 128 KiB.
const UNIT_SLOTS: usize = 1 << 14;
/// Units a table holds before it keeps only half of the hash space (three quarters full keeps
/// the linear probing short).
const UNIT_MAX: usize = UNIT_SLOTS / 4 * 3;

/// The distinct units one worker saw for one version: an open-addressing set of unit hashes,
/// written by that worker alone and read by scrapes. Exact until it holds [`UNIT_MAX`] hashes;
/// then it raises `level` and keeps only the hashes whose top `level` bits are zero (adaptive
/// sampling), so its memory is fixed however many units come, and what it keeps is a uniform
/// sample of them (the hash's top bits are independent of the bucket, its remainder).
struct UnitSample {
    /// A sequence lock: odd while the worker rebuilds the table; readers retry.
    seq: AtomicU64,
    level: AtomicU32,
    len: AtomicUsize,
    /// 0 is an empty slot (a unit hashing to 0 is stored as 1).
    table: Box<[AtomicU64]>,
}

impl UnitSample {
    fn new() -> UnitSample {
        UnitSample {
            seq: AtomicU64::new(0),
            level: AtomicU32::new(0),
            len: AtomicUsize::new(0),
            table: (0..UNIT_SLOTS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn kept(hash: u64, level: u32) -> bool {
        level == 0 || hash >> (64 - level) == 0
    }

    /// Where probing for `hash` starts: bits that neither choose the bucket (the low ones) nor
    /// the sample (the top ones).
    fn home(hash: u64) -> usize {
        (hash >> 24) as usize & (UNIT_SLOTS - 1)
    }

    /// Adds `hash`; only the owning worker calls this.
    fn insert(&self, hash: u64) {
        let hash = hash.max(1);
        if !Self::kept(hash, self.level.load(Relaxed)) || !self.put(hash) {
            return;
        }
        if self.len.fetch_add(1, Relaxed) + 1 > UNIT_MAX {
            self.halve();
        }
    }

    /// Stores `hash` unless present; `true` if it was new.
    fn put(&self, hash: u64) -> bool {
        let mut i = Self::home(hash);
        loop {
            match self.table[i].load(Relaxed) {
                0 => {
                    self.table[i].store(hash, Relaxed);
                    return true;
                }
                h if h == hash => return false,
                _ => i = (i + 1) & (UNIT_SLOTS - 1),
            }
        }
    }

    /// Raises the level until the table is back under [`UNIT_MAX`], rehashing in place.
    fn halve(&self) {
        let seq = self.seq.load(Relaxed);
        self.seq.store(seq + 1, Relaxed);
        std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
        let mut level = self.level.load(Relaxed);
        let mut len = self.len.load(Relaxed);
        while len > UNIT_MAX / 2 && level < 63 {
            level += 1;
            len = 0;
            for slot in self.table.iter() {
                let h = slot.load(Relaxed);
                if h != 0 && Self::kept(h, level) {
                    len += 1;
                }
            }
        }
        self.level.store(level, Relaxed);
        for slot in self.table.iter() {
            if !Self::kept(slot.load(Relaxed), level) {
                slot.store(0, Relaxed);
            }
        }
        // Re-placing every survivor in table order, starting after an empty slot, leaves each
        // reachable from its home slot again (the removals above broke probe chains).
        let empty = self
            .table
            .iter()
            .position(|s| s.load(Relaxed) == 0)
            .unwrap_or(0);
        for k in 1..=UNIT_SLOTS {
            let i = (empty + k) & (UNIT_SLOTS - 1);
            let h = self.table[i].load(Relaxed);
            if h != 0 {
                self.table[i].store(0, Relaxed);
                self.put(h);
            }
        }
        self.len.store(len, Relaxed);
        self.seq
            .store(seq + 2, std::sync::atomic::Ordering::Release);
    }

    /// Appends the hashes held to `out` and returns their level; a read that overlapped a
    /// rebuild is retried (a few times, then taken as it is: a scrape is not worth a wait).
    fn read_into(&self, out: &mut Vec<u64>) -> u32 {
        use std::sync::atomic::Ordering::Acquire;
        let start = out.len();
        for _ in 0..64 {
            let before = self.seq.load(Acquire);
            if before % 2 == 1 {
                std::thread::yield_now();
                continue;
            }
            out.truncate(start);
            let level = self.level.load(Relaxed);
            out.extend(
                self.table
                    .iter()
                    .map(|s| s.load(Relaxed))
                    .filter(|h| *h != 0),
            );
            std::sync::atomic::fence(Acquire);
            if self.seq.load(Relaxed) == before {
                return level;
            }
        }
        self.level.load(Relaxed)
    }
}

type ReloadFamily = Family<[(&'static str, &'static str); 1], Counter>;

/// Every metric graylane exports. Cheap to share (`Arc`).
pub struct Metrics {
    workers: usize,
    routes: Mutex<BTreeMap<(String, String), Arc<RouteStats>>>,
    /// Metrics of other parts (the controller's), encoded at scrape time.
    extra: Mutex<Vec<Arc<dyn Collector>>>,
    reloads: ReloadFamily,
    open_connections: Gauge,
    registry: Registry,
}

impl Metrics {
    /// Metrics for `workers` request threads (plus one slot for work done off them).
    pub fn new(workers: usize) -> Arc<Metrics> {
        let reloads = ReloadFamily::default();
        let open_connections = Gauge::default();
        let mut registry = Registry::default();
        registry.register(
            "graylane_config_reloads",
            "Configuration reloads by result (ok or error)",
            reloads.clone(),
        );
        registry.register(
            "graylane_open_connections",
            "Client connections currently open",
            open_connections.clone(),
        );
        Arc::new(Metrics {
            workers: workers + 1,
            routes: Mutex::default(),
            extra: Mutex::default(),
            reloads,
            open_connections,
            registry,
        })
    }

    /// The stats of (`service`, `version`), created on first use and kept across reloads.
    pub fn route(&self, service: &str, version: &str) -> Arc<RouteStats> {
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        routes
            .entry((service.to_string(), version.to_string()))
            .or_insert_with(|| {
                Arc::new(RouteStats {
                    service: service.to_string(),
                    version: version.to_string(),
                    slots: (0..self.workers).map(|_| Slot::default()).collect(),
                    units: OnceLock::new(),
                })
            })
            .clone()
    }

    /// Everything recorded for `version` of `service` so far (zeros if nothing was).
    pub fn observe(&self, service: &str, version: &str) -> Observed {
        let routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        let Some(r) = routes
            .get(&(service.to_string(), version.to_string()))
            .cloned()
        else {
            return Observed {
                latency: vec![0; histogram::BUCKETS],
                ..Observed::default()
            };
        };
        drop(routes);
        r.observed()
    }

    /// What [`Metrics::observe`] gives for every (service, version) seen so far, each with its
    /// unit sample: what a fleet node publishes about itself. Reads every counter and unit
    /// table, so it is for a periodic task, never the request path.
    pub fn export(&self) -> Vec<Exported> {
        self.routes_snapshot()
            .iter()
            .map(|r| Exported {
                service: r.service.clone(),
                version: r.version.clone(),
                observed: r.observed(),
                units: r.unit_hashes(),
            })
            .collect()
    }

    /// The unit sample of `version` of `service` (see [`Metrics::distinct_units`]); `None` when
    /// its units are not counted or it has seen nothing.
    pub fn unit_hashes(&self, service: &str, version: &str) -> Option<UnitHashes> {
        let route = {
            let routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
            routes
                .get(&(service.to_string(), version.to_string()))
                .cloned()
        };
        route?.unit_hashes()
    }

    /// Requests bucketed into `version` of `service` (on the release's key or the client IP):
    /// an experiment's exposures.
    pub fn bucketed(&self, service: &str, version: &str) -> u64 {
        let routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        routes
            .get(&(service.to_string(), version.to_string()))
            .map_or(0, |r| r.bucketed())
    }

    /// The distinct units (bucketing keys: users) bucketed into each of `versions` of `service`
    /// since the gateway started, as `(counts, level)`. Up to a few thousand units per version
    /// and worker the counts are exact (`level` 0); beyond that each count is of the units whose
    /// key hash falls in the same 1 / 2^`level` share of the hash space, a uniform sample of
    /// the units, the same for every version — so the counts compare with each other (the
    /// sample-ratio-mismatch test) exactly as the full counts would, and `count << level`
    /// estimates the full one. A user who sends many requests counts once.
    pub fn distinct_units(&self, service: &str, versions: &[&str]) -> (Vec<u64>, u32) {
        let samples: Vec<UnitHashes> = versions
            .iter()
            .map(|v| self.unit_hashes(service, v).unwrap_or_default())
            .collect();
        let level = samples.iter().map(|s| s.level).max().unwrap_or(0);
        let counts = samples
            .iter()
            .map(|s| {
                s.hashes
                    .iter()
                    .filter(|h| UnitSample::kept(**h, level))
                    .count() as u64
            })
            .collect();
        (counts, level)
    }

    /// Adds metrics that another part computes at scrape time.
    pub fn add_collector(&self, collector: Arc<dyn Collector>) {
        self.extra
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(collector);
    }

    pub fn record_reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.reloads.get_or_create(&[("result", result)]).inc();
    }

    pub fn connection_opened(&self) {
        self.open_connections.inc();
    }

    pub fn connection_closed(&self) {
        self.open_connections.dec();
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let routes = RouteCollector(self.routes_snapshot());
        let mut registry = Registry::default();
        registry.register_collector(Box::new(routes));
        for extra in self.extra.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            registry.register_collector(Box::new(Shared(Arc::clone(extra))));
        }
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode_registry(&mut out, &self.registry);
        let _ = prometheus_client::encoding::text::encode_registry(&mut out, &registry);
        out.push_str("# EOF\n");
        out
    }

    fn routes_snapshot(&self) -> Vec<Arc<RouteStats>> {
        let routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        routes.values().cloned().collect()
    }
}

/// A collector shared with its owner (the registry wants to own a `Box`).
#[derive(Debug)]
struct Shared(Arc<dyn Collector>);

impl Collector for Shared {
    fn encode(&self, encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        self.0.encode(encoder)
    }
}

/// Encodes the per-route stats at scrape time.
#[derive(Default)]
struct RouteCollector(Vec<Arc<RouteStats>>);

impl std::fmt::Debug for RouteCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RouteCollector")
    }
}

impl Collector for RouteCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for (name, help, codes) in [
            (
                "graylane_requests",
                "Requests answered, by service, the version that served them (the fallback for a \
                 fallback) and the status the client received",
                RouteStats::codes as fn(&RouteStats) -> BTreeMap<u16, u64>,
            ),
            (
                "graylane_upstream_attempts",
                "Exchanges with a version's upstreams, retried and fallen-back ones included, by \
                 status (a failed exchange as its 502 or 504)",
                RouteStats::attempt_codes,
            ),
        ] {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for r in &self.0 {
                for (code, n) in codes(r) {
                    let code = code.to_string();
                    let labels = [
                        ("service", r.service.as_str()),
                        ("version", r.version.as_str()),
                        ("code", code.as_str()),
                    ];
                    family
                        .encode_family(&labels)?
                        .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
                }
            }
        }
        for (name, help, event) in [
            (
                "graylane_retries",
                "Failed attempts sent again",
                Event::Retry,
            ),
            (
                "graylane_retry_budget_exhausted",
                "Retries the retry policy allowed and the retry budget refused",
                Event::RetryBudgetExhausted,
            ),
            (
                "graylane_fallbacks",
                "Requests of a version answered by its fallback (another version or a static page)",
                Event::Fallback,
            ),
            (
                "graylane_outlier_ejections",
                "Endpoints of a version ejected by outlier detection",
                Event::Ejection,
            ),
        ] {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for r in &self.0 {
                let n = r.sum(|s| s.events[event.index()].load(Relaxed));
                let labels = [
                    ("service", r.service.as_str()),
                    ("version", r.version.as_str()),
                ];
                family
                    .encode_family(&labels)?
                    .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
            }
        }
        let mut shed = encoder.encode_descriptor(
            "graylane_shed",
            "Attempts a version refused without sending them, by reason",
            None,
            MetricType::Counter,
        )?;
        for r in &self.0 {
            for (reason, event) in [
                ("circuit_open", Event::ShedBreakerOpen),
                ("concurrency", Event::ShedConcurrency),
                ("no_healthy_endpoint", Event::ShedNoEndpoint),
            ] {
                let n = r.sum(|s| s.events[event.index()].load(Relaxed));
                let labels = [
                    ("service", r.service.as_str()),
                    ("version", r.version.as_str()),
                    ("reason", reason),
                ];
                shed.encode_family(&labels)?
                    .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
            }
        }
        let mut duration = encoder.encode_descriptor(
            "graylane_request_duration_seconds",
            "Time from request to upstream response headers",
            None,
            MetricType::Histogram,
        )?;
        for r in &self.0 {
            let mut buckets = Vec::with_capacity(LATENCY_BUCKETS.len() + 1);
            let mut count = 0;
            for (i, upper) in LATENCY_BUCKETS
                .iter()
                .copied()
                .chain([f64::INFINITY])
                .enumerate()
            {
                let n = r.sum(|s| s.latency[i].load(Relaxed));
                count += n;
                buckets.push((upper, n));
            }
            let sum = r.sum(|s| s.latency_sum_nanos.load(Relaxed)) as f64 / 1e9;
            let labels = [
                ("service", r.service.as_str()),
                ("version", r.version.as_str()),
            ];
            duration
                .encode_family(&labels)?
                .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
        }
        let mut errors = encoder.encode_descriptor(
            "graylane_upstream_errors",
            "Requests that got no upstream response, by kind",
            None,
            MetricType::Counter,
        )?;
        for r in &self.0 {
            for (i, kind) in UpstreamErrorKind::ALL.iter().enumerate() {
                let n = r.sum(|s| s.upstream_errors[i].load(Relaxed));
                if n > 0 {
                    let labels = [
                        ("service", r.service.as_str()),
                        ("version", r.version.as_str()),
                        ("kind", kind.label()),
                    ];
                    errors
                        .encode_family(&labels)?
                        .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
                }
            }
        }
        let mut decisions = encoder.encode_descriptor(
            "graylane_routing_decisions",
            "Routing decisions by service, chosen version and reason",
            None,
            MetricType::Counter,
        )?;
        for r in &self.0 {
            for (i, reason) in REASONS.iter().enumerate() {
                let n = r.sum(|s| s.decisions[i].load(Relaxed));
                if n > 0 {
                    let labels = [
                        ("service", r.service.as_str()),
                        ("version", r.version.as_str()),
                        ("reason", *reason),
                    ];
                    decisions
                        .encode_family(&labels)?
                        .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
                }
            }
        }
        let mut fallbacks = encoder.encode_descriptor(
            "graylane_bucket_key_fallbacks",
            "Requests without their release's bucketing key, bucketed on the client IP instead",
            None,
            MetricType::Counter,
        )?;
        let mut per_service: BTreeMap<&str, u64> = BTreeMap::new();
        for r in &self.0 {
            *per_service.entry(r.service.as_str()).or_default() +=
                r.sum(|s| s.decisions[FALLBACK_KEY].load(Relaxed));
        }
        for (service, n) in per_service {
            fallbacks
                .encode_family(&[("service", service)])?
                .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Well-spread 64-bit hashes, as the bucketing hash gives.
    fn hash(i: u64) -> u64 {
        // splitmix64's finalizer.
        let mut z = i.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn count(sample: &UnitSample) -> (usize, u32) {
        let mut seen = Vec::new();
        let level = sample.read_into(&mut seen);
        let n = seen.len();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), n, "no unit is held twice");
        (n, level)
    }

    fn bucketed(unit: u64) -> Decision {
        Decision {
            service: 0,
            version: 0,
            reason: Reason::Bucket {
                bucket: 0,
                weight: graylane_config::Weight::ZERO,
                key: graylane_rules::KeyUsed::Configured,
            },
            pin: None,
            unit,
        }
    }

    #[test]
    fn an_export_holds_every_version_with_what_observe_and_distinct_units_see() {
        let metrics = Metrics::new(2);
        let canary = metrics.route("pay", "canary");
        canary.count_units();
        for worker in 0..3 {
            canary.record_served(worker, 200, Duration::from_millis(3));
            // The same user on every worker counts once.
            canary.record_decision(worker, &bucketed(hash(7)));
            canary.record_decision(worker, &bucketed(hash(worker as u64 + 100)));
        }
        canary.record_served(0, 503, Duration::from_millis(40));
        metrics
            .route("pay", "stable")
            .record_served(1, 200, Duration::from_millis(2));

        let exported = metrics.export();
        assert_eq!(exported.len(), 2);
        let by_version = |v: &str| exported.iter().find(|e| e.version == v).unwrap();
        let canary = by_version("canary");
        assert_eq!(canary.observed, metrics.observe("pay", "canary"));
        assert_eq!(canary.observed.codes, BTreeMap::from([(200, 3), (503, 1)]));
        assert_eq!(canary.observed.bucketed, 6);
        let units = canary.units.as_ref().unwrap();
        assert_eq!(units.level, 0);
        assert_eq!(units.hashes.len(), 4);
        assert!(units.hashes.is_sorted());
        assert_eq!(
            metrics.distinct_units("pay", &["canary", "stable"]),
            (vec![4, 0], 0)
        );
        assert_eq!(by_version("stable").units, None, "stable counts no units");
        assert_eq!(metrics.unit_hashes("pay", "canary").as_ref(), Some(units));
        assert_eq!(metrics.unit_hashes("pay", "nothing"), None);
    }

    #[test]
    fn units_are_counted_exactly_once_each_below_the_capacity() {
        let sample = UnitSample::new();
        for round in 0..5 {
            for i in 0..5_000 {
                sample.insert(hash(i));
            }
            assert_eq!(count(&sample), (5_000, 0), "round {round}");
        }
        sample.insert(0);
        sample.insert(1);
        assert_eq!(
            count(&sample).0,
            5_001,
            "0 and 1 are one unit (0 marks empty)"
        );
    }

    #[test]
    fn beyond_the_capacity_a_uniform_sample_estimates_the_count_in_fixed_memory() {
        let sample = UnitSample::new();
        let units = 200_000u64;
        for i in 0..units {
            sample.insert(hash(i));
            // Repeats of earlier units change nothing.
            sample.insert(hash(i / 2));
        }
        let (held, level) = count(&sample);
        assert!(level >= 3, "level {level}");
        assert!(held <= UNIT_MAX, "{held}");
        let estimate = (held as f64) * f64::from(1u32 << level);
        assert!(
            (estimate / units as f64 - 1.0).abs() < 0.05,
            "estimate {estimate} for {units}"
        );
        // Every held unit is still found (the rehash kept the probe chains whole).
        let mut seen = Vec::new();
        sample.read_into(&mut seen);
        for h in seen {
            assert!(!sample.put(h), "held hash {h} not found again");
        }
    }
}
