//! Delivery against real receivers on loopback ports picked by the kernel: what is sent, which
//! answers are retried, and that a hung or dead receiver delays neither the caller nor the other
//! targets. Every wait is bounded, so a regression fails instead of hanging.

use std::convert::Infallible;
use std::future::pending;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use graylane_notify::{DeliveryStats, Notifier, WebhookError, WebhookTarget};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// Longest any test waits for something that should happen at once.
const WAIT: Duration = Duration::from_secs(5);

/// How a receiver answers one request.
#[derive(Debug, Clone, Copy)]
enum Answer {
    Status(u16),
    /// Reads the request, then never answers.
    Hang,
}

/// What a receiver saw of one request.
#[derive(Debug)]
struct Received {
    method: String,
    path: String,
    content_type: Option<String>,
    user_agent: Option<String>,
    body: Value,
}

/// A webhook receiver: request `i` gets `answers[i]`, or the last answer once they run out.
struct Receiver {
    url: String,
    requests: mpsc::UnboundedReceiver<Received>,
}

impl Receiver {
    async fn start(answers: Vec<Answer>) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hooks/graylane", listener.local_addr().unwrap());
        let (tx, requests) = mpsc::unbounded_channel();
        let answers = Arc::new(answers);
        let seen = Arc::new(AtomicUsize::new(0));
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (tx, answers, seen) = (tx.clone(), answers.clone(), seen.clone());
                let service = service_fn(move |request: Request<Incoming>| {
                    let (tx, answers, seen) = (tx.clone(), answers.clone(), seen.clone());
                    async move {
                        let i = seen.fetch_add(1, Ordering::SeqCst);
                        let answer = answers[i.min(answers.len() - 1)];
                        let header = |name| {
                            request
                                .headers()
                                .get(name)
                                .map(|v: &http::HeaderValue| v.to_str().unwrap().to_owned())
                        };
                        let received = Received {
                            method: request.method().to_string(),
                            path: request.uri().path().to_owned(),
                            content_type: header(http::header::CONTENT_TYPE),
                            user_agent: header(http::header::USER_AGENT),
                            body: Value::Null,
                        };
                        let body = request.into_body().collect().await.unwrap().to_bytes();
                        let body = serde_json::from_slice(&body).unwrap();
                        let _ = tx.send(Received { body, ..received });
                        let status = match answer {
                            Answer::Status(status) => status,
                            Answer::Hang => pending().await,
                        };
                        let mut response = Response::new(Empty::<Bytes>::new());
                        *response.status_mut() = StatusCode::from_u16(status).unwrap();
                        Ok::<_, Infallible>(response)
                    }
                });
                tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(stream), service));
            }
        });
        Receiver { url, requests }
    }

    /// The next request, waiting at most [`WAIT`].
    async fn next(&mut self) -> Received {
        tokio::time::timeout(WAIT, self.requests.recv())
            .await
            .expect("the receiver got no request in time")
            .expect("the receiver stopped")
    }

    /// Every request received so far, without waiting.
    fn drain(&mut self) -> Vec<Received> {
        std::iter::from_fn(|| self.requests.try_recv().ok()).collect()
    }
}

/// A target with short backoff so that retries keep the tests fast.
fn target(url: &str, retries: u32) -> WebhookTarget {
    let mut target = WebhookTarget::parse(url).unwrap();
    target.retries = retries;
    target.backoff = Duration::from_millis(10);
    target
}

fn bodies(requests: &[Received]) -> Vec<Value> {
    requests.iter().map(|r| r.body.clone()).collect()
}

#[tokio::test]
async fn delivers_the_event_as_json_with_headers() {
    let mut receiver = Receiver::start(vec![Answer::Status(204)]).await;
    let notifier = Notifier::start(vec![target(&receiver.url, 3)]);
    let event = json!({"event": "release.transition", "service": "payment", "action": "promote",
        "from": "paused", "to": "progressing", "step": 2, "weights": {"stable": 90.0, "canary": 10.0}});
    notifier.notify(event.clone());

    let request = receiver.next().await;
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/hooks/graylane");
    assert_eq!(request.content_type.as_deref(), Some("application/json"));
    let user_agent = format!("graylane/{}", env!("CARGO_PKG_VERSION"));
    assert_eq!(request.user_agent, Some(user_agent));
    assert_eq!(request.body, event);

    assert!(notifier.flush(WAIT).await);
    let delivered = DeliveryStats {
        delivered: 1,
        ..DeliveryStats::default()
    };
    assert_eq!(notifier.stats(), delivered);
}

