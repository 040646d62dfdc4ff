//! Bounded waiting: polling until something holds, never longer than a stated limit.

use std::future::Future;
use std::time::{Duration, Instant};

use crate::POLL_DEADLINE;

/// Polls `check` until it returns `Some`, up to [`POLL_DEADLINE`]; panics naming `what`.
pub async fn eventually<T, F, Fut>(what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    eventually_within(POLL_DEADLINE, what, check).await
}

/// [`eventually`] with its own bound, for what takes several analysis intervals of real
/// traffic (slower on a loaded machine, never unbounded).
pub async fn eventually_within<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `cond` every 10 ms until it holds or `limit` passes; how long it took, or `None`.
/// For tests that measure how soon something happens.
pub async fn time_until(limit: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if cond() {
            return Some(start.elapsed());
        }
        if start.elapsed() > limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Blocking: waits until `done` holds, polling every 20 ms, for at most `limit`; returns how
/// long it took, or panics naming `what`.
pub fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "{what}: not so within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}
