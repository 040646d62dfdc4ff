//! Bucketing is uniform (the share of users at a weight is the weight) and monotonic (raising
//! the weight only moves users toward the candidate).

mod common;

use common::{Req, decide, table};
use graylane_config::Weight;
use graylane_rules::RoutingTable;
use graylane_rules::bucket::{BUCKETS, bucket};
use proptest::prelude::*;

/// Percentage of `users` synthetic users (`user-0`, `user-1`, …) below `weight`.
fn share(users: u32, weight: Weight) -> f64 {
    let hits = (0..users)
        .filter(|i| {
            bucket("payment", "canary", format!("user-{i}").as_bytes()) < weight.milli_percent()
        })
        .count();
    hits as f64 * 100.0 / f64::from(users)
}

#[test]
fn shares_match_weights() {
    for percent in [5.0, 20.0, 50.0] {
        let got = share(100_000, Weight::from_percent(percent).unwrap());
        assert!((got - percent).abs() <= 0.5, "{percent}%: got {got}%");
    }
}

/// At 0.01% only 10 of 100,000 users are expected in the candidate, and the binomial standard
/// deviation is 3.2 users (0.0032 points), so a ±0.005-point window would be ±1.6σ: about one
/// salt in fourteen would fail it by pure chance (payment/canary puts 16 users there, 0.016%).
/// A million users bring σ down to 0.001 points, making the same window a real test of the
/// low buckets' uniformity.
#[test]
fn tiny_weight_share() {
    let got = share(1_000_000, Weight::from_percent(0.01).unwrap());
    assert!((got - 0.01).abs() <= 0.005, "0.01%: got {got}%");
}

/// Pearson's χ² over 100 equal ranges of buckets for 100,000 users: 99 degrees of freedom,
/// whose 0.1% critical value is 148.2.
#[test]
fn buckets_are_uniform() {
    let mut bins = [0u32; 100];
    for i in 0..100_000 {
        let b = bucket("search", "experiment-b", format!("user-{i}").as_bytes());
        bins[(b / (BUCKETS / 100)) as usize] += 1;
    }
    let expected = 1_000.0;
    let chi2: f64 = bins
        .iter()
        .map(|&n| (f64::from(n) - expected).powi(2) / expected)
        .sum();
    assert!(chi2 < 148.2, "χ² = {chi2}");
}

fn monotonic_table() -> RoutingTable {
    table(
        "services:
  - name: checkout
    versions: { stable: { endpoints: [127.0.0.1:9001] }, canary: { endpoints: [127.0.0.1:9002] } }
    release:
      strategy: canary
      baseline: stable
      candidate: canary
      bucket_by: \"header:x-user-id\"
      steps: [{ weight: 0 }]
",
    )
}

proptest! {
    /// A user in the candidate at weight `w` is in it at every `w' ≥ w`, end to end through
    /// `decide` and `set_weight`.
    #[test]
    fn raising_the_weight_never_moves_a_user_back(
        user in "[A-Za-z0-9._@-]{1,40}",
        w in 0u32..=100_000,
        extra in 0u32..=100_000,
    ) {
        let mut t = monotonic_table();
        let req = Req::get("/").header("x-user-id", &user);
        let in_candidate = |t: &RoutingTable| {
            let d = decide(t, &req);
            t.version_name(d.service, d.version) == "canary"
        };
        t.set_weight(0, Weight::from_milli_percent(w));
        let before = in_candidate(&t);
        t.set_weight(0, Weight::from_milli_percent(w.saturating_add(extra)));
        let after = in_candidate(&t);
        prop_assert!(!before || after, "{user}: candidate at {w} but not at {}", w + extra);
    }

    /// The raw function, over arbitrary bytes, services and salts, is the documented formula:
    /// one XXH64 (seed 0) over `service ‖ 0x00 ‖ salt ‖ 0x00 ‖ key`, modulo 100,000, the same
    /// on every call. That is what lets another implementation (docs/bucketing.md) agree with
    /// the gateway on every user's bucket.
    #[test]
    fn bucket_is_the_documented_formula(
        service in ".{0,20}",
        salt in ".{0,20}",
        key in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let b = bucket(&service, &salt, &key);
        prop_assert!(b < BUCKETS);
        prop_assert_eq!(b, bucket(&service, &salt, &key));
        let mut whole = service.as_bytes().to_vec();
        whole.push(0);
        whole.extend_from_slice(salt.as_bytes());
        whole.push(0);
        whole.extend_from_slice(&key);
        let expected = xxhash_rust::xxh64::xxh64(&whole, 0) % u64::from(BUCKETS);
        prop_assert_eq!(u64::from(b), expected);
    }
}
