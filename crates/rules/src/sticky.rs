//! Signed sticky cookies: a cookie carries the client's bucket, not a version, with an
//! HMAC-SHA256 tag so that a client cannot pick its own bucket (or version).
//!
//! The value is `v1.<bucket>.<tag>`: the bucket in decimal (`0..BUCKETS`) and the first 16
//! bytes of `HMAC-SHA256(key, service ‖ 0x00 ‖ salt ‖ 0x00 ‖ bucket as 4 big-endian bytes)` in
//! lower-case hex. The first key signs; every key verifies, so keys can be rotated by putting a
//! new one first and dropping the old one once its cookies have expired. Binding the tag to the
//! service and the salt means a cookie is only good for the release it was issued under: a new
//! candidate (a new salt) draws its users afresh. `docs/bucketing.md` describes the format.
//!
//! Verification is allocation-free and compares tags in constant time.

use std::fmt;

use ring::hmac;

use crate::bucket::BUCKETS;

/// Bytes of the HMAC tag a cookie carries: 128 bits is far beyond guessing.
const TAG_LEN: usize = 16;
/// Shortest accepted key.
pub const MIN_KEY_LEN: usize = 16;
const PREFIX: &[u8] = b"v1.";
/// Longest cookie value: `v1.` + five digits + `.` + the tag in hex.
const VALUE_MAX: usize = PREFIX.len() + 5 + 1 + 2 * TAG_LEN;

/// The keys sticky cookies are signed with: the first signs, all verify.
#[derive(Clone)]
pub struct CookieKeys {
    keys: Box<[hmac::Key]>,
}

/// Why a list of cookie keys was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CookieKeysError(String);

impl fmt::Display for CookieKeysError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CookieKeysError {}

impl CookieKeys {
    /// Keys separated by commas or line breaks, surrounding blanks ignored; each key's bytes
    /// are used as written and must be at least [`MIN_KEY_LEN`] long.
    pub fn parse(text: &str) -> Result<CookieKeys, CookieKeysError> {
        let keys: Vec<&str> = text
            .split([',', '\n'])
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .collect();
        if keys.is_empty() {
            return Err(CookieKeysError("no cookie key is given".into()));
        }
        if let Some((i, short)) = keys.iter().enumerate().find(|(_, k)| k.len() < MIN_KEY_LEN) {
            return Err(CookieKeysError(format!(
                "cookie key #{} is {} bytes long; a key needs at least {MIN_KEY_LEN}",
                i + 1,
                short.len()
            )));
        }
        Ok(CookieKeys {
            keys: keys
                .iter()
                .map(|k| hmac::Key::new(hmac::HMAC_SHA256, k.as_bytes()))
                .collect(),
        })
    }

    /// How many keys there are (the first signs).
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Always false: [`CookieKeys::parse`] refuses an empty list.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

impl fmt::Debug for CookieKeys {
    /// Never the keys themselves: they end up in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CookieKeys({} keys)", self.keys.len())
    }
}

/// One release's signer: per key, the HMAC state after `service ‖ 0 ‖ salt ‖ 0`, so a request
/// only feeds its bucket.
#[derive(Clone)]
pub(crate) struct Signer {
    states: Box<[hmac::Context]>,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer").finish_non_exhaustive()
    }
}

impl Signer {
    pub(crate) fn new(keys: &CookieKeys, service: &str, salt: &str) -> Signer {
        let states = keys
            .keys
            .iter()
            .map(|key| {
                let mut state = hmac::Context::with_key(key);
                state.update(service.as_bytes());
                state.update(&[0]);
                state.update(salt.as_bytes());
                state.update(&[0]);
                state
            })
            .collect();
        Signer { states }
    }

    fn tag(state: &hmac::Context, bucket: u32) -> [u8; TAG_LEN] {
        let mut state = state.clone();
        state.update(&bucket.to_be_bytes());
        let mut tag = [0; TAG_LEN];
        tag.copy_from_slice(&state.sign().as_ref()[..TAG_LEN]);
        tag
    }

    /// The cookie value for `bucket`, signed with the first key.
    pub(crate) fn sign(&self, bucket: u32) -> StickyValue {
        let mut value = StickyValue {
            buf: [0; VALUE_MAX],
            len: 0,
        };
        value.push(PREFIX);
        let mut digits = [0u8; 5];
        let mut n = bucket % BUCKETS;
        let mut start = digits.len();
        loop {
            start -= 1;
            digits[start] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        value.push(&digits[start..]);
        value.push(b".");
        if let Some(first) = self.states.first() {
            for b in Self::tag(first, bucket % BUCKETS) {
                value.push(&[HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]]);
            }
        }
        value
    }

