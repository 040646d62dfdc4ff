//! A circuit breaker with resilience4j's semantics, for one service version.
//!
//! * **Closed**: calls go through and their outcomes fill a sliding window — the last `n` calls
//!   ([`Window::Count`]) or the calls of the last `d` ([`Window::Time`], in 1-second buckets).
//!   Once the window holds `minimum_calls` calls (for a count window, at most `n`), the breaker
//!   opens if the failure rate reaches `failure_rate_threshold` or the rate of calls slower than
//!   `slow_call_duration` reaches `slow_call_rate_threshold` (both `≥`, and a slow failure
//!   counts in both rates, as in resilience4j).
//! * **Open**: every call is refused with the time left, for `open_for`; the proxy answers
//!   `503` or sends the traffic to a fallback version.
//! * **Half-open**: the first call after `open_for` moves the breaker to half-open and becomes
//!   the first of `half_open_calls` trial calls; further calls are refused until the trials are
//!   decided. When all trials have completed, the same thresholds over the trials close the
//!   breaker (with an empty window) or open it again.
//!
//! Outcomes are attributed to the state that admitted the call: a call let through while closed
//! that completes after the breaker opened does not count towards the half-open trials (and
//! resilience4j's quirk of counting it there is deliberately not reproduced). A trial whose
//! [`CallToken`] is dropped without an outcome (a cancelled request) gives its slot back, so
//! the breaker cannot stay half-open forever.
//!
//! ```
//! use std::time::Duration;
//! use graylane_traffic::breaker::{BreakerConfig, CircuitBreaker, Outcome, State, Window};
//!
//! let breaker = CircuitBreaker::new(BreakerConfig {
//!     window: Window::Count(10),
//!     minimum_calls: 4,
//!     open_for: Duration::from_secs(30),
//!     ..BreakerConfig::default()
//! })?;
//! let fail = Outcome { failed: true, duration: Duration::from_millis(20) };
//! for _ in 0..4 {
//!     let token = breaker.try_call(0).expect("closed");
//!     token.record(0, fail);
//! }
//! assert_eq!(breaker.state(), State::Open);
//! let refused = breaker.try_call(1_000_000_000).unwrap_err();
//! assert_eq!(refused.retry_after, Duration::from_secs(29));
//! # Ok::<(), graylane_traffic::ConfigError>(())
//! ```
//!
//! # Cost and thread safety
//!
//! The closed path takes no lock. `try_call` is one atomic load of the state word (the token
//! borrows the breaker: no reference count to write); recording is a handful of uncontended-in-the-common-case atomic
//! operations on the window (count window: claim a slot, swap the outcome in, adjust running
//! totals only if the outcome differs from the one it replaced; time window: add to the
//! current second's bucket and the totals) and three loads to evaluate the rates. The half-open
//! trials live in the same 64-bit state word as the state, so admitting and deciding them is
//! one compare-and-swap each. A mutex serialises only the transitions themselves (which also
//! reset the window and write the transition log): a few per `open_for` at most.
//!
//! Under heavy concurrency the window is statistical, not transactional: totals may be off by
//! the few records in progress at the moment they are read, and in a time window a call
//! recorded in the instant its bucket is recycled (once per second) can be lost. Either error is
//! bounded by the handful of calls completing at that same instant.

use std::fmt;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crate::ConfigError;
use crate::error::fraction;
use crate::padded::Padded;

mod window;
mod word;

use window::{CountWindow, MAX_COUNT_WINDOW, MAX_TIME_WINDOW_SECS, TimeWindow, Totals, WindowImpl};
use word::StateWord;

/// Which calls the closed state's rates are computed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// The last `n` calls (1 to 1,000,000).
    Count(u32),
    /// The calls of the last duration, counted in whole seconds (rounded up, 1s to 1 day).
    Time(Duration),
}

