//! Webhook notifications for release transitions: every event is `POST`ed as JSON to each
//! configured receiver, in the background, so that a slow, failing or dead receiver never delays
//! a transition (see "Webhooks" in `docs/admin-api.md`).
//!
//! [`Notifier::notify`] only queues the event; one task per [`WebhookTarget`] delivers its queue
//! in order, retrying server errors (5xx, 429), connection errors and timeouts with exponential
//! backoff. Events that cannot be delivered are logged (`warn`) and counted in
//! [`DeliveryStats`], never returned to the caller: a notification is best effort by design.
//!
//! Receivers are plain `http://` URLs; [`WebhookTarget::parse`] rejects anything else when the
//! configuration is read.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, USER_AGENT};
use http::{HeaderValue, Method, Request, Uri};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::sync::{Notify, mpsc};
use tracing::{debug, error, warn};

/// Events waiting per target before [`Notifier::notify`] starts dropping them: enough to ride out
/// a receiver that is down for a while at human transition rates, bounded so that a dead receiver
/// cannot make the gateway's memory grow.
pub const DEFAULT_QUEUE_CAPACITY: usize = 1024;

/// The longest wait between two attempts, however large `backoff * 2^n` grows: a receiver that
/// comes back is retried within this time.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Sent with every delivery so that receivers can tell graylane's calls (and its version) apart.
const USER_AGENT_VALUE: HeaderValue =
    HeaderValue::from_static(concat!("graylane/", env!("CARGO_PKG_VERSION")));

/// Why a webhook URL is unusable; reported when the configuration is read rather than at the
/// first transition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    /// The text does not parse as a URL.
    #[error("webhook url `{url}` is not a valid URL: {reason}")]
    InvalidUrl {
        /// The URL as configured.
        url: String,
        /// Why it does not parse.
        reason: String,
    },
    /// An `https://` URL: deliveries are plain HTTP only.
    #[error(
        "webhook url `{url}`: https is not supported, only plain http (use a local relay for TLS)"
    )]
    Https {
        /// The URL as configured.
        url: String,
    },
    /// Another scheme than `http://`, or no host.
    #[error("webhook url `{url}` must start with http:// and name a host")]
    NotHttp {
        /// The URL as configured.
        url: String,
    },
}

/// One receiver of the events and how hard to try it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookTarget {
    /// Absolute `http://host[:port]/path` the events are `POST`ed to.
    pub url: Uri,
    /// Limit for one attempt (connect, send, response head), so that a receiver that accepts and
    /// never answers costs at most this per attempt. Default 2s.
    pub timeout: Duration,
    /// Attempts after the first one for a retryable failure. Default 3.
    pub retries: u32,
    /// Wait before the first retry; doubled for each further one, capped at 5s. Default 200ms.
    pub backoff: Duration,
}

impl WebhookTarget {
    /// Default [`WebhookTarget::timeout`].
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
    /// Default [`WebhookTarget::retries`].
    pub const DEFAULT_RETRIES: u32 = 3;
    /// Default [`WebhookTarget::backoff`].
    pub const DEFAULT_BACKOFF: Duration = Duration::from_millis(200);

    /// A target for `url` with the default timeout, retries and backoff; fails for anything but
    /// an absolute `http://` URL with a host, so that a typo or an `https://` receiver is a
    /// configuration error instead of events that silently never arrive.
    pub fn parse(url: &str) -> Result<WebhookTarget, WebhookError> {
        let uri: Uri =
            url.parse()
                .map_err(|e: http::uri::InvalidUri| WebhookError::InvalidUrl {
                    url: url.to_owned(),
                    reason: e.to_string(),
                })?;
        check_url(&uri)?;
        Ok(WebhookTarget {
            url: uri,
            timeout: Self::DEFAULT_TIMEOUT,
            retries: Self::DEFAULT_RETRIES,
            backoff: Self::DEFAULT_BACKOFF,
        })
    }
}

/// The URL as logs and errors show it: userinfo and query values may carry a receiver's token.
fn shown(url: &Uri) -> String {
    graylane_config::redact_url(&url.to_string())
}