#[tokio::test]
async fn retries_server_errors_until_delivered() {
    let answers = vec![
        Answer::Status(500),
        Answer::Status(500),
        Answer::Status(200),
    ];
    let mut receiver = Receiver::start(answers).await;
    let notifier = Notifier::start(vec![target(&receiver.url, 3)]);
    notifier.notify(json!({"n": 1}));

    assert!(notifier.flush(WAIT).await);
    let stats = DeliveryStats {
        delivered: 1,
        retried: 2,
        ..DeliveryStats::default()
    };
    assert_eq!(notifier.stats(), stats);
    assert_eq!(bodies(&receiver.drain()), vec![json!({"n": 1}); 3]);
}

#[tokio::test]
async fn retries_too_many_requests() {
    let mut receiver = Receiver::start(vec![Answer::Status(429), Answer::Status(200)]).await;
    let notifier = Notifier::start(vec![target(&receiver.url, 3)]);
    notifier.notify(json!({"n": 1}));

    assert!(notifier.flush(WAIT).await);
    let stats = DeliveryStats {
        delivered: 1,
        retried: 1,
        ..DeliveryStats::default()
    };
    assert_eq!(notifier.stats(), stats);
    assert_eq!(receiver.drain().len(), 2);
}

#[tokio::test]
async fn gives_up_after_the_retries() {
    let mut receiver = Receiver::start(vec![Answer::Status(500)]).await;
    let notifier = Notifier::start(vec![target(&receiver.url, 1)]);
    notifier.notify(json!({"n": 1}));

    assert!(notifier.flush(WAIT).await);
    let stats = DeliveryStats {
        failed: 1,
        retried: 1,
        ..DeliveryStats::default()
    };
    assert_eq!(notifier.stats(), stats);
    assert_eq!(receiver.drain().len(), 2, "the first attempt and one retry");
}

#[tokio::test]
async fn client_errors_are_not_retried() {
    let mut receiver = Receiver::start(vec![Answer::Status(400), Answer::Status(200)]).await;
    let notifier = Notifier::start(vec![target(&receiver.url, 3)]);
    notifier.notify(json!({"n": 1}));

    assert!(notifier.flush(WAIT).await);
    let stats = DeliveryStats {
        failed: 1,
        ..DeliveryStats::default()
    };
    assert_eq!(notifier.stats(), stats);
    assert_eq!(receiver.drain().len(), 1);
}

#[tokio::test]
async fn a_hung_receiver_delays_neither_the_caller_nor_other_targets() {
    let attempt_timeout = Duration::from_millis(200);
    let mut hung = Receiver::start(vec![Answer::Hang]).await;
    let mut healthy = Receiver::start(vec![Answer::Status(200)]).await;
    let mut slow = target(&hung.url, 1);
    slow.timeout = attempt_timeout;
    let notifier = Notifier::start(vec![slow, target(&healthy.url, 3)]);

    let start = Instant::now();
    notifier.notify(json!({"n": 1}));
    assert!(
        start.elapsed() < Duration::from_millis(50),
        "notify took {:?}",
        start.elapsed()
    );
    assert_eq!(healthy.next().await.body, json!({"n": 1}));
    assert!(
        start.elapsed() < attempt_timeout,
        "the healthy target got its event after {:?}, not before the hung one timed out",
        start.elapsed()
    );

    // Now the hung receiver holds the first event: neither the caller nor the healthy target
    // waits for it.
    assert_eq!(hung.next().await.body, json!({"n": 1}));
    let start = Instant::now();
    notifier.notify(json!({"n": 2}));
    assert!(
        start.elapsed() < Duration::from_millis(50),
        "notify took {:?}",
        start.elapsed()
    );
    assert_eq!(healthy.next().await.body, json!({"n": 2}));
    assert!(
        start.elapsed() < attempt_timeout,
        "second event after {:?}",
        start.elapsed()
    );

    // Each event: a timed-out attempt, one retry that times out too, then given up.
    assert!(notifier.flush(WAIT).await);
    let stats = DeliveryStats {
        delivered: 2,
        failed: 2,
        retried: 2,
        dropped: 0,
    };
    assert_eq!(notifier.stats(), stats);
    // The first attempt at event 1 was taken above.
    let attempts = bodies(&hung.drain());
    assert_eq!(attempts, [1, 2, 2].map(|n| json!({ "n": n })));
}

