//! The random numbers of the request path: trace ids, the routing engine's random draw and
//! the picks of least-request balancing. They need to be spread, not secret, and cheap.

/// A per-thread xorshift generator seeded from the clock and thread; ids (and the picks of
/// least-request balancing) need to be spread, not secret.
pub(crate) fn fastrand_u64() -> u64 {
    use std::cell::Cell;
    use std::time::{SystemTime, UNIX_EPOCH};
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let t = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
            let here = &t as *const u64 as u64;
            (t ^ here.rotate_left(32)) | 1
        });
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        x
    })
}
