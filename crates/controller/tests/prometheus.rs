//! `query` checks against a real Prometheus server (Debian's `prometheus`), started on a free
//! loopback port and scraping a local endpoint once a second.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use graylane_controller::prometheus::{Prometheus, QueryError, QuerySource, render};
use graylane_testing::ports::closed_port;
use graylane_testing::prometheus::PrometheusServer;

/// Serves a fixed Prometheus exposition on a port of its own, forever (the thread dies with
/// the test).
fn exporter(text: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let reply = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
                text.len()
            );
            let _ = stream.write_all(reply.as_bytes());
        }
    });
    addr
}

/// Polls `check` until it gives `Some`, for at most 30 seconds.
fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

const EXPOSITION: &str = "# TYPE graylane_requests_total counter
graylane_requests_total{service=\"payment\",version=\"stable\",code=\"200\"} 990
graylane_requests_total{service=\"payment\",version=\"stable\",code=\"500\"} 10
graylane_requests_total{service=\"payment\",version=\"canary\",code=\"200\"} 90
graylane_requests_total{service=\"payment\",version=\"canary\",code=\"500\"} 10
";

#[test]
fn queries_give_one_number_or_a_reason() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("prometheus-{}", std::process::id()));
    let server = PrometheusServer::start(&dir, Some(exporter(EXPOSITION)));
    let url: http::Uri = server.url().parse().unwrap();
    let prom = Prometheus::new(&url, Duration::from_secs(2));
    eventually("a first scrape", || {
        prom.query("sum(graylane_requests_total)").ok()
    });

    let canary_errors = render(
        "sum(graylane_requests_total{service=\"{{service}}\",version=\"{{candidate}}\",code=~\"5..\"}) / sum(graylane_requests_total{service=\"{{service}}\",version=\"{{candidate}}\"})",
        "payment",
        "stable",
        "canary",
    );
    assert!(
        canary_errors.contains("version=\"canary\""),
        "{canary_errors}"
    );
    assert_eq!(prom.query(&canary_errors), Ok(0.1));
    assert_eq!(prom.query("2 * 21"), Ok(42.0), "a scalar");

    assert_eq!(
        prom.query("graylane_requests_total{service=\"nope\"}"),
        Err(QueryError::NoSeries)
    );
    assert_eq!(
        prom.query("graylane_requests_total{service=\"payment\"}"),
        Err(QueryError::SeveralSeries(4))
    );
    assert!(
        matches!(
            prom.query("sum(graylane_requests_total{"),
            Err(QueryError::Refused { status: 400, .. })
        ),
        "a query Prometheus cannot parse is refused"
    );
    assert!(
        prom.query("graylane_requests_total[1m]").is_err(),
        "a range vector is not one number"
    );
    assert!(matches!(prom.query("0/0"), Err(QueryError::NotANumber(_))));
}

#[test]
fn an_unreachable_prometheus_is_an_error_naming_it() {
    let url: http::Uri = format!("http://{}", closed_port()).parse().unwrap();
    let prom = Prometheus::new(&url, Duration::from_millis(500));
    let err = prom.query("up").unwrap_err();
    assert!(matches!(err, QueryError::Unreachable { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains(&url.to_string().trim_end_matches('/').to_string()),
        "{err}"
    );
}
