//! Feature flags and releases read as flags, evaluated for an application's context: targeting
//! rules, the bucketed rollout (its split, its monotony, its independence between flags), the
//! default, a disabled flag, and a release's live split as the data plane routes it.

mod common;

use std::borrow::Cow;

use common::table;
use graylane_config::Weight;
use graylane_rules::bucket::bucket;
use graylane_rules::flags::{EvalContext, FlagError, FlagReason, MAX_ATTRIBUTES};
use graylane_rules::{RequestView, RoutingTable};
use serde_json::json;

const SERVICES: &str = "segments:
  beta-users: { values: [u-beta-1, u-beta-2] }
services:
  - name: payment
    match: { path_prefix: /api/payment }
    versions:
      stable: { endpoints: [127.0.0.1:9001] }
      canary: { endpoints: [127.0.0.1:9002] }
    release:
      strategy: canary
      baseline: stable
      candidate: canary
      force: [{ header: { name: X-Release-Phase, equals: canary } }]
      bucket_by: \"header:X-User-Id\"
      steps: [{ weight: 10 }, { weight: 50 }]
  - name: web
    versions: { stable: { endpoints: [127.0.0.1:9003] } }
";

fn flags(flags: &str) -> RoutingTable {
    table(&format!("{SERVICES}flags:\n{flags}"))
}

fn ctx(value: serde_json::Value) -> EvalContext {
    EvalContext::from_json(&value).unwrap_or_else(|e| panic!("{e}"))
}

fn user(key: &str) -> EvalContext {
    ctx(json!({ "targetingKey": key }))
}

