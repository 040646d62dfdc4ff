//! [`Client`]: local evaluation of graylane's flags and releases from a snapshot it polls from
//! the admin API (with `If-None-Match`, so an unchanged snapshot costs a `304`). It keeps the
//! last good snapshot while graylane is down or answers something it cannot use, says how old
//! that snapshot is and whether it is past the staleness bound, and answers from an offline
//! default before the first snapshot arrives.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use graylane_rules::flags::EvalContext;
use http::Uri;
use tokio::task::JoinHandle;

use crate::fetch::{self, Fetched, SNAPSHOT_PATH};
use crate::snapshot::{EvalError, Evaluation, Snapshot};

/// How a [`Client`] reaches graylane and how fresh it keeps its snapshot.
#[derive(Debug, Clone)]
pub struct Options {
    admin: String,
    token: Option<String>,
    poll_interval: Duration,
    max_staleness: Duration,
    request_timeout: Duration,
    offline: Option<Arc<Snapshot>>,
}

impl Options {
    /// Polls the admin listener at `admin` (`http://127.0.0.1:9900`) every 5 s; a snapshot
    /// older than 60 s is stale; each poll may take 2 s.
    pub fn new(admin: impl Into<String>) -> Options {
        Options {
            admin: admin.into(),
            token: None,
            poll_interval: Duration::from_secs(5),
            max_staleness: Duration::from_secs(60),
            request_timeout: Duration::from_secs(2),
            offline: None,
        }
    }

    /// The bearer token (role `viewer` is enough).
    pub fn token(mut self, token: impl Into<String>) -> Options {
        self.token = Some(token.into());
        self
    }

    /// Time between two polls.
    pub fn poll_interval(mut self, every: Duration) -> Options {
        self.poll_interval = every;
        self
    }

    /// How old the last snapshot (since graylane last confirmed it) may be before evaluations
    /// say [`Freshness::Stale`].
    pub fn max_staleness(mut self, bound: Duration) -> Options {
        self.max_staleness = bound;
        self
    }

    /// The most one poll may take.
    pub fn request_timeout(mut self, timeout: Duration) -> Options {
        self.request_timeout = timeout;
        self
    }

    /// What evaluations answer from before the first snapshot arrives (a snapshot saved
    /// earlier, or [`Snapshot::from_config`]); without one they fail with
    /// [`EvalError::NoSnapshot`] until then.
    pub fn offline(mut self, snapshot: Snapshot) -> Options {
        self.offline = Some(Arc::new(snapshot));
        self
    }
}

/// Why a [`Client`] could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the admin URL `{url}` {problem}")]
pub struct BadUrl {
    url: String,
    problem: &'static str,
}

/// How current the snapshot an evaluation used is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Graylane confirmed the snapshot `age` ago, within the staleness bound.
    Fresh {
        /// Since graylane last sent or confirmed it.
        age: Duration,
    },
    /// Graylane last confirmed it `age` ago, past the staleness bound (it is down, or answers
    /// what the SDK cannot use): the last good snapshot still answers.
    Stale {
        /// Since graylane last sent or confirmed it.
        age: Duration,
    },
    /// No snapshot yet: the offline default answered.
    Offline,
}

/// An evaluation and how current its snapshot was.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// What the context gets.
    pub evaluation: Evaluation,
    /// How current the snapshot that said so was.
    pub freshness: Freshness,
}

/// What a [`Client`] knows of its snapshot, for health checks and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The configuration revision of the snapshot in use; `None` before the first.
    pub revision: Option<u64>,
    /// Since graylane last sent or confirmed it; `None` before the first.
    pub age: Option<Duration>,
    /// No snapshot yet, or one past the staleness bound.
    pub stale: bool,
    /// Polls answered `200` with a snapshot that was used.
    pub updates: u64,
    /// Polls answered `304`.
    pub not_modified: u64,
    /// Why the last poll failed, if it did.
    pub last_error: Option<String>,
}

/// What one poll did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refreshed {
    /// A new snapshot is in use.
    Updated,
    /// Graylane confirmed the snapshot in use (`304`).
    NotModified,
}

struct Current {
    snapshot: Arc<Snapshot>,
    etag: Option<String>,
}

struct Shared {
    uri: Uri,
    options: Options,
    current: ArcSwapOption<Current>,
    /// When graylane last sent or confirmed `current`: milliseconds since `started`, plus one
    /// (0: never).
    confirmed_ms: AtomicU64,
    started: Instant,
    updates: AtomicU64,
    not_modified: AtomicU64,
    last_error: Mutex<Option<String>>,
    /// One poll at a time, so a manual refresh and the poller do not race on the tag.
    polling: tokio::sync::Mutex<()>,
}

/// Local evaluation of graylane's flags and releases. Cheap to clone; polling stops when the
/// last clone is dropped.
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
    _poller: Arc<Poller>,
}

struct Poller(Option<JoinHandle<()>>);

impl Drop for Poller {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("admin", &self.shared.options.admin)
            .field("status", &self.status())
            .finish()
    }
}

