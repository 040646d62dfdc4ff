//! Deterministic hash bucketing, the mechanism behind release weights.
//!
//! `bucket = XXH64(seed 0, service ‖ 0x00 ‖ salt ‖ 0x00 ‖ key) % 100_000`, and a request goes to
//! the candidate iff `bucket < weight.milli_percent()`. A key's bucket never changes while the
//! service name and salt stay the same, so raising the weight only ever moves keys *toward* the
//! candidate. `docs/bucketing.md` is the normative description, with test vectors and a Python
//! reimplementation.

use xxhash_rust::xxh64::Xxh64;

/// Number of buckets: one per thousandth of a percent, so a [`graylane_config::Weight`] is
/// directly the bucket threshold.
pub const BUCKETS: u32 = 100_000;

/// The bucket (`0..BUCKETS`) of `key` for `service` under `salt`.
pub fn bucket(service: &str, salt: &str, key: &[u8]) -> u32 {
    Bucketer::new(service, salt).bucket(key)
}

/// The hash state after `service ‖ 0 ‖ salt ‖ 0`, computed once per release so a request only
/// hashes its key.
#[derive(Clone)]
pub(crate) struct Bucketer {
    prefix: Xxh64,
}

impl Bucketer {
    pub(crate) fn new(service: &str, salt: &str) -> Bucketer {
        let mut prefix = Xxh64::new(0);
        prefix.update(service.as_bytes());
        prefix.update(&[0]);
        prefix.update(salt.as_bytes());
        prefix.update(&[0]);
        Bucketer { prefix }
    }

    pub(crate) fn bucket(&self, key: &[u8]) -> u32 {
        bucket_of(self.hash(key))
    }

    /// The full 64-bit hash a bucket is taken from: it names the unit (user) for counting
    /// distinct units, which the 100 000 buckets are too few to do.
    pub(crate) fn hash(&self, key: &[u8]) -> u64 {
        let mut state = self.prefix.clone();
        state.update(key);
        state.digest()
    }
}

/// The bucket of a hash from [`Bucketer::hash`].
pub(crate) fn bucket_of(hash: u64) -> u32 {
    // The remainder is below 100_000, so the narrowing cannot truncate.
    (hash % u64::from(BUCKETS)) as u32
}

impl std::fmt::Debug for Bucketer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bucketer").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The streaming state must agree with hashing the concatenated bytes in one go, which is
    /// what the documentation (and any other implementation) does.
    #[test]
    fn streaming_equals_one_shot() {
        for (service, salt, key) in [
            ("payment", "canary", &b"user-1"[..]),
            ("", "", b""),
            (
                "a-much-longer-service-name-than-usual",
                "salt",
                &[0xffu8; 100][..],
            ),
        ] {
            let mut bytes = Vec::new();
            bytes.extend_from_slice(service.as_bytes());
            bytes.push(0);
            bytes.extend_from_slice(salt.as_bytes());
            bytes.push(0);
            bytes.extend_from_slice(key);
            let expected = (xxhash_rust::xxh64::xxh64(&bytes, 0) % 100_000) as u32;
            assert_eq!(bucket(service, salt, key), expected);
        }
    }

    #[test]
    fn separator_keeps_fields_apart() {
        // Without the 0x00 separators these would hash the same bytes.
        assert_ne!(bucket("ab", "c", b"k"), bucket("a", "bc", b"k"));
    }
}