const CHECKOUT: &str = "  new-checkout:
    variants: { on: true, off: false }
    default: off
    rules:
      - header: { name: plan, equals: pro }
        variant: on
      - segment: { name: beta-users, key: \"header:userId\" }
        variant: on
      - cookie: { name: country, equals: NO }
        variant: off
    rollout: { on: 5 }
";

#[test]
fn a_matching_rule_gives_its_variant_with_targeting_match() {
    let t = flags(CHECKOUT);
    let pro = t
        .evaluate_flag(
            "new-checkout",
            &ctx(json!({"targetingKey": "u-1", "plan": "pro"})),
            0,
        )
        .unwrap();
    assert_eq!(pro.variant, "on");
    assert_eq!(pro.value, Cow::Owned::<serde_json::Value>(json!(true)));
    assert_eq!(pro.reason, FlagReason::TargetingMatch { rule: 0 });

    let beta = t
        .evaluate_flag(
            "new-checkout",
            &ctx(json!({"targetingKey": "x", "userId": "u-beta-2"})),
            0,
        )
        .unwrap();
    assert_eq!(
        (beta.variant, beta.reason),
        ("on", FlagReason::TargetingMatch { rule: 1 })
    );

    // Attributes are cookies too; numbers and booleans are their JSON text.
    let norway = t
        .evaluate_flag(
            "new-checkout",
            &ctx(json!({"targetingKey": "x", "country": "NO"})),
            0,
        )
        .unwrap();
    assert_eq!(
        (norway.variant, norway.reason),
        ("off", FlagReason::TargetingMatch { rule: 2 })
    );
}

#[test]
fn numbers_booleans_query_and_ip_attributes_are_read_by_the_rules_that_name_them() {
    let t = flags(
        "  f:
    variants: { a: 1, b: 2, c: 3, d: 4, e: 5 }
    default: e
    rules:
      - header: { name: age, equals: \"42\" }
        variant: a
      - query: { name: vip, equals: \"true\" }
        variant: b
      - client_ip: 203.0.113.0/24
        variant: c
      - query: { name: note, equals: \"a b&c=d\" }
        variant: d
",
    );
    let variant = |c: serde_json::Value| t.evaluate_flag("f", &ctx(c), 0).unwrap().variant;
    assert_eq!(variant(json!({"age": 42})), "a");
    assert_eq!(variant(json!({"vip": true})), "b");
    assert_eq!(variant(json!({"ip": "203.0.113.9"})), "c");
    assert_eq!(
        variant(json!({"note": "a b&c=d"})),
        "d",
        "values are encoded, not split"
    );
    assert_eq!(
        variant(json!({"age": 41, "vip": false, "ip": "192.0.2.1"})),
        "e"
    );
    assert_eq!(
        variant(json!({})),
        "e",
        "no attribute: no rule matches, no client_ip either"
    );
}

#[test]
fn a_context_that_matches_nothing_outside_the_rollout_gets_the_default() {
    let t = flags(
        "  plain:
    variants: { on: true, off: false }
    default: off
",
    );
    let e = t
        .evaluate_flag("plain", &EvalContext::new(None, vec![]).unwrap(), 0)
        .unwrap();
    assert_eq!((e.variant, e.reason), ("off", FlagReason::Default));
    assert_eq!(*e.value, json!(false));
}

#[test]
fn a_disabled_flag_gives_its_default_even_to_a_matching_context() {
    let t = flags(
        "  f:
    variants: { on: true, off: false }
    default: off
    disabled: true
    rules: [{ header: { name: plan, equals: pro }, variant: on }]
    rollout: { on: 100 }
",
    );
    let e = t
        .evaluate_flag("f", &ctx(json!({"targetingKey": "u", "plan": "pro"})), 0)
        .unwrap();
    assert_eq!((e.variant, e.reason), ("off", FlagReason::Disabled));
}

/// How many of `users` get variant `on` of `key` with reason SPLIT, and which.
fn split(t: &RoutingTable, key: &str, users: usize) -> Vec<bool> {
    (0..users)
        .map(|i| {
            let e = t
                .evaluate_flag(key, &user(&format!("user-{i}")), 0)
                .unwrap();
            match e.reason {
                FlagReason::Split { .. } => {
                    assert_eq!(e.variant, "on");
                    true
                }
                FlagReason::Default => {
                    assert_eq!(e.variant, "off");
                    false
                }
                other => panic!("unexpected reason {other:?}"),
            }
        })
        .collect()
}

fn rollout(percent: &str) -> RoutingTable {
    flags(&format!(
        "  f:\n    variants: {{ on: true, off: false }}\n    default: off\n    rollout: {{ on: {percent} }}\n"
    ))
}

#[test]
fn a_rollout_splits_10000_contexts_near_its_percentage_and_growing_it_only_adds_contexts() {
    const USERS: usize = 10_000;
    let mut before: Option<Vec<bool>> = None;
    for (percent, expected) in [
        ("5", 500.0),
        ("20", 2_000.0),
        ("50", 5_000.0),
        ("100", 10_000.0),
    ] {
        let on = split(&rollout(percent), "f", USERS);
        let count = on.iter().filter(|x| **x).count() as f64;
        // Four standard deviations of a binomial draw: a real skew fails, chance does not.
        let p = expected / USERS as f64;
        let tolerance = 4.0 * (USERS as f64 * p * (1.0 - p)).sqrt() + 1.0;
        assert!(
            (count - expected).abs() <= tolerance,
            "{percent}%: {count} of {USERS} contexts on, expected {expected} ± {tolerance:.0}"
        );
        if let Some(before) = &before {
            let left = before
                .iter()
                .zip(&on)
                .filter(|(was, is)| **was && !**is)
                .count();
            assert_eq!(
                left, 0,
                "growing to {percent}% took {left} contexts off the variant"
            );
        }
        before = Some(on);
    }
}

#[test]
fn two_variants_share_the_buckets_in_file_order_and_the_rest_gets_the_default() {
    let t = flags(
        "  colour:
    variants: { red: r, green: g, blue: b }
    default: blue
    rollout: { green: 30, red: 20 }
",
    );
    let mut counts: std::collections::HashMap<&str, i32> = std::collections::HashMap::new();
    for i in 0..10_000 {
        let e = t
            .evaluate_flag("colour", &user(&format!("user-{i}")), 0)
            .unwrap();
        let FlagReason::Split { bucket } = e.reason else {
            assert_eq!((e.variant, e.reason), ("blue", FlagReason::Default));
            *counts.entry("blue").or_insert(0) += 1;
            continue;
        };
        // Green takes the first 30% of the buckets, red the next 20%.
        let expected = if bucket < 30_000 { "green" } else { "red" };
        assert_eq!(e.variant, expected, "bucket {bucket}");
        *counts.entry(e.variant).or_insert(0) += 1;
    }
    for (variant, share) in [("green", 3_000), ("red", 2_000), ("blue", 5_000)] {
        let n = counts[variant];
        assert!((n - share).abs() < 250, "{variant}: {n} of 10000");
    }
}

#[test]
fn the_bucket_is_the_documented_hash_of_the_flag_key_and_the_unit() {
    let t = rollout("100");
    let e = t.evaluate_flag("f", &user("user-1"), 0).unwrap();
    assert_eq!(
        e.reason,
        FlagReason::Split {
            bucket: bucket("flags:", "f", b"user-1")
        }
    );
}

#[test]
fn different_flags_bucket_independently() {
    let t = flags(
        "  a:\n    variants: { on: true, off: false }\n    default: off\n    rollout: { on: 50 }
  b:\n    variants: { on: true, off: false }\n    default: off\n    rollout: { on: 50 }
",
    );
    let (a, b) = (split(&t, "a", 10_000), split(&t, "b", 10_000));
    let both = a.iter().zip(&b).filter(|(x, y)| **x && **y).count();
    // Independent: about a quarter are on in both; the same buckets would give half.
    assert!(
        (2_250..=2_750).contains(&both),
        "{both} of 10000 on in both flags"
    );
}

#[test]
fn bucket_by_names_the_attribute_and_without_it_the_targeting_key_is_used() {
    let t = flags(
        "  f:\n    variants: { on: true, off: false }\n    default: off\n    rollout: { on: 100 }\n    bucket_by: userId\n",
    );
    let by_attr = t
        .evaluate_flag(
            "f",
            &ctx(json!({"targetingKey": "device-9", "userId": "u-7"})),
            0,
        )
        .unwrap();
    assert_eq!(
        by_attr.reason,
        FlagReason::Split {
            bucket: bucket("flags:", "f", b"u-7")
        }
    );
    let by_key = t.evaluate_flag("f", &user("device-9"), 0).unwrap();
    assert_eq!(
        by_key.reason,
        FlagReason::Split {
            bucket: bucket("flags:", "f", b"device-9")
        }
    );
    assert_eq!(
        t.evaluate_flag("f", &ctx(json!({"plan": "pro"})), 0),
        Err(FlagError::TargetingKeyMissing)
    );
}

#[test]
fn unknown_flags_and_services_are_not_found() {
    let t = flags(CHECKOUT);
    assert_eq!(
        t.evaluate_flag("old-checkout", &user("u"), 0),
        Err(FlagError::NotFound)
    );
    assert_eq!(
        t.evaluate_flag("release.nope", &user("u"), 0),
        Err(FlagError::NotFound)
    );
    assert_eq!(t.flag_keys(), ["new-checkout", "release.payment"]);
}

#[test]
fn contexts_that_cannot_be_read_are_refused_with_the_reason() {
    let err = |v: serde_json::Value| EvalContext::from_json(&v).unwrap_err().0;
    assert!(err(json!([1])).contains("JSON object"));
    assert!(err(json!({"targetingKey": 7})).contains("targetingKey must be a string"));
    assert!(err(json!({"ip": "not-an-ip"})).contains("`ip` must be an IP address"));
    assert!(err(json!({"path": "relative"})).contains("must start with `/`"));
    let many: serde_json::Map<String, serde_json::Value> = (0..=MAX_ATTRIBUTES)
        .map(|i| (format!("a{i}"), json!(i)))
        .collect();
    assert!(err(serde_json::Value::Object(many)).contains("at most 1000"));
}

fn request_of_user<'a>(headers: &'a http::HeaderMap) -> RequestView<'a> {
    RequestView {
        method: &http::Method::GET,
        host: None,
        path: "/api/payment/pay",
        query: None,
        headers,
        client_ip: "192.0.2.1".parse().unwrap(),
        now_unix_ms: 0,
        trusted_lane: None,
        trusted: false,
        trusted_hops: &[],
        random: 0,
    }
}

#[test]
fn a_release_read_as_a_flag_gives_the_version_the_data_plane_routes_the_user_to() {
    let mut t = flags(CHECKOUT);
    let payment = t.service_index("payment").unwrap();
    for weight in [0.0, 10.0, 50.0, 100.0] {
        t.set_weight(payment, Weight::from_percent(weight).unwrap());
        let mut canary = 0;
        for i in 0..2_000 {
            let id = format!("user-{i}");
            // The context names the release's bucket_by header as an attribute.
            let e = t
                .evaluate_flag(
                    "release.payment",
                    &ctx(json!({"targetingKey": "device", "X-User-Id": id})),
                    0,
                )
                .unwrap();
            let mut headers = http::HeaderMap::new();
            headers.insert("x-user-id", id.parse().unwrap());
            let routed = t.decide(&request_of_user(&headers)).unwrap();
            assert_eq!(
                e.variant,
                t.version_name(payment, routed.version),
                "{id} at {weight}%"
            );
            assert_eq!(*e.value, json!(e.variant));
            assert!(matches!(e.reason, FlagReason::Split { .. }));
            canary += usize::from(e.variant == "canary");
        }
        let expected = 2_000.0 * weight / 100.0;
        assert!(
            (canary as f64 - expected).abs() < 120.0,
            "{canary} canary at {weight}%"
        );
    }
}

#[test]
fn a_release_buckets_a_context_without_its_key_attribute_on_the_targeting_key() {
    let t = flags(CHECKOUT);
    let payment = t.service_index("payment").unwrap();
    for i in 0..200 {
        let id = format!("user-{i}");
        let e = t.evaluate_flag("release.payment", &user(&id), 0).unwrap();
        let assigned = t.assign(payment, &id).unwrap();
        assert_eq!(e.variant, t.version_name(payment, assigned));
    }
    assert_eq!(
        t.evaluate_flag("release.payment", &ctx(json!({})), 0),
        Err(FlagError::TargetingKeyMissing)
    );
}

#[test]
fn a_release_force_rule_is_a_targeting_match_and_a_service_without_a_release_its_default() {
    let t = flags(CHECKOUT);
    let forced = t
        .evaluate_flag(
            "release.payment",
            &ctx(json!({"X-Release-Phase": "canary"})),
            0,
        )
        .unwrap();
    assert_eq!(
        (forced.variant, forced.reason),
        ("canary", FlagReason::TargetingMatch { rule: 0 })
    );
    let web = t.evaluate_flag("release.web", &ctx(json!({})), 0).unwrap();
    assert_eq!((web.variant, web.reason), ("stable", FlagReason::Default));
}