/// Breaker settings. [`Default`] follows resilience4j: a count window of 100 calls, 100 minimum
/// calls, 50% failures, 100% slow calls (with no slow-call duration set, slow calls are not
/// counted), open for 60s, 10 half-open trial calls.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerConfig {
    /// The sliding window the rates are computed over.
    pub window: Window,
    /// Calls the window must hold before its rates can open the breaker.
    pub minimum_calls: u32,
    /// Failure rate in (0, 1] that opens the breaker.
    pub failure_rate_threshold: f64,
    /// Calls taking longer than this are slow; `None`: no call is slow.
    pub slow_call_duration: Option<Duration>,
    /// Slow-call rate in (0, 1] that opens the breaker.
    pub slow_call_rate_threshold: f64,
    /// How long the breaker stays open before it lets trial calls through.
    pub open_for: Duration,
    /// Trial calls in half-open (1 to 4,095); their outcome closes or re-opens the breaker.
    pub half_open_calls: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            window: Window::Count(100),
            minimum_calls: 100,
            failure_rate_threshold: 0.5,
            slow_call_duration: None,
            slow_call_rate_threshold: 1.0,
            open_for: Duration::from_secs(60),
            half_open_calls: 10,
        }
    }
}

/// The breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Calls go through; the window's rates are watched.
    Closed,
    /// Calls are refused until `open_for` has passed.
    Open,
    /// Up to `half_open_calls` trial calls go through; they decide whether it closes or opens
    /// again.
    HalfOpen,
}

impl State {
    /// `closed`, `open` or `half_open`, for metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
        }
    }
}

/// How a call went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// The call counts as a failure; which outcomes do is the caller's choice (graylane's:
    /// the configuration's `failure_on`).
    pub failed: bool,
    /// How long the call took; compared with the slow-call duration.
    pub duration: Duration,
}

/// A refused call: the breaker is open, or half-open with every trial slot taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Open {
    /// When open: the time left before trial calls are let through. When half-open: one second
    /// (at most `open_for`) — the running trials decide soon.
    pub retry_after: Duration,
}

/// One state change, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// The state before.
    pub from: State,
    /// The state after.
    pub to: State,
    /// The caller's clock when it happened.
    pub at_nanos: u64,
}

/// What the breaker sees right now. In closed and open states the numbers are the sliding
/// window's (while open: the closed state's last window, as it opened the breaker); in
/// half-open they are the completed trial calls.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Snapshot {
    /// The state now.
    pub state: State,
    /// Calls counted (in the window, or the completed trials when half-open).
    pub calls: u64,
    /// Of those, the failed ones.
    pub failed_calls: u64,
    /// Of those, the slow ones (slower than the slow-call duration).
    pub slow_calls: u64,
    /// `failed_calls / calls`, 0 without calls.
    pub failure_rate: f64,
    /// `slow_calls / calls`, 0 without calls.
    pub slow_call_rate: f64,
    /// Transitions since the breaker was created.
    pub transitions: u64,
}

/// A circuit breaker. Cloning it gives another handle to the same breaker.
#[derive(Clone)]
pub struct CircuitBreaker {
    inner: Arc<Inner>,
}

/// Permission for one call, from [`CircuitBreaker::try_call`]. Report how the call went with
/// [`record`](CallToken::record). The token borrows its breaker rather than sharing ownership:
/// a reference count would be one more cache line written by every core on every call.
/// Dropping it unrecorded means the call is not counted (and a half-open trial slot is given
/// back).
#[must_use = "record the call's outcome, or drop the token to leave the call uncounted"]
pub struct CallToken<'a> {
    inner: &'a Inner,
    generation: u64,
    trial: bool,
}

struct Inner {
    /// The state word (see `word`) and, next to it, when an open state ends; both read on
    /// every call and rarely written, so they share a line of their own.
    state: Padded<StateWord>,
    window: WindowImpl,
    totals: Padded<Totals>,
    min_calls: u64,
    failure_threshold: f64,
    slow_after: Option<Duration>,
    slow_threshold: f64,
    open_for: u64,
    half_open_calls: u64,
    transitions: AtomicU64,
    /// The last transition; the lock also serialises transitions.
    log: Mutex<Option<Transition>>,
}