fn check_url(url: &Uri) -> Result<(), WebhookError> {
    if url.scheme() == Some(&http::uri::Scheme::HTTPS) {
        return Err(WebhookError::Https { url: shown(url) });
    }
    if url.scheme() != Some(&http::uri::Scheme::HTTP) || url.host().is_none_or(str::is_empty) {
        return Err(WebhookError::NotHttp { url: shown(url) });
    }
    Ok(())
}

/// Outcome counters, one per (event, target) pair: an event sent to two targets that both
/// answer counts `delivered == 2`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeliveryStats {
    /// Answered with a 2xx.
    pub delivered: u64,
    /// Given up: a non-retryable answer (a 3xx or 4xx other than 429), retries exhausted, or a
    /// target whose URL is unusable.
    pub failed: u64,
    /// Never attempted because the target's queue was full.
    pub dropped: u64,
    /// Attempts beyond the first.
    pub retried: u64,
}

/// Shared between the handles and the delivery tasks.
#[derive(Default)]
struct Shared {
    delivered: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
    retried: AtomicU64,
    /// (event, target) pairs queued and not yet delivered or given up; [`Notifier::flush`] waits
    /// for zero.
    pending: AtomicUsize,
    /// Woken whenever `pending` drops to zero.
    idle: Notify,
}

impl Shared {
    /// Marks one queued (event, target) pair as attempted; counters are updated before, so that
    /// a successful flush sees final stats.
    fn finish_one(&self) {
        if self.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle.notify_waiters();
        }
    }
}

struct Queue {
    target: WebhookTarget,
    /// As logs show it.
    url: String,
    tx: mpsc::Sender<Bytes>,
}

/// Holds the queue senders: when the last [`Notifier`] clone is dropped (or a target is
/// removed by [`Notifier::set_targets`]), its sender closes and its task delivers what is left
/// in its queue, then ends.
struct Inner {
    /// Locked only by `notify` and `set_targets`, never on the request path.
    queues: Mutex<Vec<Queue>>,
    shared: Arc<Shared>,
    client: HttpClient,
    capacity: usize,
    /// Where delivery tasks run, so that targets added from a blocking thread (a reload) start
    /// on the runtime the notifier was started on.
    runtime: tokio::runtime::Handle,
    /// Also given every event, before the webhooks (the trace exporter's release spans).
    tap: Mutex<Option<Tap>>,
}

/// What [`Notifier::set_tap`] installs: it must not wait.
pub type Tap = Arc<dyn Fn(&serde_json::Value) + Send + Sync>;

impl Inner {
    fn queue(&self, target: WebhookTarget) -> Queue {
        let (tx, rx) = mpsc::channel(self.capacity);
        self.runtime.spawn(deliver_queue(
            target.clone(),
            rx,
            self.client.clone(),
            self.shared.clone(),
        ));
        Queue {
            url: shown(&target.url),
            target,
            tx,
        }
    }
}

/// Sends events to every configured webhook without ever making the caller wait. Cheap to clone;
/// all clones share the queues and the stats.
#[derive(Clone)]
pub struct Notifier {
    inner: Arc<Inner>,
}

impl Notifier {
    /// Spawns the delivery task on the current tokio runtime (one per target, with a queue of
    /// [`DEFAULT_QUEUE_CAPACITY`] events each). With no targets nothing is sent until
    /// [`Notifier::set_targets`] adds some.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, as [`tokio::spawn`] does.
    pub fn start(targets: Vec<WebhookTarget>) -> Notifier {
        Self::start_with_capacity(targets, DEFAULT_QUEUE_CAPACITY)
    }

    /// As [`Notifier::start`], with room for `capacity` waiting events per target (at least 1)
    /// besides the one being delivered; mostly for tests that need a full queue.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, as [`tokio::spawn`] does.
    pub fn start_with_capacity(targets: Vec<WebhookTarget>, capacity: usize) -> Notifier {
        let inner = Inner {
            queues: Mutex::new(Vec::new()),
            shared: Arc::new(Shared::default()),
            client: Client::builder(TokioExecutor::new())
                .pool_timer(TokioTimer::new())
                .build(connector()),
            capacity: capacity.max(1),
            runtime: tokio::runtime::Handle::current(),
            tap: Mutex::new(None),
        };
        let queues = targets.into_iter().map(|t| inner.queue(t)).collect();
        *inner.queues.lock().unwrap_or_else(|e| e.into_inner()) = queues;
        Notifier {
            inner: Arc::new(inner),
        }
    }