#[tokio::test]
async fn a_closed_port_fails_after_the_retries() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hooks", listener.local_addr().unwrap());
    drop(listener);
    let notifier = Notifier::start(vec![target(&url, 2)]);
    notifier.notify(json!({"n": 1}));

    assert!(notifier.flush(WAIT).await);
    let stats = DeliveryStats {
        failed: 1,
        retried: 2,
        ..DeliveryStats::default()
    };
    assert_eq!(notifier.stats(), stats);
}

#[tokio::test]
async fn a_full_queue_drops_and_counts() {
    let mut hung = Receiver::start(vec![Answer::Hang]).await;
    let mut stuck = target(&hung.url, 0);
    stuck.timeout = Duration::from_secs(30);
    let notifier = Notifier::start_with_capacity(vec![stuck], 2);

    notifier.notify(json!({"n": 0}));
    hung.next().await; // in flight, out of the queue
    let start = Instant::now();
    for n in 1..=5 {
        notifier.notify(json!({ "n": n }));
    }
    assert!(
        start.elapsed() < Duration::from_millis(50),
        "notify took {:?}",
        start.elapsed()
    );

    let stats = DeliveryStats {
        dropped: 3,
        ..DeliveryStats::default()
    };
    assert_eq!(notifier.stats(), stats, "two queued, three dropped");
    assert!(
        !notifier.flush(Duration::from_millis(50)).await,
        "three events still pending"
    );
}

#[tokio::test]
async fn events_to_one_target_arrive_in_order_across_retries() {
    let mut receiver = Receiver::start(vec![Answer::Status(503), Answer::Status(200)]).await;
    let notifier = Notifier::start(vec![target(&receiver.url, 3)]);
    for n in 1..=3 {
        notifier.notify(json!({ "n": n }));
    }

    assert!(notifier.flush(WAIT).await);
    let expected = [1, 1, 2, 3].map(|n| json!({ "n": n }));
    assert_eq!(bodies(&receiver.drain()), expected);
    let stats = DeliveryStats {
        delivered: 3,
        retried: 1,
        ..DeliveryStats::default()
    };
    assert_eq!(notifier.stats(), stats);
}

#[tokio::test]
async fn dropping_the_notifier_still_delivers_what_is_queued() {
    let mut receiver = Receiver::start(vec![Answer::Status(200)]).await;
    let notifier = Notifier::start(vec![target(&receiver.url, 3)]);
    let clone = notifier.clone();
    for n in 1..=3 {
        clone.notify(json!({ "n": n }));
    }
    drop(clone);
    drop(notifier);

    for n in 1..=3 {
        assert_eq!(receiver.next().await.body, json!({ "n": n }));
    }
}

#[tokio::test]
async fn flush_without_pending_events_returns_at_once() {
    let notifier = Notifier::start(Vec::new());
    notifier.notify(json!({"n": 1}));
    assert!(notifier.flush(Duration::ZERO).await);
    assert_eq!(notifier.stats(), DeliveryStats::default());
}

#[test]
fn parse_accepts_plain_http_with_the_defaults() {
    let target = WebhookTarget::parse("http://127.0.0.1:7000/hooks/graylane").unwrap();
    assert_eq!(target.url, "http://127.0.0.1:7000/hooks/graylane");
    assert_eq!(target.timeout, Duration::from_secs(2));
    assert_eq!(target.retries, 3);
    assert_eq!(target.backoff, Duration::from_millis(200));
}

#[test]
fn parse_rejects_https_and_other_urls() {
    let https = WebhookTarget::parse("https://hooks.example.com/graylane");
    assert!(
        matches!(https, Err(WebhookError::Https { .. })),
        "{https:?}"
    );
    for url in ["ftp://example.com/x", "/hooks/graylane", "example.com:80"] {
        let result = WebhookTarget::parse(url);
        assert!(
            matches!(result, Err(WebhookError::NotHttp { .. })),
            "{url}: {result:?}"
        );
    }
    let invalid = WebhookTarget::parse("http://exa mple.com/");
    assert!(
        matches!(invalid, Err(WebhookError::InvalidUrl { .. })),
        "{invalid:?}"
    );
}

#[tokio::test]
async fn a_target_built_with_an_https_url_fails_without_attempts() {
    let mut https = target("http://127.0.0.1:9/hooks", 3);
    https.url = "https://127.0.0.1:9/hooks".parse().unwrap();
    let notifier = Notifier::start(vec![https]);
    notifier.notify(json!({"n": 1}));

    assert!(notifier.flush(WAIT).await);
    let stats = DeliveryStats {
        failed: 1,
        ..DeliveryStats::default()
    };
    assert_eq!(notifier.stats(), stats);
}
