//! The decision order for a service with a release — trusted lane, force rules, weight
//! bucketing (with the client-IP fallback) — plus weights and explanations. The sticky cookie
//! is in `sticky.rs`.

mod common;

use common::{Req, decide, table};
use graylane_config::Weight;
use graylane_rules::bucket::bucket;
use graylane_rules::{Decision, KeyUsed, Reason, RoutingTable};

const PAYMENT: &str = "segments:
  staff: { values: [u-1001, u-1002] }
services:
  - name: payment
    match: { path_prefix: /api/payment }
    versions:
      stable: { endpoints: [\"127.0.0.1:9001\"] }
      canary: { endpoints: [\"127.0.0.1:9002\"], tag: v1.2.0 }
    release:
      strategy: canary
      baseline: stable
      candidate: canary
      force:
        - header: { name: X-Release-Phase, equals: canary }
        - segment: { name: staff, key: \"header:X-User-Id\" }
      bucket_by: \"header:X-User-Id\"
      sticky: { cookie: graylane_lane }
      steps:
        - weight: 5
        - weight: 20
        - weight: 100
  - name: static
    match: { path_prefix: /static }
    versions:
      stable: { endpoints: [127.0.0.1:9101] }
      next: { endpoints: [127.0.0.1:9102] }
";

fn payment() -> RoutingTable {
    table(PAYMENT)
}

fn req() -> Req {
    Req::get("/api/payment/charge")
}

fn version(t: &RoutingTable, d: Decision) -> &str {
    t.version_name(d.service, d.version)
}

/// A user id whose bucket for payment/canary is at least `min` (so it stays on stable below
/// that weight).
fn user_with_bucket_at_least(min: u32) -> String {
    (0..)
        .map(|i| format!("user-{i}"))
        .find(|u| bucket("payment", "canary", u.as_bytes()) >= min)
        .unwrap()
}

fn user_with_bucket_below(max: u32) -> String {
    (0..)
        .map(|i| format!("user-{i}"))
        .find(|u| bucket("payment", "canary", u.as_bytes()) < max)
        .unwrap()
}

#[test]
fn initial_weight_is_the_first_step() {
    let t = payment();
    assert_eq!(t.weight(0), Weight::from_milli_percent(5_000));
    assert_eq!(t.service_name(0), "payment");
    assert_eq!(t.version_name(0, 1), "stable");
    assert_eq!(t.version_name(0, 0), "canary");
    assert_eq!(t.service_name(7), "?");
    assert_eq!(t.version_name(0, 7), "?");
}

#[test]
fn bucketing_on_the_configured_key() {
    let t = payment();
    let user = user_with_bucket_at_least(5_000);
    let d = decide(&t, &req().header("x-user-id", &user));
    let expected = bucket("payment", "canary", user.as_bytes());
    assert_eq!(
        d.reason,
        Reason::Bucket {
            bucket: expected,
            weight: Weight::from_milli_percent(5_000),
            key: KeyUsed::Configured
        }
    );
    assert_eq!(version(&t, d), "stable");

    let lucky = user_with_bucket_below(5_000);
    let d = decide(&t, &req().header("x-user-id", &lucky));
    assert_eq!(version(&t, d), "canary");
    assert_eq!(d.reason.label(), "bucket");
}

#[test]
fn weight_threshold_is_exact() {
    let mut t = payment();
    let user = user_with_bucket_at_least(1);
    let b = bucket("payment", "canary", user.as_bytes());
    let r = req().header("x-user-id", &user);
    t.set_weight(0, Weight::from_milli_percent(b));
    assert_eq!(
        version(&t, decide(&t, &r)),
        "stable",
        "bucket == weight is not below it"
    );
    t.set_weight(0, Weight::from_milli_percent(b + 1));
    assert_eq!(version(&t, decide(&t, &r)), "canary");
    t.set_weight(0, Weight::FULL);
    assert_eq!(version(&t, decide(&t, &r)), "canary");
    t.set_weight(0, Weight::ZERO);
    assert_eq!(version(&t, decide(&t, &r)), "stable");
}

#[test]
fn missing_or_empty_key_falls_back_to_the_client_ip() {
    let t = payment();
    for r in [req(), req().header("x-user-id", "")] {
        for ip in ["203.0.113.7", "2001:db8::1", "::ffff:203.0.113.7"] {
            let d = decide(&t, &r.clone().ip(ip));
            let text = ip.trim_start_matches("::ffff:");
            let Reason::Bucket { bucket: b, key, .. } = d.reason else {
                panic!("{:?}", d.reason)
            };
            assert_eq!(key, KeyUsed::FallbackIp);
            assert_eq!(b, bucket("payment", "canary", text.as_bytes()), "{ip}");
            assert_eq!(d.reason.label(), "fallback_key");
        }
    }
}

#[test]
fn bucket_by_ip_is_not_a_fallback() {
    let t = table(
        "services:
  - name: web
    versions: { stable: { endpoints: [127.0.0.1:9001] }, canary: { endpoints: [127.0.0.1:9002] } }
    release: { strategy: canary, baseline: stable, candidate: canary, steps: [{ weight: 50 }] }
",
    );
    let d = decide(&t, &Req::get("/").ip("10.0.0.1"));
    assert_eq!(
        d.reason,
        Reason::Bucket {
            bucket: bucket("web", "canary", b"10.0.0.1"),
            weight: Weight::from_milli_percent(50_000),
            key: KeyUsed::Configured
        }
    );
}

#[test]
fn cookie_and_query_keys_and_explicit_salt() {
    let t = table(
        "services:
  - name: a
    match: { path_prefix: /a }
    versions: { stable: { endpoints: [127.0.0.1:9001] }, exp: { endpoints: [127.0.0.1:9002] } }
    release: { strategy: canary, baseline: stable, candidate: exp, bucket_by: \"cookie:uid\", salt: s1, steps: [{ weight: 50 }] }
  - name: b
    match: { path_prefix: /b }
    versions: { stable: { endpoints: [127.0.0.1:9001] }, exp: { endpoints: [127.0.0.1:9002] } }
    release: { strategy: canary, baseline: stable, candidate: exp, bucket_by: \"query:u\", steps: [{ weight: 50 }] }
",
    );
    let bucket_of = |d: Decision| match d.reason {
        Reason::Bucket {
            bucket,
            key: KeyUsed::Configured,
            ..
        } => bucket,
        other => panic!("{other:?}"),
    };
    let d = decide(&t, &Req::get("/a").header("cookie", "x=1; uid=\"alice\""));
    assert_eq!(bucket_of(d), bucket("a", "s1", b"alice"));
    let d = decide(&t, &Req::get("/b").query("u=bob%20smith"));
    assert_eq!(bucket_of(d), bucket("b", "exp", b"bob smith"));
}

#[test]
fn force_beats_bucketing_and_sticky() {
    let t = payment();
    let user = user_with_bucket_at_least(5_000);
    let r = req()
        .header("x-user-id", &user)
        .header("cookie", "graylane_lane=stable")
        .header("x-release-phase", "canary");
    let d = decide(&t, &r);
    assert_eq!(d.reason, Reason::Forced { rule: 0 });
    assert_eq!(version(&t, d), "canary");
    // The staff segment is the second force rule.
    let d = decide(&t, &req().header("x-user-id", "u-1002"));
    assert_eq!(d.reason, Reason::Forced { rule: 1 });
}

#[test]
fn force_applies_at_weight_zero() {
    let mut t = payment();
    t.set_weight(0, Weight::ZERO);
    let d = decide(&t, &req().header("x-release-phase", "canary"));
    assert_eq!(version(&t, d), "canary");
}

#[test]
fn trusted_lane_beats_everything() {
    let t = payment();
    let d = decide(&t, &req().lane("canary"));
    assert_eq!((d.reason, version(&t, d)), (Reason::Lane, "canary"));
    let forced = req()
        .lane("stable")
        .header("x-release-phase", "canary")
        .header("cookie", "graylane_lane=canary");
    let d = decide(&t, &forced);
    assert_eq!((d.reason, version(&t, d)), (Reason::Lane, "stable"));
}

#[test]
fn lane_naming_no_version_of_the_service_is_ignored() {
    let t = payment();
    let d = decide(&t, &req().lane("next").header("x-release-phase", "canary"));
    assert_eq!(d.reason, Reason::Forced { rule: 0 });
    let d = decide(&t, &req().lane(""));
    assert!(matches!(d.reason, Reason::Bucket { .. }));
}

#[test]
fn lane_applies_to_services_without_a_release() {
    let t = payment();
    let d = decide(&t, &Req::get("/static/app.js").lane("next"));
    assert_eq!((d.reason, version(&t, d)), (Reason::Lane, "next"));
    let d = decide(&t, &Req::get("/static/app.js").lane("canary"));
    assert_eq!((d.reason, version(&t, d)), (Reason::NoRelease, "stable"));
}

#[test]
fn set_weight_without_release_is_a_noop() {
    let mut t = payment();
    t.set_weight(1, Weight::FULL);
    assert_eq!(t.weight(1), Weight::ZERO);
    t.set_weight(99, Weight::FULL);
    assert_eq!(t.weight(99), Weight::ZERO);
}

#[test]
fn a_clone_has_its_own_weights() {
    let t = payment();
    let mut next = t.clone();
    next.set_weight(0, Weight::from_milli_percent(20_000));
    assert_eq!(t.weight(0), Weight::from_milli_percent(5_000));
    assert_eq!(next.weight(0), Weight::from_milli_percent(20_000));
}

#[test]
fn routing_table_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync + 'static>() {}
    assert_send_sync::<RoutingTable>();
    assert_send_sync::<Decision>();
}

#[test]
fn explanations() {
    let t = payment();
    let explain = |r: &Req| t.explain(&r.view(), &decide(&t, r));

    let s = explain(&req().header("x-release-phase", "canary"));
    assert_eq!(
        s,
        "force rule #1 matched: header x-release-phase equals \"canary\" → canary"
    );
    let s = explain(&req().header("x-user-id", "u-1001"));
    assert_eq!(
        s,
        "force rule #2 matched: header:x-user-id is in segment staff → canary"
    );

    let user = user_with_bucket_at_least(5_000);
    let b = bucket("payment", "canary", user.as_bytes());
    assert_eq!(
        explain(&req().header("x-user-id", &user)),
        format!("bucket {b} of 100000 on header:x-user-id is ≥ 5000 (weight 5%) → stable")
    );
    let lucky = user_with_bucket_below(5_000);
    let b = bucket("payment", "canary", lucky.as_bytes());
    assert_eq!(
        explain(&req().header("x-user-id", &lucky)),
        format!("bucket {b} of 100000 on header:x-user-id is < 5000 (weight 5%) → canary")
    );

    let b = bucket("payment", "canary", b"127.0.0.1");
    let side = if b < 5_000 {
        "< 5000 (weight 5%) → canary"
    } else {
        "≥ 5000 (weight 5%) → stable"
    };
    assert_eq!(
        explain(&req().ip("127.0.0.1")),
        format!(
            "no header:x-user-id in the request; bucketed on the client IP 127.0.0.1 instead: bucket {b} {side}"
        )
    );

    let s = explain(&req().lane("canary"));
    assert_eq!(
        s,
        "trusted lane \"canary\" (x-graylane-lane) names a version of payment → canary"
    );
    let s = explain(&Req::get("/static/x"));
    assert_eq!(
        s,
        "service static has no release → its default version stable"
    );

    let bogus = Decision {
        service: 42,
        version: 0,
        reason: Reason::NoRelease,
        pin: None,
        unit: 0,
    };
    assert!(
        t.explain(&req().view(), &bogus)
            .contains("not in this routing table")
    );
}

#[test]
fn explanations_of_every_rule_kind() {
    let cases = [
        (
            "{ header: { name: x-v, in: [a, b] } }",
            "header x-v in [\"a\", \"b\"]",
        ),
        (
            "{ header: { name: x-v, glob: \"canary-*\" } }",
            "header x-v matches glob \"canary-*\"",
        ),
        (
            "{ cookie: { name: c, regex: \"^a\" } }",
            "cookie c matches regex \"^a\"",
        ),
        (
            "{ query: { name: q, exists: true } }",
            "query parameter q is present",
        ),
        ("{ path: { prefix: /beta } }", "path starts with \"/beta\""),
        ("{ method: [GET, POST] }", "method is GET or POST"),
        (
            "{ client_ip: [10.0.0.0/8, \"::1\"] }",
            "client IP is in 10.0.0.0/8, ::1/128",
        ),
        (
            "{ semver: { header: x-app, range: \">=2.1.0 <3.0.0\" } }",
            "header x-app is a version in \">=2.1.0 <3.0.0\"",
        ),
        (
            "{ device: [mobile, bot] }",
            "device (from User-Agent) is mobile or bot",
        ),
        (
            "{ country: { in: [us, ca] } }",
            "country (header cf-ipcountry) is US or CA",
        ),
        (
            "{ time: { from: \"2026-12-01T08:00:00Z\", until: \"2026-12-02T08:00:00.5Z\" } }",
            "time is from 2026-12-01T08:00:00Z until 2026-12-02T08:00:00.500Z",
        ),
        (
            "{ not: { any: [{ method: POST }, { header: { name: x-v, absent: true } }] } }",
            "not (any of (method is POST; header x-v is absent))",
        ),
        (
            "{ all: [{ method: GET }, { query: { name: q, prefix: a } }] }",
            "all of (method is GET; query parameter q starts with \"a\")",
        ),
    ];
    let req = Req::get("/beta")
        .header("x-v", "a")
        .header("x-v", "canary-1")
        .header("cookie", "c=abc")
        .header("x-app", "2.2.0")
        .header("user-agent", "Googlebot")
        .header("cf-ipcountry", "US")
        .query("q=abc")
        .ip("10.1.1.1")
        .now(1_796_112_000_000);
    for (rule, text) in cases {
        let t = common::force_table(rule);
        let d = decide(&t, &req);
        let want = format!("force rule #1 matched: {text} → canary");
        assert_eq!(t.explain(&req.view(), &d), want, "{rule}");
    }
}