impl CircuitBreaker {
    /// A closed breaker. Errors name the field: an empty or oversized window, zero minimum
    /// calls, a threshold outside (0, 1], a zero slow-call duration or `open_for`, or
    /// `half_open_calls` outside 1–4,095.
    pub fn new(config: BreakerConfig) -> Result<CircuitBreaker, ConfigError> {
        let (window, size) = match config.window {
            Window::Count(n) if n == 0 || n > MAX_COUNT_WINDOW => {
                return Err(ConfigError::new(
                    "window",
                    format!("Count({n}) — a count window holds 1 to {MAX_COUNT_WINDOW} calls"),
                ));
            }
            Window::Count(n) => (
                WindowImpl::Count(CountWindow {
                    cursor: Padded(AtomicU64::new(0)),
                    slots: (0..n).map(|_| AtomicU8::new(0)).collect(),
                }),
                Some(u64::from(n)),
            ),
            Window::Time(d) => {
                let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
                if secs == 0 || secs > MAX_TIME_WINDOW_SECS {
                    return Err(ConfigError::new(
                        "window",
                        format!("Time({d:?}) — a time window spans 1s to 1 day"),
                    ));
                }
                let window = WindowImpl::Time(TimeWindow {
                    head: Padded(AtomicU64::new(0)),
                    buckets: (0..secs).map(|_| AtomicU64::new(0)).collect(),
                });
                (window, None)
            }
        };
        if config.minimum_calls == 0 {
            return Err(ConfigError::new(
                "minimum_calls",
                "0 — rates need at least one call to mean anything",
            ));
        }
        let failure_threshold = fraction("failure_rate_threshold", config.failure_rate_threshold)?;
        let slow_threshold = fraction("slow_call_rate_threshold", config.slow_call_rate_threshold)?;
        if config.slow_call_duration == Some(Duration::ZERO) {
            return Err(ConfigError::new(
                "slow_call_duration",
                "0s would make every call slow — leave it unset to not count slow calls",
            ));
        }
        if config.open_for.is_zero() {
            return Err(ConfigError::new(
                "open_for",
                "0s — an open breaker must stay open for some time",
            ));
        }
        let half_open_calls = u64::from(config.half_open_calls);
        if half_open_calls == 0 || half_open_calls > word::MAX_TRIALS {
            return Err(ConfigError::new(
                "half_open_calls",
                format!(
                    "{half_open_calls} — half-open lets 1 to {} trial calls through",
                    word::MAX_TRIALS
                ),
            ));
        }
        let minimum = u64::from(config.minimum_calls);
        Ok(CircuitBreaker {
            inner: Arc::new(Inner {
                state: Padded(StateWord::default()),
                window,
                totals: Padded(Totals::default()),
                // resilience4j: a count window can never hold more than its size.
                min_calls: size.map_or(minimum, |n| minimum.min(n)),
                failure_threshold,
                slow_after: config.slow_call_duration,
                slow_threshold,
                open_for: u64::try_from(config.open_for.as_nanos()).unwrap_or(u64::MAX),
                half_open_calls,
                transitions: AtomicU64::new(0),
                log: Mutex::new(None),
            }),
        })
    }

