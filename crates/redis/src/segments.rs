//! Segments whose members live in a Redis set (`segments.NAME.source: redis`).
//!
//! The request path never waits on Redis: [`RedisSegment::contains`] reads a local copy of the
//! set, swapped in whole by a background task that re-reads the set every `refresh`. When Redis
//! cannot be read, the last members read keep being served until `max_staleness` has passed
//! since the last successful read; then the segment counts as empty (its traffic goes to stable)
//! and a warning is logged. The next successful read makes it fresh again, by itself.
//!
//! [`RedisSegment::is_stale`] is true whenever the members served are not known to be current:
//! from the start until the first successful read (Redis down at start), and past
//! `max_staleness`. With a cache file ([`RedisSegment::start_cached`]) the members of every
//! successful read are also kept on disk, so a gateway restarted during a Redis outage serves
//! the members read last (until `max_staleness` after that read) instead of none.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
    /// Past `max_staleness` without a successful read: the segment is served empty.
    expired: AtomicBool,
    /// A read has succeeded since the start.
    read_once: AtomicBool,
    /// Set by `add` and `remove`, so that this gateway sees its own change at once.
    refresh_now: Notify,
    /// Where the members of the last successful read are kept across restarts.
    cache: Option<PathBuf>,
}

impl RedisSegment {
    /// Starts reading the set `set_key` every `refresh` (at least [`MIN_REFRESH`]) in the
    /// background. Until the first read succeeds the segment is empty and stale; it is served
    /// empty if no read has succeeded `max_staleness` after the last successful one.
    pub fn start(
        client: Client,
        set_key: impl Into<String>,
        refresh: Duration,
        max_staleness: Duration,
    ) -> RedisSegment {
        Self::start_with(client, set_key.into(), refresh, max_staleness, None)
    }

    /// As [`RedisSegment::start`], keeping the members of each successful read in the file
    /// `cache` (written whole, by rename, when they change): at start the members found there
    /// are served, if they were read less than `max_staleness` ago, until Redis answers. The
    /// segment is stale until then all the same. A cache that cannot be read or written is
    /// logged and otherwise ignored.
    pub fn start_cached(
        client: Client,
        set_key: impl Into<String>,
        refresh: Duration,
        max_staleness: Duration,
        cache: PathBuf,
    ) -> RedisSegment {
        Self::start_with(client, set_key.into(), refresh, max_staleness, Some(cache))
    }

    fn start_with(
        client: Client,
        set_key: String,
        refresh: Duration,
        max_staleness: Duration,
        cache: Option<PathBuf>,
    ) -> RedisSegment {
        let (members, age) = cache
            .as_deref()
            .and_then(|path| load_cache(path, &set_key, max_staleness))
            .unwrap_or_default();
        let shared = Arc::new(Shared {
            client,
            set_key,
            members: ArcSwap::from_pointee(members),
            expired: AtomicBool::new(false),
            read_once: AtomicBool::new(false),
            refresh_now: Notify::new(),
            cache,
        });
        let refresher = shared.client.spawn(refresh_loop(
            Arc::clone(&shared),
            refresh.max(MIN_REFRESH),
            max_staleness,
            max_staleness.saturating_sub(age),
        ));
        RedisSegment { shared, refresher }
    }

    /// Whether `member` is in the segment: a lookup in the local copy, without locks or
    /// allocation.
    pub fn contains(&self, member: &str) -> bool {
        self.shared.members.load().contains(member)
    }

    /// True while the members served are not known to be current: no read of the set has
    /// succeeded since the start, or none for `max_staleness` (the segment is then served
    /// empty): `graylane_segment_stale{segment}`.
    pub fn is_stale(&self) -> bool {
        self.shared.expired.load(Ordering::Relaxed)
            || !self.shared.read_once.load(Ordering::Relaxed)
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
            .field("cache", &self.shared.cache)
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
        if !self.expired.swap(true, Ordering::Relaxed) {
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
                () = sleep_until(fresh_until), if !self.expired.load(Ordering::Relaxed) => {
                    self.go_stale(max_staleness);
                }
            }
        }
    }
}

async fn refresh_loop(
    shared: Arc<Shared>,
    refresh: Duration,
    max_staleness: Duration,
    first_deadline: Duration,
) {
    let mut fresh_until = Instant::now() + first_deadline;
    let mut failing = false;
    loop {
        match shared
            .watching(shared.read(), fresh_until, max_staleness)
            .await
        {
            Ok(members) => {
                let count = members.len();
                let changed = **shared.members.load() != members;
                shared.members.store(Arc::new(members));
                fresh_until = Instant::now() + max_staleness;
                let was_stale = shared.expired.swap(false, Ordering::Relaxed);
                let first = !shared.read_once.swap(true, Ordering::Relaxed);
                if was_stale || failing {
                    info!(
                        redis = %shared.client.url(),
                        key = %shared.set_key,
                        members = count,
                        "segment: the Redis set is readable again"
                    );
                }
                failing = false;
                if let Some(path) = &shared.cache
                    && (changed || first)
                    && let Err(e) = save_cache(path, &shared.set_key, &shared.members.load())
                {
                    warn!(
                        key = %shared.set_key,
                        path = %path.display(),
                        error = %e,
                        "segment: cannot keep the members in the cache file; a restart during a \
                         Redis outage will not have them"
                    );
                }
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

/// The first line of a cache file: the set's key and when it was read (Unix ms), so that a file
/// of another set, or one older than `max_staleness`, is not served.
fn cache_header(set_key: &str, read_at_ms: u128) -> String {
    format!("# graylane segment cache v1 key={set_key:?} read_at_ms={read_at_ms}")
}

fn unix_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

/// Writes `members` to `path` whole (a sibling, then a rename), one per line after the header.
/// Members with a line break cannot match a request and are left out.
fn save_cache(path: &Path, set_key: &str, members: &Members) -> std::io::Result<()> {
    let mut text = cache_header(set_key, unix_ms());
    text.push('\n');
    for m in members.iter().filter(|m| !m.contains(['\n', '\r'])) {
        text.push_str(m);
        text.push('\n');
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

/// The members kept in `path` and how long ago they were read, if the file is this set's and
/// younger than `max_staleness`.
fn load_cache(path: &Path, set_key: &str, max_staleness: Duration) -> Option<(Members, Duration)> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            warn!(key = %set_key, path = %path.display(), error = %e, "segment: cannot read the cache file");
            return None;
        }
    };
    let (header, body) = text.split_once('\n')?;
    let prefix = cache_header(set_key, 0);
    let prefix = prefix.trim_end_matches('0');
    let read_at: u128 = header.strip_prefix(prefix)?.parse().ok()?;
    let age =
        Duration::from_millis(u64::try_from(unix_ms().saturating_sub(read_at)).unwrap_or(u64::MAX));
    if age >= max_staleness {
        info!(key = %set_key, ?age, "segment: the cached members are older than max_staleness; not served");
        return None;
    }
    let members: Members = body.lines().map(Box::from).collect();
    info!(
        key = %set_key,
        members = members.len(),
        ?age,
        "segment: serving the members cached at the last successful read until Redis answers"
    );
    Some((members, age))
}
