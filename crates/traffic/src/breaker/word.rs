//! The breaker's state word. It packs everything a call needs to decide — the state, its
//! generation and the half-open trial counts — so one load (closed, open) or one
//! compare-and-swap (half-open) suffices:
//!
//! | bits  | 0–1  | 2–15       | 16–27  | 28–39 | 40–51  | 52–63 |
//! |-------|------|------------|--------|-------|--------|-------|
//! | field | kind | generation | issued | done  | failed | slow  |
//!
//! The generation changes with every transition; a token is only counted by the state (and
//! generation) that issued it. Its 14 bits wrap after 16,384 transitions, far longer than any
//! call takes. The last four fields count half-open trials (hence at most 4,095 of them).

use std::sync::atomic::AtomicU64;

/// The state word, and when an open state ends.
#[derive(Default)]
pub(super) struct StateWord {
    pub(super) word: AtomicU64,
    pub(super) open_until: AtomicU64,
}

pub(super) const CLOSED: u64 = 0;
pub(super) const OPEN: u64 = 1;
pub(super) const HALF_OPEN: u64 = 2;
pub(super) const ISSUED: u32 = 16;
pub(super) const DONE: u32 = 28;
pub(super) const FAILED: u32 = 40;
pub(super) const SLOW: u32 = 52;
pub(super) const MAX_TRIALS: u64 = 0xfff;
const GENERATIONS: u64 = 0x3fff;

pub(super) fn kind(w: u64) -> u64 {
    w & 0b11
}

pub(super) fn generation(w: u64) -> u64 {
    (w >> 2) & GENERATIONS
}

pub(super) fn field(w: u64, shift: u32) -> u64 {
    (w >> shift) & MAX_TRIALS
}

/// A fresh word of `kind` for the generation after `w`'s.
pub(super) fn next(w: u64, kind: u64) -> u64 {
    kind | (((generation(w) + 1) & GENERATIONS) << 2)
}
