//! Segments whose members live in a Redis set (`segments.NAME.source: redis`).
//!
//! The request path never waits on Redis: [`RedisSegment::contains`] reads a local copy of the
//! set, swapped in whole by a background task that re-reads the set every `refresh`. When Redis
//! cannot be read, the last members read keep being served until `max_staleness` has passed
//! since the last successful read; then the segment counts as empty (its traffic goes to stable),
//! [`RedisSegment::is_stale`] says so and a warning is logged. The next successful read makes it
//! fresh again, by itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, sleep_until};
use tracing::{debug, info, warn};

use crate::{Client, Error};

/// Members asked for per `SSCAN` call: a small set comes back in one call whatever this is; a
/// large one in pages that keep each call short for Redis (unlike `SMEMBERS`, which would block
/// it for the whole set).
const SCAN_COUNT: u32 = 1000;

/// The shortest refresh interval; shorter ones are raised to it.
pub const MIN_REFRESH: Duration = Duration::from_millis(10);

type Members = foldhash::HashSet<Box<str>>;

/// A segment backed by a Redis set. Dropping it stops its refresher.
pub struct RedisSegment {
    shared: Arc<Shared>,
    refresher: JoinHandle<()>,
}

struct Shared {
    client: Client,
    set_key: String,
    members: ArcSwap<Members>,
    stale: AtomicBool,
    /// Set by `add` and `remove`, so that this gateway sees its own change at once.
    refresh_now: Notify,
}

impl RedisSegment {
    /// Starts reading the set `set_key` every `refresh` (at least [`MIN_REFRESH`]) in the
    /// background. Until the first read succeeds the segment is empty; it becomes stale if no
    /// read has succeeded `max_staleness` after the start or after the last successful read.
    pub fn start(
        client: Client,
        set_key: impl Into<String>,
        refresh: Duration,
        max_staleness: Duration,
    ) -> RedisSegment {
        let shared = Arc::new(Shared {
            client,
            set_key: set_key.into(),
            members: ArcSwap::from_pointee(Members::default()),
            stale: AtomicBool::new(false),
            refresh_now: Notify::new(),
        });
        let refresher = shared.client.spawn(refresh_loop(
            Arc::clone(&shared),
            refresh.max(MIN_REFRESH),
            max_staleness,
        ));
        RedisSegment { shared, refresher }
    }

    /// Whether `member` is in the segment: a lookup in the local copy, without locks or
    /// allocation.
    pub fn contains(&self, member: &str) -> bool {
        self.shared.members.load().contains(member)
    }

    /// True while the members are older than `max_staleness` and the segment is served empty:
    /// `graylane_segment_stale{segment}`.
    pub fn is_stale(&self) -> bool {
        self.shared.stale.load(Ordering::Relaxed)
    }

    /// `SADD`s `members` to the set (for the admin API and the CLI) and refreshes this gateway's
    /// copy right away; the others see them at their next refresh. Returns how many were new.
    pub async fn add<I, S>(&self, members: I) -> Result<u64, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.change("SADD", members).await
    }

    /// `SREM`s `members` from the set; see [`RedisSegment::add`]. Returns how many were there.
    pub async fn remove<I, S>(&self, members: I) -> Result<u64, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.change("SREM", members).await
    }

    async fn change<I, S>(&self, command: &str, members: I) -> Result<u64, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut cmd = redis::cmd(command);
        cmd.arg(&self.shared.set_key);
        let mut any = false;
        for member in members {
            cmd.arg(member.as_ref());
            any = true;
        }
        if !any {
            return Ok(0);
        }
        let client = &self.shared.client;
        let changed = client.query(&cmd, client.options().command_timeout).await?;
        self.shared.refresh_now.notify_one();
        Ok(changed)
    }
}

impl std::fmt::Debug for RedisSegment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSegment")
            .field("redis", &self.shared.client.url())
            .field("set_key", &self.shared.set_key)
            .field("members", &self.shared.members.load().len())
            .field("stale", &self.is_stale())
            .finish()
    }
}

impl Drop for RedisSegment {
    fn drop(&mut self) {
        self.refresher.abort();
    }
}

impl Shared {
    /// The whole set, by `SSCAN`; members that are not UTF-8 can never match a request and are
    /// skipped.
    async fn read(&self) -> Result<Members, Error> {
        let timeout = self.client.options().command_timeout;
        let mut members = Members::default();
        let mut skipped = 0usize;
        let mut cursor: u64 = 0;
        loop {
            let mut cmd = redis::cmd("SSCAN");
            cmd.arg(&self.set_key)
                .arg(cursor)
                .arg("COUNT")
                .arg(SCAN_COUNT);
            let (next, page): (u64, Vec<Vec<u8>>) = self.client.query(&cmd, timeout).await?;
            for raw in page {
                match String::from_utf8(raw) {
                    Ok(member) => {
                        members.insert(member.into_boxed_str());
                    }
                    Err(_) => skipped += 1,
                }
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        if skipped > 0 {
            debug!(key = %self.set_key, skipped, "segment: skipped members that are not UTF-8");
        }
        Ok(members)
    }

    fn go_stale(&self, max_staleness: Duration) {
        self.members.store(Arc::new(Members::default()));
        if !self.stale.swap(true, Ordering::Relaxed) {
            warn!(
                redis = %self.client.url(),
                key = %self.set_key,
                ?max_staleness,
                "segment: no successful read of the Redis set for max_staleness; \
                 the segment counts as empty (its traffic goes to stable) until Redis answers"
            );
        }
    }

    /// Runs `work` while watching the staleness deadline, so that the segment goes stale on
    /// time even while a read is slow or the refresher is waiting.
    async fn watching<F: Future>(
        &self,
        work: F,
        fresh_until: Instant,
        max_staleness: Duration,
    ) -> F::Output {
        tokio::pin!(work);
        loop {
            tokio::select! {
                out = &mut work => return out,
                () = sleep_until(fresh_until), if !self.stale.load(Ordering::Relaxed) => {
                    self.go_stale(max_staleness);
                }
            }
        }
    }
}

async fn refresh_loop(shared: Arc<Shared>, refresh: Duration, max_staleness: Duration) {
    let mut fresh_until = Instant::now() + max_staleness;
    let mut failing = false;
    loop {
        match shared
            .watching(shared.read(), fresh_until, max_staleness)
            .await
        {
            Ok(members) => {
                let count = members.len();
                shared.members.store(Arc::new(members));
                fresh_until = Instant::now() + max_staleness;
                let was_stale = shared.stale.swap(false, Ordering::Relaxed);
                if was_stale || failing {
                    info!(
                        redis = %shared.client.url(),
                        key = %shared.set_key,
                        members = count,
                        "segment: the Redis set is readable again"
                    );
                }
                failing = false;
            }
            Err(e) => {
                if !failing {
                    warn!(
                        key = %shared.set_key,
                        error = %e,
                        ?max_staleness,
                        "segment: reading the Redis set failed; serving the last members read \
                         until max_staleness"
                    );
                }
                failing = true;
            }
        }
        let pause = async {
            tokio::select! {
                () = sleep(refresh) => {}
                () = shared.refresh_now.notified() => {}
            }
        };
        shared.watching(pause, fresh_until, max_staleness).await;
    }
}
