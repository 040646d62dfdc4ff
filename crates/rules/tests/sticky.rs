//! Sticky cookies: a signed bucket, the version recomputed from it on every request (so
//! widening a release moves cookie holders toward the candidate and never back), forged or
//! unsigned cookies ignored, rotated keys still verifying; and `trusted_only` keys and rules.

mod common;

use common::{COOKIE_KEY, Req, decide, keyed_table, sticky_value, table};
use graylane_config::Weight;
use graylane_rules::bucket::bucket;
use graylane_rules::{CookieKeys, Decision, KeyUsed, Reason, RoutingTable};

const PAYMENT: &str = "services:
  - name: payment
    match: { path_prefix: /api/payment }
    versions:
      stable: { endpoints: [127.0.0.1:9001] }
      canary: { endpoints: [127.0.0.1:9002] }
    release:
      strategy: canary
      baseline: stable
      candidate: canary
      bucket_by: \"header:X-User-Id\"
      sticky: { cookie: graylane_lane }
      steps: [{ weight: 5 }, { weight: 50 }, { weight: 99.9 }]
";

fn payment() -> RoutingTable {
    keyed_table(PAYMENT)
}

fn req() -> Req {
    Req::get("/api/payment/charge")
}

/// A returning client without a user id, holding the cookie `t` issued for `bucket`.
fn holder(t: &RoutingTable, bucket: u32) -> Req {
    let value = sticky_value(t, 0, bucket);
    req().header("cookie", &format!("session=abc; graylane_lane={value}"))
}

fn version(t: &RoutingTable, d: Decision) -> &str {
    t.version_name(d.service, d.version)
}

fn pct(p: f64) -> Weight {
    Weight::from_percent(p).unwrap()
}

#[test]
fn a_first_visit_without_a_user_id_gets_a_random_bucket_and_a_cookie_pinning_it() {
    let t = payment();
    for (random, want) in [
        (1_234, "canary"),
        (77_777, "stable"),
        (100_000 + 10, "canary"),
    ] {
        let d = decide(&t, &req().random(random));
        assert_eq!(
            d.reason,
            Reason::Bucket {
                bucket: random % 100_000,
                weight: pct(5.0),
                key: KeyUsed::Random
            }
        );
        assert_eq!(version(&t, d), want);
        assert_eq!(d.pin, Some(random % 100_000));
        assert_eq!(d.reason.label(), "fallback_key");
    }
}

#[test]
fn a_cookie_holder_keeps_its_version_at_equal_weight_whatever_it_draws() {
    let t = payment();
    for bucket in [0, 4_999, 5_000, 60_000, 99_999] {
        let first = decide(&t, &holder(&t, bucket).random(1));
        for random in [2, 3, 99_000] {
            let again = decide(&t, &holder(&t, bucket).random(random));
            assert_eq!(again, first, "bucket {bucket}");
        }
        assert_eq!(
            first.reason,
            Reason::Sticky {
                bucket,
                weight: pct(5.0)
            }
        );
        assert_eq!(first.pin, None, "a valid cookie is not set again");
        assert_eq!(first.reason.label(), "sticky");
    }
}

#[test]
fn widening_moves_cookie_holders_to_the_candidate_and_never_back() {
    let mut t = payment();
    let buckets: Vec<u32> = (0..100_000).step_by(331).chain([99_899, 99_900]).collect();
    let mut on_canary = vec![false; buckets.len()];
    for weight in [0.0, 5.0, 20.0, 50.0, 99.9, 100.0] {
        t.set_weight(0, pct(weight));
        for (i, &b) in buckets.iter().enumerate() {
            let v = version(&t, decide(&t, &holder(&t, b))) == "canary";
            assert!(
                v || !on_canary[i],
                "bucket {b} moved back to stable at {weight}%"
            );
            assert_eq!(
                v,
                b < pct(weight).milli_percent(),
                "bucket {b} at {weight}%"
            );
            on_canary[i] = v;
        }
    }
    // At 99.9% a holder pinned to stable at 5% (bucket ≥ 5000) moves unless its bucket is
    // in the last 0.1%.
    t.set_weight(0, pct(99.9));
    assert_eq!(version(&t, decide(&t, &holder(&t, 99_899))), "canary");
    assert_eq!(version(&t, decide(&t, &holder(&t, 99_900))), "stable");
    // And an aborted release (weight 0) brings every holder back to stable.
    t.set_weight(0, Weight::ZERO);
    assert_eq!(version(&t, decide(&t, &holder(&t, 0))), "stable");
}

