//! Blue-green and experiment releases in the rule engine: where requests go before and after a
//! switch, how an experiment splits its users, and the `Routing` lever the rollout controller
//! pulls (`set_routing`, force rules on and off).

mod common;

use common::{Req, decide, keyed_table, sticky_value, table};
use graylane_config::Weight;
use graylane_rules::bucket::bucket;
use graylane_rules::{KeyUsed, Reason, Routing, RoutingTable, Share};

fn pct(p: f64) -> Weight {
    Weight::from_percent(p).unwrap()
}

/// `(version name, reason)` for `req` on `t`.
fn route(t: &RoutingTable, req: &Req) -> (String, Reason) {
    let d = decide(t, req);
    (t.version_name(d.service, d.version).to_string(), d.reason)
}

// ---------------------------------------------------------------------------------------------
// Blue-green
// ---------------------------------------------------------------------------------------------

/// `checkout`: blue is live, green is the preview that testers reach with `X-Preview: 1`.
const BLUE_GREEN: &str = "services:
  - name: checkout
    match: { path_prefix: /checkout }
    versions:
      blue: { endpoints: [127.0.0.1:9001] }
      green: { endpoints: [127.0.0.1:9002] }
    release:
      strategy: blue_green
      active: blue
      preview: green
      force: [{ header: { name: X-Preview, equals: \"1\" } }]
      bucket_by: \"header:X-User-Id\"
      sticky: { cookie: graylane_lane }
";

const BLUE: usize = 0;
const GREEN: usize = 1;

fn checkout(user: &str) -> Req {
    Req::get("/checkout/cart").header("x-user-id", user)
}

/// A client without a user id whose signed sticky cookie (issued by `t`) carries `bucket`.
fn holder(t: &RoutingTable, bucket: u32) -> Req {
    let value = sticky_value(t, 0, bucket);
    Req::get("/checkout/cart").header("cookie", &format!("theme=dark; graylane_lane={value}"))
}

#[test]
fn blue_green_sends_testers_to_the_preview_and_everyone_else_to_active() {
    let t = table(BLUE_GREEN);
    assert_eq!(t.version_name(0, BLUE), "blue");
    assert_eq!(t.version_name(0, GREEN), "green");
    assert_eq!(t.weight(0), Weight::ZERO, "the preview gets no users yet");
    assert_eq!(
        t.routing(0),
        Some(&Routing {
            force_to: Some(GREEN),
            shares: vec![Share {
                version: BLUE,
                weight: Weight::FULL
            }],
            mirror: Weight::ZERO,
        })
    );

    for i in 0..2_000 {
        let user = format!("user-{i}");
        assert_eq!(route(&t, &checkout(&user)).0, "blue", "{user}");
        assert_eq!(
            route(&t, &checkout(&user).header("x-preview", "1")),
            ("green".to_string(), Reason::Forced { rule: 0 }),
            "{user} with X-Preview"
        );
    }
    // Only the exact value forces.
    assert_eq!(route(&t, &checkout("u").header("x-preview", "0")).0, "blue");
    // A cookie carries a signed bucket, not a version: naming the preview is not a way in.
    let t = keyed_table(BLUE_GREEN);
    let forged = Req::get("/checkout/cart").header("cookie", "graylane_lane=green");
    let (v, reason) = route(&t, &forged);
    assert_eq!(v, "blue");
    assert!(
        matches!(
            reason,
            Reason::Bucket {
                key: KeyUsed::Random,
                ..
            }
        ),
        "{reason:?}"
    );
    let (v, reason) = route(&t, &holder(&t, 123));
    assert_eq!(v, "blue");
    assert!(
        matches!(reason, Reason::Sticky { bucket: 123, .. }),
        "{reason:?}"
    );
}

#[test]
fn after_the_switch_everyone_is_on_the_preview_cookie_holders_too() {
    let mut t = keyed_table(BLUE_GREEN);
    t.set_routing(0, Routing::all_to(GREEN));
    assert_eq!(t.weight(0), Weight::FULL);
    assert_eq!(t.routing(0), Some(&Routing::all_to(GREEN)));

    for i in 0..2_000 {
        let user = format!("user-{i}");
        assert_eq!(route(&t, &checkout(&user)).0, "green", "{user}");
        // Testers keep reaching green too (now through the split, force rules being off).
        let (v, reason) = route(&t, &checkout(&user).header("x-preview", "1"));
        assert_eq!(v, "green");
        assert!(matches!(reason, Reason::Bucket { .. }), "{reason:?}");
    }
    // A cookie issued while blue was active keeps no one on the old version: the version is
    // recomputed from the cookie's bucket.
    for bucket in (0..100_000).step_by(997) {
        let (v, reason) = route(&t, &holder(&t, bucket));
        assert_eq!(v, "green", "bucket {bucket}");
        assert!(matches!(reason, Reason::Sticky { .. }), "{reason:?}");
    }
    let req = holder(&t, 4_242);
    let text = t.explain(&req.view(), &decide(&t, &req));
    assert!(
        text.contains("sticky cookie graylane_lane carries bucket 4242"),
        "{text}"
    );
    assert!(text.contains("(100% of the traffic) → green"), "{text}");

    // Rolling back is the same lever the other way: everyone back on blue.
    t.set_routing(0, Routing::all_to(BLUE));
    assert_eq!(t.weight(0), Weight::ZERO);
    for bucket in (0..100_000).step_by(997) {
        assert_eq!(route(&t, &holder(&t, bucket)).0, "blue", "bucket {bucket}");
    }
}

// ---------------------------------------------------------------------------------------------
// Experiment
// ---------------------------------------------------------------------------------------------

/// `search`: control (stable) 50%, `wide` (v2) 30%, `narrow` (v3) 20%, by user id.
const EXPERIMENT: &str = "services:
  - name: search
    match: { path_prefix: /search }
    versions:
      stable: { endpoints: [127.0.0.1:9001] }
      v2: { endpoints: [127.0.0.1:9002] }
      v3: { endpoints: [127.0.0.1:9003] }
    release:
      strategy: experiment
      bucket_by: \"header:X-User-Id\"
      sticky: { cookie: graylane_lane }
      variants:
        - { name: control, version: stable, weight: 50 }
        - { name: wide, version: v2, weight: 30 }
        - { name: narrow, version: v3, weight: 20 }
";

/// The salt an experiment uses unless told otherwise: its variant names.
const EXPERIMENT_SALT: &str = "control,wide,narrow";

fn search(user: &str) -> Req {
    Req::get("/search").header("x-user-id", user)
}

/// The version `user` must get, from the documented bucketing: control owns buckets
/// [0, 50000), wide [50000, 80000), narrow [80000, 100000).
fn expected_variant(user: &str) -> &'static str {
    match bucket("search", EXPERIMENT_SALT, user.as_bytes()) {
        0..50_000 => "stable",
        50_000..80_000 => "v2",
        _ => "v3",
    }
}

#[test]
fn an_experiment_splits_users_by_the_variant_weights() {
    let t = table(EXPERIMENT);
    let users = 30_000;
    let mut counts = [0usize; 3];
    for i in 0..users {
        let user = format!("user-{i}");
        let d = decide(&t, &search(&user));
        assert!(
            matches!(
                d.reason,
                Reason::Bucket {
                    key: KeyUsed::Configured,
                    ..
                }
            ),
            "{:?}",
            d.reason
        );
        let got = t.version_name(d.service, d.version);
        assert_eq!(got, expected_variant(&user), "{user}");
        counts[d.version] += 1;
    }
    for (version, want) in [(0, 50.0), (1, 30.0), (2, 20.0)] {
        let share = 100.0 * counts[version] as f64 / users as f64;
        assert!(
            (share - want).abs() <= 1.5,
            "{} got {share:.2}% of {users} users, want {want}% ± 1.5 ({counts:?})",
            t.version_name(0, version)
        );
    }
}

#[test]
fn an_experiment_is_deterministic_and_sticky_per_user() {
    let t = table(EXPERIMENT);
    let again = table(EXPERIMENT);
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..3_000 {
        let user = format!("user-{i}");
        let first = route(&t, &search(&user));
        for _ in 0..3 {
            assert_eq!(route(&t, &search(&user)), first, "{user} moved");
        }
        // Another request of the same user (another path, another client IP) and another
        // table compiled from the same file (another gateway, after a restart) agree.
        let other = Req::get("/search/more")
            .header("x-user-id", &user)
            .ip("2001:db8::7");
        assert_eq!(route(&t, &other).0, first.0, "{user} on another path");
        assert_eq!(
            route(&again, &search(&user)),
            first,
            "{user} after a restart"
        );
        seen.insert(first.0);
    }
    assert_eq!(seen.len(), 3, "every variant gets users: {seen:?}");
}

#[test]
fn an_experiment_explanation_names_the_range_of_the_variant() {
    let t = table(EXPERIMENT);
    let ranges = [
        ("stable", "in [0, 50000) (50% of the traffic)"),
        ("v2", "in [50000, 80000) (30% of the traffic)"),
        ("v3", "in [80000, 100000) (20% of the traffic)"),
    ];
    for (version, range) in ranges {
        let user = (0..)
            .map(|i| format!("user-{i}"))
            .find(|u| expected_variant(u) == version)
            .unwrap();
        let req = search(&user);
        let d = decide(&t, &req);
        let b = bucket("search", EXPERIMENT_SALT, user.as_bytes());
        assert_eq!(
            t.explain(&req.view(), &d),
            format!("bucket {b} of 100000 on header:x-user-id is {range} → {version}")
        );
    }
}

#[test]
fn an_experiment_cookie_holder_follows_the_split_and_a_user_id_beats_the_cookie() {
    let mut t = keyed_table(EXPERIMENT);
    let user = (0..)
        .map(|i| format!("user-{i}"))
        .find(|u| expected_variant(u) == "stable")
        .unwrap();
    // Bucket 85000 is in narrow's range [80000, 100000).
    let cookie = format!("graylane_lane={}", sticky_value(&t, 0, 85_000));
    let anonymous = Req::get("/search").header("cookie", &cookie);
    let (v, reason) = route(&t, &anonymous);
    assert_eq!(v, "v3");
    assert!(
        matches!(reason, Reason::Sticky { bucket: 85_000, .. }),
        "{reason:?}"
    );
    // Once the user id is known it decides, in this browser as in any other.
    assert_eq!(
        route(&t, &search(&user).header("cookie", &cookie)).0,
        "stable"
    );

    // `wide` wins: everyone on v2, the cookie holder too.
    t.set_routing(0, Routing::all_to(1));
    assert_eq!(route(&t, &anonymous).0, "v2");
    assert_eq!(route(&t, &search(&user)).0, "v2");
}

#[test]
fn an_experiment_has_no_force_rules_on() {
    let t = table(EXPERIMENT);
    let routing = t.routing(0).unwrap();
    assert_eq!(routing.force_to, None);
    let weights: Vec<(usize, u32)> = routing
        .shares
        .iter()
        .map(|s| (s.version, s.weight.milli_percent()))
        .collect();
    assert_eq!(weights, [(0, 50_000), (1, 30_000), (2, 20_000)]);
    assert_eq!(
        t.weight(0),
        pct(30.0),
        "the candidate is the second variant"
    );
}

#[test]
fn an_event_for_a_user_is_attributed_to_the_version_the_user_is_bucketed_into() {
    let t = table(EXPERIMENT);
    let service = t.service_index("search").expect("search");
    assert_eq!(t.service_index("nope"), None);
    for i in 0..2_000 {
        let user = format!("user-{i}");
        let d = decide(&t, &search(&user));
        assert_eq!(t.assign(service, &user), Some(d.version), "{user}");
        assert_eq!(t.version_name(service, d.version), expected_variant(&user));
    }
}