    /// Replaces the targets (a reloaded configuration's `webhooks`): a target that is still
    /// configured with the same URL, timeout, retries and backoff keeps its queue, so nothing
    /// waiting for it is lost or reordered; a new one starts receiving the next event; a removed
    /// one delivers what it already had queued, then stops. Callable from any thread.
    pub fn set_targets(&self, targets: Vec<WebhookTarget>) {
        let mut queues = self.inner.queues.lock().unwrap_or_else(|e| e.into_inner());
        let mut old: Vec<Option<Queue>> = queues.drain(..).map(Some).collect();
        for target in targets {
            let kept = old
                .iter_mut()
                .find(|q| q.as_ref().is_some_and(|q| q.target == target))
                .and_then(Option::take);
            queues.push(kept.unwrap_or_else(|| self.inner.queue(target)));
        }
    }

    /// Queues one event for every target; never blocks, never fails: if a target's bounded
    /// queue is full, the event is dropped for that target, logged and counted.
    pub fn notify(&self, event: serde_json::Value) {
        let tap = self
            .inner
            .tap
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(tap) = tap {
            tap(&event);
        }
        let shared = &self.inner.shared;
        let queues = self.inner.queues.lock().unwrap_or_else(|e| e.into_inner());
        let body = match serde_json::to_vec(&event) {
            Ok(body) => Bytes::from(body),
            Err(e) => {
                warn!(error = %e, "webhook event is not serializable; dropped");
                shared
                    .dropped
                    .fetch_add(queues.len() as u64, Ordering::Relaxed);
                return;
            }
        };
        for queue in queues.iter() {
            // Counted before sending, so the task can never see it go below zero.
            shared.pending.fetch_add(1, Ordering::AcqRel);
            if let Err(e) = queue.tx.try_send(body.clone()) {
                let why = match e {
                    mpsc::error::TrySendError::Full(_) => "queue full",
                    mpsc::error::TrySendError::Closed(_) => "delivery task gone",
                };
                warn!(url = %queue.url, "webhook event dropped: {why}");
                shared.dropped.fetch_add(1, Ordering::Relaxed);
                shared.finish_one();
            }
        }
    }

    /// Gives every event from now on to `tap` as well as to the webhooks (with or without
    /// any); `tap` runs on the notifying thread and must not wait.
    pub fn set_tap(&self, tap: Tap) {
        *self.inner.tap.lock().unwrap_or_else(|e| e.into_inner()) = Some(tap);
    }

    /// A snapshot of the counters since [`Notifier::start`].
    pub fn stats(&self) -> DeliveryStats {
        let s = &self.inner.shared;
        DeliveryStats {
            delivered: s.delivered.load(Ordering::Relaxed),
            failed: s.failed.load(Ordering::Relaxed),
            dropped: s.dropped.load(Ordering::Relaxed),
            retried: s.retried.load(Ordering::Relaxed),
        }
    }

    /// Waits until every event queued so far was delivered or given up, for at most `timeout`;
    /// `true` if that happened in time. For shutdown (deliver what is pending before exiting)
    /// and for tests.
    pub async fn flush(&self, timeout: Duration) -> bool {
        let shared = &self.inner.shared;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let idle = shared.idle.notified();
            tokio::pin!(idle);
            // Registered before the check, so a wake-up between the check and the await is not
            // lost.
            idle.as_mut().enable();
            if shared.pending.load(Ordering::Acquire) == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                return shared.pending.load(Ordering::Acquire) == 0;
            }
        }
    }
}

