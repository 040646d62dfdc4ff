//! The shared Redis client: URL parsing, one reconnecting multiplexed connection, a time limit
//! on every call, and a short fail-fast period after a connection error so that a Redis outage
//! costs the request path nothing but one probe at a time.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, FromRedisValue, RedisError};
use tokio::runtime::Handle;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::Error;

/// How a [`Client`] talks to its server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientOptions {
    /// The time allowed for one call that does not bring its own (segment refreshes, `add`,
    /// `remove`, `ping`). The rate limiter uses its own, much shorter, `timeout`. Default 1 s.
    pub command_timeout: Duration,
    /// The time allowed for one TCP connect and handshake. Default 1 s.
    pub connect_timeout: Duration,
    /// After a connection error or a timeout, calls fail at once with [`Error::Unavailable`] for
    /// this long; then one call at a time goes through as a probe until one gets a reply. Keeps
    /// a dead Redis from adding a timeout to every request. Default 250 ms.
    pub error_backoff: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            command_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
            error_backoff: Duration::from_millis(250),
        }
    }
}

/// A handle on one Redis server, cheap to clone and shared by every integration that uses the
/// same URL.
///
/// It holds one multiplexed connection (the `redis` crate's `ConnectionManager`), which
/// reconnects by itself when the connection drops. A connection that stays open but stops
/// answering (a hung server, a half-open TCP connection) is replaced once calls have been timing
/// out with no reply at all for `command_timeout`.
///
/// Must be created, and used, inside a Tokio runtime.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("url", &self.inner.url)
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

struct Inner {
    /// The URL as given, password replaced by `***`: for errors and logs.
    url: String,
    redis: redis::Client,
    manager: ArcSwap<ConnectionManager>,
    options: ClientOptions,
    runtime: Handle,
    /// Origin of the millisecond clock below.
    epoch: Instant,
    /// 0 while healthy; otherwise the clock reading (see [`Inner::now_ms`]) until which calls
    /// fail fast. The caller that moves it forward once it has passed is the probe.
    unavailable_until: AtomicU64,
    /// When the server last answered anything (a value or an error reply).
    last_reply: AtomicU64,
    /// When the connection was last replaced for being stuck.
    last_replaced: AtomicU64,
}

impl Client {
    /// A client for `url` (`redis://[user:password@]host[:port][/db]`) with default
    /// [`ClientOptions`]. Connects in the background: a server that is down now is not an error.
    pub fn open(url: &str) -> Result<Client, Error> {
        Client::with_options(url, ClientOptions::default())
    }

    /// A client for `url` with `options`; see [`Client::open`].
    pub fn with_options(url: &str, options: ClientOptions) -> Result<Client, Error> {
        let shown = graylane_config::redact_url(url);
        if !url.starts_with("redis://") {
            return Err(Error::InvalidUrl {
                url: shown,
                reason: "only plain redis://host:port URLs are supported (no TLS, no unix sockets)"
                    .into(),
            });
        }
        let redis = redis::Client::open(url).map_err(|e| Error::InvalidUrl {
            url: shown.clone(),
            reason: e.to_string(),
        })?;
        for (field, value) in [
            ("command_timeout", options.command_timeout),
            ("connect_timeout", options.connect_timeout),
        ] {
            if value.is_zero() {
                return Err(Error::InvalidConfig {
                    field,
                    reason: "must be longer than zero".into(),
                });
            }
        }
        let runtime = Handle::try_current().map_err(|_| Error::NoRuntime { url: shown.clone() })?;
        let manager = new_manager(&redis, &options, &shown)?;
        let inner = Arc::new(Inner {
            url: shown,
            redis,
            manager: ArcSwap::from_pointee(manager),
            options,
            runtime,
            epoch: Instant::now(),
            unavailable_until: AtomicU64::new(0),
            last_reply: AtomicU64::new(0),
            last_replaced: AtomicU64::new(0),
        });
        let client = Client { inner };
        client
            .inner
            .last_reply
            .store(client.inner.now_ms(), Ordering::Relaxed);
        client.warm_up();
        Ok(client)
    }

    /// The server's URL, with any password replaced by `***`.
    pub fn url(&self) -> &str {
        &self.inner.url
    }

    /// The options this client was created with.
    pub fn options(&self) -> &ClientOptions {
        &self.inner.options
    }

    /// `PING`, within `command_timeout`: for readiness checks.
    pub async fn ping(&self) -> Result<(), Error> {
        let reply: String = self
            .query(&redis::cmd("PING"), self.inner.options.command_timeout)
            .await?;
        if reply == "PONG" {
            Ok(())
        } else {
            Err(Error::UnexpectedReply {
                url: self.inner.url.clone(),
                command: "PING",
                detail: reply,
            })
        }
    }