    /// Asks to make a call at `now_nanos`. In closed state this always succeeds; in open state
    /// it fails until `open_for` has passed, then the breaker goes half-open and this call is
    /// the first trial; in half-open it succeeds while trial slots are free.
    pub fn try_call(&self, now_nanos: u64) -> Result<CallToken<'_>, Open> {
        let inner = &*self.inner;
        let token = |generation, trial| CallToken {
            inner: &self.inner,
            generation,
            trial,
        };
        // Acquire: pairs with the Release store of a transition, so `open_until` is current.
        let mut w = inner.state.word.load(Ordering::Acquire);
        loop {
            match word::kind(w) {
                word::CLOSED => return Ok(token(word::generation(w), false)),
                word::OPEN => {
                    let until = inner.state.open_until.load(Ordering::Relaxed);
                    if now_nanos < until {
                        return Err(Open {
                            retry_after: Duration::from_nanos(until - now_nanos),
                        });
                    }
                    let half_open = word::next(w, word::HALF_OPEN) | 1 << word::ISSUED;
                    match inner.state.word.compare_exchange(
                        w,
                        half_open,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    ) {
                        Ok(_) => {
                            inner.note(&mut inner.lock(), State::Open, State::HalfOpen, now_nanos);
                            return Ok(token(word::generation(half_open), true));
                        }
                        Err(actual) => w = actual,
                    }
                }
                _ => {
                    if word::field(w, word::ISSUED) >= inner.half_open_calls {
                        return Err(Open {
                            retry_after: Duration::from_secs(1)
                                .min(Duration::from_nanos(inner.open_for)),
                        });
                    }
                    match inner.state.word.compare_exchange_weak(
                        w,
                        w + (1 << word::ISSUED),
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    ) {
                        Ok(_) => return Ok(token(word::generation(w), true)),
                        Err(actual) => w = actual,
                    }
                }
            }
        }
    }

    /// The current state. An open breaker whose `open_for` has passed still says `Open` until
    /// the next call moves it to half-open (resilience4j without automatic transition).
    pub fn state(&self) -> State {
        state_of(self.inner.state.word.load(Ordering::Acquire))
    }

    /// Transitions since the breaker was created (a counter for metrics).
    pub fn transitions(&self) -> u64 {
        self.inner.transitions.load(Ordering::Relaxed)
    }

    /// The most recent transition, if any.
    pub fn last_transition(&self) -> Option<Transition> {
        *self.inner.lock()
    }

    /// Window (or trial) counts and rates at `now_nanos`. For a time window this also drops
    /// the seconds that fell out of it, as the next call would.
    pub fn snapshot(&self, now_nanos: u64) -> Snapshot {
        let inner = &*self.inner;
        let w = inner.state.word.load(Ordering::Acquire);
        let state = state_of(w);
        let (calls, failed, slow) = if state == State::HalfOpen {
            (
                word::field(w, word::DONE),
                word::field(w, word::FAILED),
                word::field(w, word::SLOW),
            )
        } else {
            inner.window.totals(&inner.totals, now_nanos)
        };
        Snapshot {
            state,
            calls,
            failed_calls: failed,
            slow_calls: slow,
            failure_rate: rate(failed, calls),
            slow_call_rate: rate(slow, calls),
            transitions: self.transitions(),
        }
    }
}

impl fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("state", &self.state())
            .field("transitions", &self.transitions())
            .finish_non_exhaustive()
    }
}

fn state_of(w: u64) -> State {
    match word::kind(w) {
        word::CLOSED => State::Closed,
        word::OPEN => State::Open,
        _ => State::HalfOpen,
    }
}

/// `part / calls`, clamped to 1 (totals read mid-update can disagree by a call).
fn rate(part: u64, calls: u64) -> f64 {
    if calls == 0 {
        0.0
    } else {
        (part as f64 / calls as f64).min(1.0)
    }
}

impl CallToken<'_> {
    /// Reports how the call went, at `now_nanos`. Outcomes of calls admitted in an earlier
    /// state (the breaker changed while the call ran) are ignored.
    pub fn record(mut self, now_nanos: u64, outcome: Outcome) {
        let trial = std::mem::replace(&mut self.trial, false);
        let inner = self.inner;
        let slow = inner.slow_after.is_some_and(|t| outcome.duration > t);
        if trial {
            inner.record_trial(self.generation, now_nanos, outcome.failed, slow);
        } else {
            inner.record_closed(self.generation, now_nanos, outcome.failed, slow);
        }
    }
}