fn connector() -> HttpConnector {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// One target's delivery loop: its events in order, each until delivered or given up.
async fn deliver_queue(
    target: WebhookTarget,
    mut rx: mpsc::Receiver<Bytes>,
    client: HttpClient,
    shared: Arc<Shared>,
) {
    // A target built without `WebhookTarget::parse` may still be unusable; say so once here and
    // count its events as failed instead of retrying something that cannot work.
    let unusable = check_url(&target.url).err();
    if let Some(e) = &unusable {
        error!(url = %shown(&target.url), error = %e, "webhook target unusable; its events will fail");
    }
    while let Some(body) = rx.recv().await {
        let counter = match &unusable {
            Some(e) => {
                warn!(url = %shown(&target.url), error = %e, "webhook event not sent");
                &shared.failed
            }
            None if deliver(&target, &client, &body, &shared).await => &shared.delivered,
            None => &shared.failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        shared.finish_one();
    }
}

/// What one attempt says about the next one.
enum Attempt {
    Delivered,
    /// Worth another try: a 5xx, 429, connection error or timeout.
    Retry(String),
    /// Trying again would get the same answer (a 3xx or 4xx other than 429).
    GiveUp(String),
}

/// Attempts one event until it is delivered (`true`) or given up (`false`), logging each failed
/// attempt.
async fn deliver(
    target: &WebhookTarget,
    client: &HttpClient,
    body: &Bytes,
    shared: &Shared,
) -> bool {
    let attempts = target.retries.saturating_add(1);
    let mut attempt = 1;
    loop {
        let error = match try_once(target, client, body).await {
            Attempt::Delivered => {
                debug!(url = %shown(&target.url), attempt, "webhook event delivered");
                return true;
            }
            Attempt::GiveUp(error) => {
                warn!(url = %shown(&target.url), attempt, %error, "webhook event rejected; not retried");
                return false;
            }
            Attempt::Retry(error) => error,
        };
        if attempt >= attempts {
            warn!(url = %shown(&target.url), attempt, %error, "webhook delivery failed; giving up");
            return false;
        }
        let delay = backoff(target.backoff, attempt);
        warn!(url = %shown(&target.url), attempt, %error, "webhook delivery failed; retrying in {delay:?}");
        tokio::time::sleep(delay).await;
        attempt += 1;
        shared.retried.fetch_add(1, Ordering::Relaxed);
    }
}

async fn try_once(target: &WebhookTarget, client: &HttpClient, body: &Bytes) -> Attempt {
    let mut request = Request::new(Full::new(body.clone()));
    *request.method_mut() = Method::POST;
    *request.uri_mut() = target.url.clone();
    let headers = request.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(USER_AGENT, USER_AGENT_VALUE);
    // Only the response head counts; the body is not read (receivers have nothing to say).
    let status = match tokio::time::timeout(target.timeout, client.request(request)).await {
        Err(_) => return Attempt::Retry(format!("no answer within {:?}", target.timeout)),
        Ok(Err(e)) => return Attempt::Retry(error_chain(&e)),
        Ok(Ok(response)) => response.status(),
    };
    if status.is_success() {
        Attempt::Delivered
    } else if status.is_server_error() || status == http::StatusCode::TOO_MANY_REQUESTS {
        Attempt::Retry(format!("status {status}"))
    } else {
        Attempt::GiveUp(format!("status {status}"))
    }
}

/// The wait after failed attempt `attempt` (1-based): `base`, `2 * base`, `4 * base`, … up to
/// [`MAX_BACKOFF`].
fn backoff(base: Duration, attempt: u32) -> Duration {
    let factor = 2u32.saturating_pow(attempt.saturating_sub(1));
    base.saturating_mul(factor).min(MAX_BACKOFF)
}

/// The client's error with its causes ("client error (Connect): tcp connect error: Connection
/// refused"), which the top-level message alone does not say.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_base_and_is_capped() {
        let base = Duration::from_millis(200);
        let waits: Vec<_> = (1..=7).map(|a| backoff(base, a)).collect();
        let ms = |n| Duration::from_millis(n);
        assert_eq!(
            waits,
            [
                ms(200),
                ms(400),
                ms(800),
                ms(1600),
                ms(3200),
                MAX_BACKOFF,
                MAX_BACKOFF
            ]
        );
        assert_eq!(backoff(base, u32::MAX), MAX_BACKOFF);
        assert_eq!(backoff(Duration::MAX, 1), MAX_BACKOFF);
    }
}