    /// Runs `cmd`, waiting at most `timeout` for its reply (and for a connection, if one is being
    /// made). Cancel-safe: dropping the future drops only this call's interest in the reply.
    pub(crate) async fn query<T: FromRedisValue>(
        &self,
        cmd: &Cmd,
        timeout: Duration,
    ) -> Result<T, Error> {
        let inner = &self.inner;
        inner.admit()?;
        let mut conn = ConnectionManager::clone(&inner.manager.load());
        match tokio::time::timeout(timeout, cmd.query_async::<T>(&mut conn)).await {
            Ok(Ok(value)) => {
                inner.answered();
                Ok(value)
            }
            Ok(Err(source)) => {
                if is_connection_error(&source) {
                    inner.failed();
                } else {
                    inner.answered();
                }
                Err(Error::Redis {
                    url: inner.url.clone(),
                    source,
                })
            }
            Err(_) => {
                inner.failed();
                self.replace_if_stuck();
                Err(Error::Timeout {
                    url: inner.url.clone(),
                    timeout,
                })
            }
        }
    }

    /// Spawns `future` on the runtime the client was created in.
    pub(crate) fn spawn<F>(&self, future: F) -> JoinHandle<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.inner.runtime.spawn(future)
    }

    /// Drives the (lazy) connection to completion in the background, so that the first calls on
    /// the request path, with their short timeouts, do not have to wait for it.
    fn warm_up(&self) {
        let manager = ConnectionManager::clone(&self.inner.manager.load());
        let limit = self.inner.options.connect_timeout + self.inner.options.command_timeout;
        let url = self.inner.url.clone();
        self.spawn(async move {
            let mut conn = manager;
            let ping = redis::cmd("PING");
            match tokio::time::timeout(limit, ping.query_async::<String>(&mut conn)).await {
                Ok(Ok(_)) => debug!(redis = %url, "connected"),
                Ok(Err(e)) => debug!(redis = %url, error = %e, "first connection failed"),
                Err(_) => debug!(redis = %url, "first connection timed out"),
            }
        });
    }

    /// After calls have been timing out with no reply of any kind for `command_timeout`, the
    /// connection is assumed stuck (the `ConnectionManager` only reconnects when the connection
    /// reports an error) and is replaced by a new one; at most once per `command_timeout`.
    fn replace_if_stuck(&self) {
        let inner = &self.inner;
        let now = inner.now_ms();
        let stall_ms = millis(inner.options.command_timeout);
        let last_replaced = inner.last_replaced.load(Ordering::Acquire);
        let silent = now.saturating_sub(inner.last_reply.load(Ordering::Acquire));
        if silent < stall_ms || now.saturating_sub(last_replaced) < stall_ms {
            return;
        }
        if inner
            .last_replaced
            .compare_exchange(last_replaced, now, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return;
        }
        // The manager spawns a task of its own: on the client's runtime, whoever polls this.
        let _runtime = inner.runtime.enter();
        match new_manager(&inner.redis, &inner.options, &inner.url) {
            Ok(manager) => {
                warn!(
                    redis = %inner.url,
                    silent_ms = silent,
                    "no reply from Redis for a while: opening a new connection"
                );
                inner.manager.store(Arc::new(manager));
                self.warm_up();
            }
            Err(e) => warn!(redis = %inner.url, error = %e, "could not open a new connection"),
        }
    }
}

impl Inner {
    /// Milliseconds since the client was created, plus one so that 0 never names a deadline.
    fn now_ms(&self) -> u64 {
        millis(self.epoch.elapsed()) + 1
    }

    /// Lets the call through unless a recent failure is being backed off from; once the backoff
    /// is over, exactly one caller (the one that moves the deadline) probes, the rest keep failing
    /// fast until it gets a reply.
    fn admit(&self) -> Result<(), Error> {
        let until = self.unavailable_until.load(Ordering::Acquire);
        if until == 0 {
            return Ok(());
        }
        let now = self.now_ms();
        if now >= until
            && self
                .unavailable_until
                .compare_exchange(
                    until,
                    now + millis(self.options.error_backoff),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
        {
            return Ok(());
        }
        Err(Error::Unavailable {
            url: self.url.clone(),
        })
    }

    fn answered(&self) {
        self.last_reply.store(self.now_ms(), Ordering::Release);
        self.unavailable_until.store(0, Ordering::Release);
    }

    fn failed(&self) {
        let until = self.now_ms() + millis(self.options.error_backoff);
        self.unavailable_until.store(until, Ordering::Release);
    }
}

fn new_manager(
    redis: &redis::Client,
    options: &ClientOptions,
    url: &str,
) -> Result<ConnectionManager, Error> {
    // Few, quick retries inside one reconnect attempt: the callers' own backoff decides when to
    // try again, and a server that comes back is found by the next probe.
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(options.connect_timeout))
        .set_response_timeout(Some(options.command_timeout))
        .set_number_of_retries(1)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_secs(1));
    ConnectionManager::new_lazy_with_config(redis.clone(), config).map_err(|source| Error::Redis {
        url: url.to_string(),
        source,
    })
}

/// Errors that say the server was not reached or the connection broke, as opposed to a reply.
fn is_connection_error(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX / 4)
}