    /// The bucket `value` carries when one of the keys signed it for this release.
    pub(crate) fn verify(&self, value: &[u8]) -> Option<u32> {
        let rest = value.strip_prefix(PREFIX)?;
        let dot = memchr::memchr(b'.', rest)?;
        let (digits, hex) = (&rest[..dot], &rest[dot + 1..]);
        if digits.is_empty() || digits.len() > 5 || hex.len() != 2 * TAG_LEN {
            return None;
        }
        let mut bucket = 0u32;
        for &d in digits {
            if !d.is_ascii_digit() {
                return None;
            }
            bucket = bucket * 10 + u32::from(d - b'0');
        }
        if bucket >= BUCKETS {
            return None;
        }
        let mut given = [0u8; TAG_LEN];
        for (i, pair) in hex.chunks_exact(2).enumerate() {
            given[i] = unhex(pair[0])? << 4 | unhex(pair[1])?;
        }
        // Every key is tried, so the time taken does not say which one (if any) matched.
        let mut valid = false;
        for state in self.states.iter() {
            valid |= constant_time_eq(&Self::tag(state, bucket), &given);
        }
        valid.then_some(bucket)
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn unhex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

/// Whether `a == b`, in time that does not depend on where they differ.
fn constant_time_eq(a: &[u8; TAG_LEN], b: &[u8; TAG_LEN]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// A signed sticky cookie value, on the stack.
#[derive(Clone, Copy)]
pub struct StickyValue {
    buf: [u8; VALUE_MAX],
    len: usize,
}

impl StickyValue {
    fn push(&mut self, bytes: &[u8]) {
        self.buf[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }

    /// The value as it goes in `Set-Cookie` (ASCII letters, digits and dots).
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl fmt::Debug for StickyValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(self.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(text: &str) -> CookieKeys {
        CookieKeys::parse(text).unwrap()
    }

    fn signer(text: &str) -> Signer {
        Signer::new(&keys(text), "payment", "canary")
    }

    const K1: &str = "first-key-0123456789";
    const K2: &str = "second-key-0123456789";

    #[test]
    fn a_signed_value_verifies_to_its_bucket() {
        let s = signer(K1);
        for bucket in [0, 7, 4_999, 99_999] {
            let v = s.sign(bucket);
            assert_eq!(s.verify(v.as_bytes()), Some(bucket), "{v:?}");
        }
        let v = s.sign(42);
        let text = std::str::from_utf8(v.as_bytes()).unwrap();
        assert!(text.starts_with("v1.42."), "{text}");
        assert_eq!(text.len(), "v1.42.".len() + 32);
    }

    #[test]
    fn an_old_key_still_verifies_and_the_first_signs() {
        let old = signer(K1);
        let rotated = signer(&format!("{K2},{K1}"));
        let issued_before = old.sign(1234);
        assert_eq!(rotated.verify(issued_before.as_bytes()), Some(1234));
        let issued_after = rotated.sign(1234);
        assert_eq!(signer(K2).verify(issued_after.as_bytes()), Some(1234));
        assert_eq!(old.verify(issued_after.as_bytes()), None);
    }

    #[test]
    fn forged_and_foreign_values_are_refused() {
        let s = signer(K1);
        let good = s.sign(500);
        let text = std::str::from_utf8(good.as_bytes()).unwrap().to_string();
        // Another bucket under the same tag.
        assert_eq!(
            s.verify(text.replacen("v1.500.", "v1.501.", 1).as_bytes()),
            None
        );
        // One flipped tag character.
        let mut flipped = text.clone().into_bytes();
        let last = flipped.len() - 1;
        flipped[last] = if flipped[last] == b'0' { b'1' } else { b'0' };
        assert_eq!(s.verify(&flipped), None);
        // Signed with a key this gateway does not have, or for another service or salt.
        assert_eq!(s.verify(signer(K2).sign(500).as_bytes()), None);
        let other_service = Signer::new(&keys(K1), "search", "canary").sign(500);
        assert_eq!(s.verify(other_service.as_bytes()), None);
        let other_salt = Signer::new(&keys(K1), "payment", "canary-2").sign(500);
        assert_eq!(s.verify(other_salt.as_bytes()), None);
        // Unsigned or malformed.
        for bad in [
            "canary",
            "stable",
            "500",
            "v1.500",
            "v1.500.",
            "v1..0123456789abcdef0123456789abcdef",
            "v1.100000.0123456789abcdef0123456789abcdef",
            "v1.-1.0123456789abcdef0123456789abcdef",
            "v2.500.0123456789abcdef0123456789abcdef",
            "",
        ] {
            assert_eq!(s.verify(bad.as_bytes()), None, "{bad}");
        }
        assert_eq!(s.verify(text.to_uppercase().as_bytes()), None);
    }

    #[test]
    fn key_lists_are_checked() {
        assert_eq!(keys(&format!(" {K1} ,\n{K2}\n")).len(), 2);
        let err = CookieKeys::parse(&format!("{K1},short")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cookie key #2 is 5 bytes long; a key needs at least 16"
        );
        assert!(CookieKeys::parse(" , \n").is_err());
        assert_eq!(format!("{:?}", keys(K1)), "CookieKeys(1 keys)");
    }
}
