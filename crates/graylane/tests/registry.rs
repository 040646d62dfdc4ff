//! `graylane register` against a real etcd: the instance's key appears with its address and
//! labels while the process runs, and goes at once when it gets SIGTERM (exit 0); bad flags
//! are refused naming the flag.

mod common;

use std::time::{Duration, Instant};

use common::*;
use etcd_client::Client;
use graylane_testing::etcd::EtcdServer;

/// The value at `key`, if any.
async fn value(client: &mut Client, key: &str) -> Option<serde_json::Value> {
    let response = client.get(key, None).await.expect("etcd answers");
    response
        .kvs()
        .first()
        .map(|kv| serde_json::from_slice(kv.value()).expect("the value is JSON"))
}

/// Polls `key` until `check` holds for its value, up to [`POLL_DEADLINE`].
async fn until(
    client: &mut Client,
    key: &str,
    what: &str,
    process: &mut Graylane,
    check: impl Fn(&Option<serde_json::Value>) -> bool,
) -> Option<serde_json::Value> {
    let deadline = Instant::now() + POLL_DEADLINE;
    loop {
        let v = value(client, key).await;
        if check(&v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; {key} = {v:?}\n{}",
            process.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_registered_instance_is_in_etcd_until_sigterm_deregisters_it() {
    let etcd = EtcdServer::start();
    let mut client = Client::connect([etcd.url()], None).await.unwrap();
    let dir = temp_dir("register");
    let mut process = spawn_in(
        &dir,
        &[
            "register",
            "--etcd",
            &format!("{},http://localhost:{}", etcd.url(), etcd.port),
            "--service",
            "payment",
            "--address",
            "127.0.0.1:9002",
            "--label",
            "version=canary",
            "--label",
            "zone=a",
            "--id",
            "canary-1",
            "--ttl",
            "30s",
        ],
    );
    let key = "/graylane/registry/payment/canary-1";
    let registered = until(&mut client, key, "the key", &mut process, Option::is_some).await;
    assert_eq!(
        registered,
        Some(serde_json::json!({
            "address": "127.0.0.1:9002",
            "labels": { "version": "canary", "zone": "a" },
        }))
    );
    process.assert_running();

    process.signal("TERM");
    let status = process.wait_exit(POLL_DEADLINE);
    assert!(status.success(), "exit {status}\n{}", process.logs());
    // Revoked, not left to expire: gone well within the 30 s TTL.
    assert_eq!(value(&mut client, key).await, None, "{}", process.logs());
}

#[tokio::test]
async fn the_default_id_is_the_host_name_and_port_under_the_given_prefix() {
    let etcd = EtcdServer::start();
    let mut client = Client::connect([etcd.url()], None).await.unwrap();
    let dir = temp_dir("register-default-id");
    let mut process = spawn_in(
        &dir,
        &[
            "register",
            "--etcd",
            &etcd.url(),
            "--etcd-prefix",
            "/fleet-a/",
            "--service",
            "search",
            "--address",
            "127.0.0.1:9100",
            "--weight",
            "0",
        ],
    );
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let key = format!("/fleet-a/registry/search/{}-9100", host.trim());
    let registered = until(&mut client, &key, "the key", &mut process, Option::is_some).await;
    assert_eq!(
        registered,
        Some(serde_json::json!({ "address": "127.0.0.1:9100", "weight": 0 }))
    );
    process.signal("INT");
    assert!(
        process.wait_exit(POLL_DEADLINE).success(),
        "{}",
        process.logs()
    );
    assert_eq!(value(&mut client, &key).await, None);
}

#[test]
fn bad_flags_are_refused_naming_the_flag() {
    for (flag, value, says) in [
        ("--label", "version", "is not KEY=VALUE"),
        ("--label", "=canary", "is not KEY=VALUE"),
        (
            "--address",
            "not-an-address",
            "is not a reachable HOST:PORT",
        ),
        ("--address", "0.0.0.0:9000", "cannot be reached"),
        ("--service", "pay/ment", "may hold only letters"),
        ("--ttl", "200ms", "shorter than etcd's shortest lease"),
    ] {
        let mut args = vec!["register", "--etcd", "http://127.0.0.1:1"];
        for (required, default) in [("--service", "payment"), ("--address", "127.0.0.1:9000")] {
            if required != flag {
                args.extend([required, default]);
            }
        }
        args.extend([flag, value]);
        let out = run(&args);
        assert_eq!(out.code(), Some(2), "{flag} {value}: {out:?}");
        assert!(
            out.stderr.contains(flag) && out.stderr.contains(says),
            "{flag} {value}: {}",
            out.stderr
        );
    }
}

#[test]
fn an_unreachable_etcd_is_a_clear_error() {
    let out = run(&[
        "register",
        "--etcd",
        &format!("http://127.0.0.1:{}", closed_port().port()),
        "--service",
        "payment",
        "--address",
        "127.0.0.1:9000",
    ]);
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(out.stderr.contains("etcd"), "{}", out.stderr);
}