#[test]
fn a_forged_or_unsigned_cookie_is_ignored() {
    let t = payment();
    let good = sticky_value(&t, 0, 1_000);
    let mut tampered = good.clone().into_bytes();
    let last = tampered.len() - 1;
    tampered[last] = if tampered[last] == b'a' { b'b' } else { b'a' };
    let tampered = String::from_utf8(tampered).unwrap();
    let other_key = {
        let mut other = table(PAYMENT);
        other.set_cookie_keys(&CookieKeys::parse("another-key-0123456789").unwrap());
        sticky_value(&other, 0, 1_000)
    };
    for cookie in [
        "graylane_lane=canary".to_string(),
        "graylane_lane=stable".to_string(),
        "graylane_lane=1000".to_string(),
        format!("graylane_lane={}", good.replacen("v1.1000.", "v1.1001.", 1)),
        format!("graylane_lane={tampered}"),
        format!("graylane_lane={other_key}"),
    ] {
        // A client whose random draw says stable stays on stable whatever it claims.
        let d = decide(&t, &req().header("cookie", &cookie).random(50_000));
        assert_eq!(version(&t, d), "stable", "{cookie}");
        assert!(
            matches!(
                d.reason,
                Reason::Bucket {
                    key: KeyUsed::Random,
                    ..
                }
            ),
            "{cookie}: {:?}",
            d.reason
        );
        assert_eq!(d.pin, Some(50_000), "{cookie} is replaced by a real one");
    }
    // Without keys no cookie verifies and none is issued: the release routes as one without
    // stickiness (client-IP fallback).
    let unkeyed = table(PAYMENT);
    let d = decide(
        &unkeyed,
        &req().header("cookie", &format!("graylane_lane={good}")),
    );
    assert!(
        matches!(
            d.reason,
            Reason::Bucket {
                key: KeyUsed::FallbackIp,
                ..
            }
        ),
        "{:?}",
        d.reason
    );
    assert_eq!(d.pin, None);
}

#[test]
fn a_cookie_signed_with_a_rotated_out_signing_key_still_verifies() {
    let old = payment();
    let issued = sticky_value(&old, 0, 3_000);
    let mut rotated = table(PAYMENT);
    rotated.set_cookie_keys(
        &CookieKeys::parse(&format!("new-key-0123456789abcdef,{COOKIE_KEY}")).unwrap(),
    );
    let d = decide(
        &rotated,
        &req().header("cookie", &format!("graylane_lane={issued}")),
    );
    assert_eq!(
        d.reason,
        Reason::Sticky {
            bucket: 3_000,
            weight: pct(5.0)
        }
    );
    // New cookies are signed with the new key, which the old table does not know.
    let fresh = sticky_value(&rotated, 0, 3_000);
    assert_ne!(fresh, issued);
    let d = decide(
        &old,
        &req().header("cookie", &format!("graylane_lane={fresh}")),
    );
    assert!(matches!(d.reason, Reason::Bucket { .. }), "{:?}", d.reason);
}

#[test]
fn a_user_id_beats_the_cookie_and_the_cookie_is_repinned_to_it() {
    let t = payment();
    let user = (0..)
        .map(|i| format!("user-{i}"))
        .find(|u| bucket("payment", "canary", u.as_bytes()) >= 5_000)
        .unwrap();
    let b = bucket("payment", "canary", user.as_bytes());
    // The browser was pinned to a canary bucket before the user logged in.
    let r = holder(&t, 10).header("x-user-id", &user);
    let d = decide(&t, &r);
    assert_eq!(version(&t, d), "stable");
    assert_eq!(
        d.reason,
        Reason::Bucket {
            bucket: b,
            weight: pct(5.0),
            key: KeyUsed::Configured
        }
    );
    assert_eq!(d.pin, Some(b));
    // A cookie already carrying the user's bucket is not set again.
    let d = decide(&t, &holder(&t, b).header("x-user-id", &user));
    assert_eq!(d.pin, None);
}

#[test]
fn with_the_client_ip_as_key_the_cookie_wins_so_a_moving_client_stays_put() {
    let t = keyed_table(
        "services:
  - name: web
    versions:
      stable: { endpoints: [127.0.0.1:9001] }
      canary: { endpoints: [127.0.0.1:9002] }
    release:
      strategy: canary
      baseline: stable
      candidate: canary
      sticky: { cookie: lane }
      steps: [{ weight: 50 }]
",
    );
    let ip = "203.0.113.9";
    let first = decide(&t, &Req::get("/").ip(ip));
    let b = bucket("web", "canary", ip.as_bytes());
    assert_eq!(first.pin, Some(b), "the IP's bucket is pinned");
    let cookie = format!("lane={}", sticky_value(&t, 0, b));
    for other_ip in ["198.51.100.1", "2001:db8::1", "10.9.8.7"] {
        let d = decide(&t, &Req::get("/").ip(other_ip).header("cookie", &cookie));
        assert_eq!(
            d.reason,
            Reason::Sticky {
                bucket: b,
                weight: pct(50.0)
            }
        );
        assert_eq!(d.version, first.version, "{other_ip}");
    }
}