impl Client {
    /// Starts polling (the first poll at once) on the current tokio runtime.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, as `tokio::spawn` does.
    pub fn start(options: Options) -> Result<Client, BadUrl> {
        let client = Client::without_polling(options)?;
        let shared = Arc::clone(&client.shared);
        let every = shared.options.poll_interval.max(Duration::from_millis(10));
        // The task holds only a weak handle: dropping every `Client` ends it.
        let weak = Arc::downgrade(&shared);
        drop(shared);
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(shared) = weak.upgrade() else { return };
                let _ = Client::poll(&shared).await;
            }
        });
        Ok(Client {
            _poller: Arc::new(Poller(Some(task))),
            ..client
        })
    }

    /// A client that polls only when [`Client::refresh`] is called.
    pub fn without_polling(options: Options) -> Result<Client, BadUrl> {
        let bad = |problem| BadUrl {
            url: options.admin.clone(),
            problem,
        };
        let base: Uri = options
            .admin
            .parse()
            .map_err(|_| bad("is not a URL, e.g. http://127.0.0.1:9900"))?;
        if base.scheme_str() != Some("http") {
            return Err(bad(
                "must start with http:// (the admin listener serves plain HTTP)",
            ));
        }
        let authority = base.authority().ok_or_else(|| bad("has no host"))?;
        let prefix = base.path().trim_end_matches('/');
        let uri = Uri::builder()
            .scheme("http")
            .authority(authority.clone())
            .path_and_query(format!("{prefix}{SNAPSHOT_PATH}"))
            .build()
            .map_err(|_| bad("cannot be joined with the snapshot's path"))?;
        Ok(Client {
            shared: Arc::new(Shared {
                uri,
                options,
                current: ArcSwapOption::empty(),
                confirmed_ms: AtomicU64::new(0),
                started: Instant::now(),
                updates: AtomicU64::new(0),
                not_modified: AtomicU64::new(0),
                last_error: Mutex::new(None),
                polling: tokio::sync::Mutex::new(()),
            }),
            _poller: Arc::new(Poller(None)),
        })
    }

    /// Polls once now. On failure the snapshot in use stays (and keeps ageing).
    pub async fn refresh(&self) -> Result<Refreshed, String> {
        Client::poll(&self.shared).await
    }

    async fn poll(shared: &Shared) -> Result<Refreshed, String> {
        let _one = shared.polling.lock().await;
        let current = shared.current.load_full();
        let etag = current.as_ref().and_then(|c| c.etag.as_deref());
        let options = &shared.options;
        let result = match fetch::fetch(
            &shared.uri,
            options.token.as_deref(),
            etag,
            options.request_timeout,
        )
        .await
        {
            Ok(Fetched::NotModified) if current.is_some() => {
                shared.not_modified.fetch_add(1, Ordering::Relaxed);
                Ok(Refreshed::NotModified)
            }
            Ok(Fetched::NotModified) => Err("a 304 to a request without a tag".to_string()),
            Ok(Fetched::Snapshot { body, etag }) => match Snapshot::from_json(&body) {
                Ok(snapshot) => {
                    shared.current.store(Some(Arc::new(Current {
                        snapshot: Arc::new(snapshot),
                        etag,
                    })));
                    shared.updates.fetch_add(1, Ordering::Relaxed);
                    Ok(Refreshed::Updated)
                }
                Err(e) => Err(e.to_string()),
            },
            Err(e) => Err(e),
        };
        let mut last_error = shared.last_error.lock().unwrap_or_else(|e| e.into_inner());
        match &result {
            Ok(_) => {
                let ms = u64::try_from(shared.started.elapsed().as_millis()).unwrap_or(u64::MAX);
                shared
                    .confirmed_ms
                    .store(ms.saturating_add(1), Ordering::Relaxed);
                *last_error = None;
            }
            Err(e) => *last_error = Some(e.clone()),
        }
        result
    }

    /// Since graylane last sent or confirmed the snapshot in use; `None` before the first.
    pub fn age(&self) -> Option<Duration> {
        match self.shared.confirmed_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(
                self.shared
                    .started
                    .elapsed()
                    .saturating_sub(Duration::from_millis(ms - 1)),
            ),
        }
    }

    /// What the client knows of its snapshot.
    pub fn status(&self) -> Status {
        let shared = &self.shared;
        let age = self.age();
        Status {
            revision: shared
                .current
                .load()
                .as_ref()
                .map(|c| c.snapshot.revision()),
            age,
            stale: age.is_none_or(|a| a > shared.options.max_staleness),
            updates: shared.updates.load(Ordering::Relaxed),
            not_modified: shared.not_modified.load(Ordering::Relaxed),
            last_error: shared
                .last_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }

    /// The snapshot evaluations use now and how current it is: the last one graylane sent,
    /// else the offline default.
    pub fn snapshot(&self) -> Result<(Arc<Snapshot>, Freshness), EvalError> {
        if let Some(current) = self.shared.current.load_full() {
            let age = self.age().unwrap_or_default();
            let freshness = if age > self.shared.options.max_staleness {
                Freshness::Stale { age }
            } else {
                Freshness::Fresh { age }
            };
            return Ok((Arc::clone(&current.snapshot), freshness));
        }
        match &self.shared.options.offline {
            Some(offline) => Ok((Arc::clone(offline), Freshness::Offline)),
            None => Err(EvalError::NoSnapshot),
        }
    }

    /// What `ctx` gets from flag `key` (or `release.SERVICE`).
    pub fn flag(&self, key: &str, ctx: &EvalContext) -> Result<Answer, EvalError> {
        let (snapshot, freshness) = self.snapshot()?;
        Ok(Answer {
            evaluation: snapshot.flag(key, ctx)?,
            freshness,
        })
    }

    /// The version of `service` a request from `ctx` gets.
    pub fn release(&self, service: &str, ctx: &EvalContext) -> Result<Answer, EvalError> {
        let (snapshot, freshness) = self.snapshot()?;
        Ok(Answer {
            evaluation: snapshot.release(service, ctx)?,
            freshness,
        })
    }

    /// Flag `key` as a boolean for `ctx`, or `default` when it cannot be evaluated or is not
    /// a boolean.
    pub fn bool_flag(&self, key: &str, ctx: &EvalContext, default: bool) -> bool {
        self.flag(key, ctx)
            .ok()
            .and_then(|a| a.evaluation.value.as_bool())
            .unwrap_or(default)
    }
}
