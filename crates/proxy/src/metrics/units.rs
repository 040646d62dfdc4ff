//! The distinct units (bucketing keys: users) each version of an experiment has seen, counted
//! in fixed memory per worker, for the sample-ratio-mismatch check.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};

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
pub(super) struct UnitSample {
    /// A sequence lock: odd while the worker rebuilds the table; readers retry.
    seq: AtomicU64,
    level: AtomicU32,
    len: AtomicUsize,
    /// 0 is an empty slot (a unit hashing to 0 is stored as 1).
    table: Box<[AtomicU64]>,
}

impl UnitSample {
    pub(super) fn new() -> UnitSample {
        UnitSample {
            seq: AtomicU64::new(0),
            level: AtomicU32::new(0),
            len: AtomicUsize::new(0),
            table: (0..UNIT_SLOTS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    pub(super) fn kept(hash: u64, level: u32) -> bool {
        level == 0 || hash >> (64 - level) == 0
    }

    /// Where probing for `hash` starts: bits that neither choose the bucket (the low ones) nor
    /// the sample (the top ones).
    fn home(hash: u64) -> usize {
        (hash >> 24) as usize & (UNIT_SLOTS - 1)
    }

    /// Adds `hash`; only the owning worker calls this.
    pub(super) fn insert(&self, hash: u64) {
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
    pub(super) fn read_into(&self, out: &mut Vec<u64>) -> u32 {
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

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// Well-spread 64-bit hashes, as the bucketing hash gives.
    pub(in crate::metrics) fn hash(i: u64) -> u64 {
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