impl Drop for CallToken<'_> {
    fn drop(&mut self) {
        if self.trial {
            self.inner.release_trial(self.generation);
        }
    }
}

impl fmt::Debug for CallToken<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallToken")
            .field("generation", &self.generation)
            .field("trial", &self.trial)
            .finish_non_exhaustive()
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Option<Transition>> {
        // The log is a plain value that no panic can leave half-written.
        self.log.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts and logs a transition; `log` is the locked log, so transitions stay in order.
    fn note(&self, log: &mut Option<Transition>, from: State, to: State, at_nanos: u64) {
        self.transitions.fetch_add(1, Ordering::Relaxed);
        *log = Some(Transition { from, to, at_nanos });
    }

    fn record_closed(&self, generation: u64, now: u64, failed: bool, slow: bool) {
        let w = self.state.word.load(Ordering::Acquire);
        if word::kind(w) != word::CLOSED || word::generation(w) != generation {
            return;
        }
        self.window.record(&self.totals, now, failed, slow);
        let (calls, failed, slow) = self.window.totals(&self.totals, now);
        if calls >= self.min_calls && self.exceeded(failed, slow, calls) {
            self.transition(w, word::OPEN, now);
        }
    }

    /// resilience4j compares rates (`failed / calls >= threshold`), not `failed >= threshold ×
    /// calls`: the two round differently (3 / 10 ≥ 0.3 holds, 3 ≥ 0.3 × 10 does not).
    fn exceeded(&self, failed: u64, slow: u64, calls: u64) -> bool {
        (failed > 0 && rate(failed, calls) >= self.failure_threshold)
            || (slow > 0 && rate(slow, calls) >= self.slow_threshold)
    }

    fn record_trial(&self, generation: u64, now: u64, failed: bool, slow: bool) {
        let add =
            1 << word::DONE | u64::from(failed) << word::FAILED | u64::from(slow) << word::SLOW;
        let mut w = self.state.word.load(Ordering::Acquire);
        loop {
            if word::kind(w) != word::HALF_OPEN || word::generation(w) != generation {
                return;
            }
            let next = w + add;
            match self.state.word.compare_exchange_weak(
                w,
                next,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break w = next,
                Err(actual) => w = actual,
            }
        }
        // Exactly one record completes the trials: the one whose add made `done` reach the
        // limit. It decides.
        let done = word::field(w, word::DONE);
        if done >= self.half_open_calls {
            let failed = word::field(w, word::FAILED);
            let slow = word::field(w, word::SLOW);
            let to = if self.exceeded(failed, slow, done) {
                word::OPEN
            } else {
                word::CLOSED
            };
            self.transition(w, to, now);
        }
    }

    fn release_trial(&self, generation: u64) {
        let mut w = self.state.word.load(Ordering::Acquire);
        while word::kind(w) == word::HALF_OPEN
            && word::generation(w) == generation
            && word::field(w, word::ISSUED) > word::field(w, word::DONE)
        {
            match self.state.word.compare_exchange_weak(
                w,
                w - (1 << word::ISSUED),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return,
                Err(actual) => w = actual,
            }
        }
    }

    /// Moves from state word `from` to a fresh word of kind `to`, unless another thread changed
    /// the state first. Runs under the log lock: in closed state nothing else writes the word,
    /// and a half-open word whose trials are all done has no writers left either, so checking
    /// under the lock and then storing is race-free.
    fn transition(&self, from: u64, to: u64, now: u64) {
        let mut log = self.lock();
        if self.state.word.load(Ordering::Acquire) != from {
            return;
        }
        match to {
            word::OPEN => self
                .state
                .open_until
                .store(now.saturating_add(self.open_for), Ordering::Relaxed),
            _ => self.window.reset(&self.totals),
        }
        // Release: a caller that sees the new word also sees `open_until` and the empty window.
        self.state
            .word
            .store(word::next(from, to), Ordering::Release);
        self.note(&mut log, state_of(from), state_of(to), now);
    }
}
