//! The shared client: URL errors, and a real redis-server.

use graylane_redis::{Client, ClientOptions, Error};
use graylane_testing::redis::RedisServer;
use std::time::Duration;

#[tokio::test]
async fn unusable_urls_are_rejected_naming_the_url() {
    for url in [
        "not a url",
        "http://127.0.0.1:6379",
        "rediss://127.0.0.1:6379",
        "redis://127.0.0.1:6379/not-a-db",
        "redis://127.0.0.1:99999",
    ] {
        let err = Client::open(url).expect_err(url);
        assert!(matches!(err, Error::InvalidUrl { .. }), "{url}: {err:?}");
        assert!(
            err.to_string().contains(&format!("`{url}`")),
            "{url}: {err}"
        );
    }
    let err = Client::open("http://user:secret@host").expect_err("not redis");
    assert!(!err.to_string().contains("secret"), "{err}");
    assert!(err.to_string().contains("user:***@host"), "{err}");
}

#[tokio::test]
async fn every_secret_a_url_can_carry_is_hidden_in_what_the_client_shows() {
    for (url, shown) in [
        (
            "redis://tokenSECRET@127.0.0.1:6379",
            "redis://***@127.0.0.1:6379",
        ),
        (
            "redis://127.0.0.1:6379/0?password=QSECRET",
            "redis://127.0.0.1:6379/0?password=***",
        ),
        (
            "redis://app:SECRET@127.0.0.1:6379",
            "redis://app:***@127.0.0.1:6379",
        ),
    ] {
        let client = Client::open(url).expect(url);
        assert_eq!(client.url(), shown);
        assert!(!format!("{client:?}").contains("SECRET"), "{client:?}");
    }
    for url in [
        "redis://:Sec/retSECRET@127.0.0.1:6379",
        "redis://:Sec#retSECRET@127.0.0.1:6379",
        "redis://:Sec?retSECRET@127.0.0.1:6379",
    ] {
        let err = Client::open(url).expect_err(url);
        assert!(!err.to_string().contains("SECRET"), "{err}");
    }
}

#[tokio::test]
async fn zero_timeouts_are_rejected_naming_the_field() {
    let options = ClientOptions {
        command_timeout: Duration::ZERO,
        ..ClientOptions::default()
    };
    let err = Client::with_options("redis://127.0.0.1:6379", options).expect_err("zero");
    assert!(
        matches!(
            err,
            Error::InvalidConfig {
                field: "command_timeout",
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn a_client_needs_a_tokio_runtime() {
    let err = Client::open("redis://127.0.0.1:6379").expect_err("no runtime");
    assert!(matches!(err, Error::NoRuntime { .. }), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_a_real_server_and_a_dead_one() {
    let mut redis = RedisServer::start();
    let client = Client::open(&redis.url()).expect("client");
    client.ping().await.expect("PING");
    redis.kill();
    let start = std::time::Instant::now();
    let err = client.ping().await.expect_err("server gone");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    assert!(err.to_string().contains(&redis.url()), "{err}");
    // Right after a failure calls fail fast, without a round trip.
    let err = client.ping().await.expect_err("backing off");
    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
}
