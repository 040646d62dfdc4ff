//! The breaker's sliding window of outcomes — the last `n` calls or the calls of the last `d` —
//! and the running totals the rates are read from, all in atomics.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use crate::padded::Padded;

/// Running sums over the window. Kept as wrapping counters: a record's two steps (window slot,
/// then totals) can interleave with another's, so a total may dip "below zero" for an instant;
/// readers clamp.
#[derive(Default)]
pub(super) struct Totals {
    pub(super) calls: AtomicU64,
    pub(super) failed: AtomicU64,
    pub(super) slow: AtomicU64,
}

impl Totals {
    pub(super) fn add(&self, calls: i64, failed: i64, slow: i64) {
        for (total, delta) in [
            (&self.calls, calls),
            (&self.failed, failed),
            (&self.slow, slow),
        ] {
            if delta != 0 {
                total.fetch_add(delta as u64, Ordering::Relaxed);
            }
        }
    }

    pub(super) fn read(&self) -> (u64, u64, u64) {
        let get = |a: &AtomicU64| (a.load(Ordering::Relaxed) as i64).max(0) as u64;
        (get(&self.calls), get(&self.failed), get(&self.slow))
    }
}

pub(super) enum WindowImpl {
    Count(CountWindow),
    Time(TimeWindow),
}

/// The last `n` outcomes in a ring of one byte each (0 = empty, else `1 | failed << 1 |
/// slow << 2`). A record claims the next position with one atomic add and swaps its outcome
/// in, learning exactly which outcome it displaced, so the totals stay equal to the ring's
/// contents whatever the interleaving.
pub(super) struct CountWindow {
    pub(super) cursor: Padded<AtomicU64>,
    pub(super) slots: Box<[AtomicU8]>,
}

/// One packed bucket per second: `calls << 42 | failed << 21 | slow`, room for 4,194,303
/// calls and 2,097,151 failed or slow calls a second per breaker — orders of magnitude above
/// what one proxy process sends to one version (past it, the counts wrap and the rates are
/// wrong for that second; nothing panics). `head` is the newest second in use (`+ 1`; 0 = none); the record that
/// moves it forward clears the buckets of the seconds it skips, so expired seconds leave the
/// totals in O(1) amortised and evaluation never scans the window.
pub(super) struct TimeWindow {
    pub(super) head: Padded<AtomicU64>,
    pub(super) buckets: Box<[AtomicU64]>,
}

pub(super) const NANOS_PER_SEC: u64 = 1_000_000_000;
pub(super) const MAX_COUNT_WINDOW: u32 = 1_000_000;
pub(super) const MAX_TIME_WINDOW_SECS: u64 = 86_400;

impl WindowImpl {
    pub(super) fn record(&self, totals: &Totals, now: u64, failed: bool, slow: bool) {
        match self {
            WindowImpl::Count(w) => {
                let at = w.cursor.fetch_add(1, Ordering::Relaxed) % w.slots.len() as u64;
                let new = 1 | u8::from(failed) << 1 | u8::from(slow) << 2;
                let old = w.slots[at as usize].swap(new, Ordering::Relaxed);
                if old != new {
                    let bit = |v: u8, b: u8| i64::from(v >> b & 1);
                    totals.add(
                        1 - bit(old, 0),
                        bit(new, 1) - bit(old, 1),
                        bit(new, 2) - bit(old, 2),
                    );
                }
            }
            WindowImpl::Time(w) => {
                let second = now / NANOS_PER_SEC + 1;
                let head = w.advance(totals, second);
                let k = w.buckets.len() as u64;
                if second + k <= head {
                    // Older than the window (a thread that read its clock long ago).
                    return;
                }
                let packed = 1 << 42 | u64::from(failed) << 21 | u64::from(slow);
                w.buckets[(second % k) as usize].fetch_add(packed, Ordering::Relaxed);
                totals.add(1, i64::from(failed), i64::from(slow));
            }
        }
    }

    /// Current totals; for a time window, first drops the seconds that fell out of it.
    pub(super) fn totals(&self, totals: &Totals, now: u64) -> (u64, u64, u64) {
        if let WindowImpl::Time(w) = self {
            w.advance(totals, now / NANOS_PER_SEC + 1);
        }
        totals.read()
    }

    /// Empties the window (on closing). Only called while half-open, when no closed-state
    /// token of the current generation exists, so nothing races it but stale records.
    pub(super) fn reset(&self, totals: &Totals) {
        match self {
            WindowImpl::Count(w) => {
                for slot in &w.slots {
                    let old = slot.swap(0, Ordering::Relaxed);
                    let bit = |b: u8| -i64::from(old >> b & 1);
                    totals.add(bit(0), bit(1), bit(2));
                }
            }
            WindowImpl::Time(w) => {
                for bucket in &w.buckets {
                    TimeWindow::clear(totals, bucket);
                }
            }
        }
    }
}

impl TimeWindow {
    /// Moves `head` to `second` if it is behind, clearing the buckets of the seconds in
    /// between (at most the whole ring). Returns the head afterwards.
    pub(super) fn advance(&self, totals: &Totals, second: u64) -> u64 {
        let k = self.buckets.len() as u64;
        let mut head = self.head.load(Ordering::Relaxed);
        while head < second {
            match self.head.compare_exchange_weak(
                head,
                second,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    for s in (head + 1).max(second.saturating_sub(k) + 1)..=second {
                        TimeWindow::clear(totals, &self.buckets[(s % k) as usize]);
                    }
                    return second;
                }
                Err(actual) => head = actual,
            }
        }
        head
    }

    pub(super) fn clear(totals: &Totals, bucket: &AtomicU64) {
        let old = bucket.swap(0, Ordering::Relaxed);
        if old != 0 {
            let field = |shift: u32| -((old >> shift & 0x1f_ffff) as i64);
            totals.add(-((old >> 42) as i64), field(21), field(0));
        }
    }
}