#[test]
fn forced_and_lane_traffic_is_not_pinned() {
    let t = keyed_table(
        "services:
  - name: payment
    versions:
      stable: { endpoints: [127.0.0.1:9001] }
      canary: { endpoints: [127.0.0.1:9002] }
    release:
      strategy: canary
      baseline: stable
      candidate: canary
      force: [{ header: { name: x-canary, equals: \"1\" } }]
      sticky: { cookie: lane }
      steps: [{ weight: 5 }]
",
    );
    assert_eq!(decide(&t, &Req::get("/").header("x-canary", "1")).pin, None);
    assert_eq!(decide(&t, &Req::get("/").lane("canary")).pin, None);
}

#[test]
fn explanations_name_the_cookie_bucket_and_the_weight() {
    let t = payment();
    let r = holder(&t, 4_000);
    let text = t.explain(&r.view(), &decide(&t, &r));
    assert_eq!(
        text,
        "signed sticky cookie graylane_lane carries bucket 4000 of 100000 and no \
         header:x-user-id in the request; it is < 5000 (weight 5%) → canary"
    );
    let r = req().random(70_000);
    let text = t.explain(&r.view(), &decide(&t, &r));
    assert_eq!(
        text,
        "no header:x-user-id in the request and no valid sticky cookie; drew the random bucket \
         70000 of 100000, ≥ 5000 (weight 5%) → stable; the response's sticky cookie pins this \
         bucket"
    );
}

const TRUSTED: &str = "services:
  - name: payment
    versions:
      stable: { endpoints: [127.0.0.1:9001] }
      canary: { endpoints: [127.0.0.1:9002] }
    release:
      strategy: canary
      baseline: stable
      candidate: canary
      force:
        - header: { name: X-Canary, equals: \"yes\", trusted_only: true }
        - country: { in: [NZ], trusted_only: true }
      bucket_by: { key: \"header:X-User-Id\", trusted_only: true }
      steps: [{ weight: 50 }]
";

fn trusted_table() -> RoutingTable {
    RoutingTable::compile(&common::config_with_trusted_hops(TRUSTED))
}

#[test]
fn a_trusted_only_force_header_is_honoured_only_from_a_trusted_hop() {
    let t = trusted_table();
    let r = Req::get("/").header("x-canary", "yes");
    assert!(matches!(decide(&t, &r).reason, Reason::Bucket { .. }));
    assert_eq!(
        decide(&t, &r.clone().trusted()).reason,
        Reason::Forced { rule: 0 }
    );
    let nz = Req::get("/").header("cf-ipcountry", "NZ");
    assert!(matches!(decide(&t, &nz).reason, Reason::Bucket { .. }));
    assert_eq!(decide(&t, &nz.trusted()).reason, Reason::Forced { rule: 1 });
    let d = decide(&t, &r.clone().trusted());
    assert_eq!(
        t.explain(&r.trusted().view(), &d),
        "force rule #1 matched: header x-canary equals \"yes\" (from a trusted hop) → canary"
    );
}

#[test]
fn a_trusted_only_bucketing_key_from_anyone_else_counts_as_missing() {
    let t = trusted_table();
    let user = (0..)
        .map(|i| format!("user-{i}"))
        .find(|u| bucket("payment", "canary", u.as_bytes()) < 50_000)
        .unwrap();
    let from_hop = decide(&t, &Req::get("/").header("x-user-id", &user).trusted());
    assert!(matches!(
        from_hop.reason,
        Reason::Bucket {
            key: KeyUsed::Configured,
            ..
        }
    ));
    assert_eq!(t.version_name(0, from_hop.version), "canary");
    // A client naming itself a user (to pick its version) is bucketed on its IP instead.
    let r = Req::get("/").header("x-user-id", &user).ip("203.0.113.5");
    let d = decide(&t, &r);
    assert_eq!(
        d.reason,
        Reason::Bucket {
            bucket: bucket("payment", "canary", b"203.0.113.5"),
            weight: pct(50.0),
            key: KeyUsed::FallbackIp
        }
    );
    assert!(
        t.explain(&r.view(), &d)
            .starts_with("header:x-user-id counts only from a trusted hop, which this client is not; bucketed on the client IP 203.0.113.5"),
        "{}",
        t.explain(&r.view(), &d)
    );
}
