//! The rollout controller's lever: a traffic split set on the gateway reaches the data plane at
//! once, survives reloads (even ones that renumber the versions), and always equals the state
//! machine's, whatever the strategy and whatever commands come in.

mod common;

use std::time::Duration;

use common::*;
use graylane_config::{Config, Weight};
use graylane_rollout::{Command, Phase, Plan, Rollout};
use graylane_rules::{Reason, RequestView, Routing};
use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;

const CONFIG: &str = r#"
listeners:
  - bind: 127.0.0.1:0
services:
  - name: payment
    match: { path_prefix: /api/payment }
    versions:
      stable: { endpoints: ["{stable}"] }
      canary: { endpoints: ["{canary}"] }
    release:
      strategy: canary
      baseline: stable
      candidate: canary
      bucket_by: "header:X-User-Id"
      steps:
        - weight: 0
          pause: manual
        - weight: 50
          pause: manual
        - weight: 100
  - name: catalog
    match: { path_prefix: /api/catalog }
    versions:
      stable: { endpoints: ["{stable}"] }
"#;

fn setup() -> (Upstream, Upstream, graylane_proxy::Gateway) {
    let stable = Upstream::start("stable");
    let canary = Upstream::start("canary");
    let yaml = fill(
        CONFIG,
        &[
            ("stable", stable.addr.to_string()),
            ("canary", canary.addr.to_string()),
        ],
    );
    let gateway = start_gateway(config(&yaml));
    (stable, canary, gateway)
}

/// How many of `users` distinct users the canary serves.
async fn canary_share(gateway: &graylane_proxy::Gateway, users: usize) -> usize {
    let mut conn = Http1::connect(addr(gateway)).await.expect("connect");
    let mut canary = 0;
    for i in 0..users {
        let user = format!("user-{i}");
        let r = conn
            .get("/api/payment/orders", &[("x-user-id", user.as_str())])
            .await
            .expect("request");
        if r.version() == Some("canary") {
            canary += 1;
        }
    }
    canary
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weight_change_reaches_real_traffic_at_once_and_survives_a_reload() {
    let (_stable, _canary, gateway) = setup();
    assert_eq!(
        canary_share(&gateway, 200).await,
        0,
        "step 0 is test traffic only"
    );

    gateway.set_weight("payment", Weight::FULL).unwrap();
    assert_eq!(canary_share(&gateway, 200).await, 200);

    gateway
        .set_weight("payment", Weight::from_percent(50.0).unwrap())
        .unwrap();
    let half = canary_share(&gateway, 400).await;
    assert!(
        (140..=260).contains(&half),
        "{half} of 400 users on the canary at 50%"
    );

    // A reload of the same file keeps the controller's weight rather than resetting to step 0.
    let same = gateway.snapshot().config.as_ref().clone();
    gateway.apply(same);
    assert_eq!(canary_share(&gateway, 400).await, half);

    let err = gateway.set_weight("catalog", Weight::FULL).unwrap_err();
    assert_eq!(err.releases, vec!["payment".to_string()]);
    assert!(
        err.to_string().contains("`catalog` has no release"),
        "{err}"
    );
    assert!(gateway.set_weight("nope", Weight::FULL).is_err());
    shutdown(gateway).await;
}

/// One gateway, three releases: a canary with manual, timed and pause-free steps, a blue-green
/// release that only pauses on a failed analysis, and a three-way experiment. The endpoints are
/// never dialled: these tests read the routing table requests are decided with.
const THREE_RELEASES: &str = r#"
listeners:
  - bind: 127.0.0.1:0
services:
  - name: payment
    match: { path_prefix: /api/payment }
    versions:
      stable: { endpoints: ["127.0.0.1:9"] }
      canary: { endpoints: ["127.0.0.1:9"] }
    release:
      strategy: canary
      baseline: stable
      candidate: canary
      force: [{ header: { name: X-Force, equals: "1" } }]
      bucket_by: "header:X-User-Id"
      steps:
        - { weight: 0, pause: manual }
        - { weight: 5, pause: 30s }
        - { weight: 20 }
        - { weight: 50, pause: manual }
        - { weight: 100 }
  - name: checkout
    match: { path_prefix: /checkout }
    versions:
      blue: { endpoints: ["127.0.0.1:9"] }
      green: { endpoints: ["127.0.0.1:9"] }
    release:
      strategy: blue_green
      active: blue
      preview: green
      keep_previous: 5m
      skip_rollback: true
      force: [{ header: { name: X-Force, equals: "1" } }]
      bucket_by: "header:X-User-Id"
  - name: search
    match: { path_prefix: /search }
    versions:
      stable: { endpoints: ["127.0.0.1:9"] }
      v2: { endpoints: ["127.0.0.1:9"] }
      v3: { endpoints: ["127.0.0.1:9"] }
    release:
      strategy: experiment
      bucket_by: "header:X-User-Id"
      variants:
        - { name: control, version: stable, weight: 50 }
        - { name: wide, version: v2, weight: 30 }
        - { name: narrow, version: v3, weight: 20 }
"#;

const PATHS: [&str; 3] = ["/api/payment/charge", "/checkout/cart", "/search"];

/// Something that happens to one release.
#[derive(Debug, Clone)]
enum Op {
    Command(Command),
    /// Time passes, in milliseconds (timed pauses end).
    Tick(i64),
}

fn op() -> impl Strategy<Value = Op> {
    let weight = (0u32..=100_000).prop_map(Weight::from_milli_percent);
    prop_oneof![
        1 => Just(Op::Command(Command::Promote)),
        1 => Just(Op::Command(Command::PromoteFull)),
        // Version 3 is nobody's: refused.
        1 => (0usize..4).prop_map(|v| Op::Command(Command::PromoteVariant(v))),
        1 => Just(Op::Command(Command::Pause)),
        1 => Just(Op::Command(Command::Resume)),
        2 => Just(Op::Command(Command::Abort)),
        2 => Just(Op::Command(Command::Retry)),
        1 => weight.prop_map(|w| Op::Command(Command::SetWeight(w))),
        1 => Just(Op::Command(Command::Rollback)),
        1 => Just(Op::Command(Command::AnalysisFailed)),
        1 => (0i64..90_000).prop_map(Op::Tick),
    ]
}

/// A request to service `i` from `user`, optionally matching the force rules.
struct Probe {
    headers: http::HeaderMap,
    path: &'static str,
}

impl Probe {
    fn new(i: usize, user: &str, forced: bool) -> Probe {
        let mut headers = http::HeaderMap::new();
        headers.insert("x-user-id", user.parse().unwrap());
        if forced {
            headers.insert("x-force", http::HeaderValue::from_static("1"));
        }
        Probe {
            headers,
            path: PATHS[i],
        }
    }

    fn view(&self) -> RequestView<'_> {
        RequestView {
            method: &http::Method::GET,
            host: Some("example.com"),
            path: self.path,
            query: None,
            headers: &self.headers,
            client_ip: "198.51.100.10".parse().unwrap(),
            now_unix_ms: 0,
            trusted_lane: None,
            trusted: false,
            trusted_hops: &[],
            random: 0,
        }
    }
}

/// The data plane agrees with the state machine of every release: the same split, the
/// canary's weight, shares that are percentages adding up to 100.
fn check_agreement(
    gateway: &graylane_proxy::Gateway,
    plans: &[Plan],
    rollouts: &[Rollout],
    after: &str,
) -> Result<(), TestCaseError> {
    let snapshot = gateway.snapshot();
    for (i, (plan, rollout)) in plans.iter().zip(rollouts).enumerate() {
        let service = snapshot.table.service_name(i).to_string();
        let want = rollout.routing(plan);
        prop_assert_eq!(
            snapshot.table.routing(i),
            Some(&want),
            "{} ({:?}) after {}",
            service,
            rollout.phase,
            after
        );
        let total: u32 = want.shares.iter().map(|s| s.weight.milli_percent()).sum();
        prop_assert_eq!(total, 100_000, "{}: shares {:?}", service, want.shares);
        prop_assert!(snapshot.table.weight(i) <= Weight::FULL);
        if i == 0 {
            prop_assert_eq!(
                snapshot.table.weight(i),
                rollout.weight,
                "canary weight after {}",
                after
            );
        }
    }
    Ok(())
}

/// One case: every release starts over, then `ops` (release index, what happens) run in order.
fn run_case(
    gateway: &graylane_proxy::Gateway,
    config: &Config,
    plans: &[Plan],
    ops: &[(usize, Op)],
) -> Result<(), TestCaseError> {
    let names: Vec<&str> = config.services.iter().map(|s| s.name.as_str()).collect();
    let mut now = 0i64;
    let mut rollouts: Vec<Rollout> = plans.iter().map(|p| Rollout::start(p, now)).collect();
    for (i, name) in names.iter().enumerate() {
        gateway
            .set_routing(name, rollouts[i].routing(&plans[i]))
            .unwrap();
    }
    check_agreement(gateway, plans, &rollouts, "start")?;

    for &(i, ref op) in ops {
        let (plan, rollout) = (&plans[i], &mut rollouts[i]);
        now += 1;
        let applied = match op {
            Op::Command(c) => rollout.apply(plan, *c, "test", "", now).is_ok(),
            Op::Tick(ms) => {
                now += *ms;
                rollout.tick(plan, now)
            }
        };
        gateway
            .set_routing(names[i], rollout.routing(plan))
            .unwrap();
        check_agreement(
            gateway,
            plans,
            &rollouts,
            &format!("{op:?} on {}", names[i]),
        )?;

        let aborted = matches!(op, Op::Command(Command::Abort | Command::AnalysisFailed))
            && applied
            && rollouts[i].phase == Phase::Aborted;
        if aborted {
            let snapshot = gateway.snapshot();
            prop_assert_eq!(snapshot.table.weight(i), Weight::ZERO, "{}", names[i]);
            prop_assert_eq!(
                snapshot.table.routing(i),
                Some(&Routing::all_to(plans[i].baseline))
            );
            let baseline = &config.services[i].versions[plans[i].baseline].name;
            for u in 0..50 {
                let probe = Probe::new(i, &format!("user-{u}"), u % 2 == 0);
                let d = snapshot
                    .table
                    .decide(&probe.view())
                    .expect("a service matches");
                prop_assert_eq!(d.service, i);
                prop_assert_eq!(
                    snapshot.table.version_name(i, d.version),
                    baseline.as_str(),
                    "user-{} after an abort of {}",
                    u,
                    names[i]
                );
                prop_assert!(
                    !matches!(d.reason, Reason::Forced { .. }),
                    "force rules are off after an abort"
                );
            }
        }
        if matches!(op, Op::Command(Command::AnalysisFailed)) && applied && plans[i].skip_rollback {
            prop_assert_eq!(rollouts[i].phase, Phase::Paused, "skip_rollback pauses");
        }
    }
    Ok(())
}

/// Random command sequences on random releases: after every command (applied or refused) the
/// gateway routes exactly as the state machine says, and an abort puts everyone, testers
/// included, back on the baseline.
#[test]
fn the_data_plane_always_routes_as_the_state_machines_say() {
    let gateway = start_gateway(config(THREE_RELEASES));
    let config = gateway.snapshot().config.clone();
    let plans: Vec<Plan> = config
        .services
        .iter()
        .map(|s| Plan::from_release(s.release.as_ref().expect("every service has a release")))
        .collect();

    let cases = ProptestConfig {
        cases: 24,
        // Keep the source tree clean; a failure prints its minimal command sequence.
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(cases, |(ops in prop::collection::vec((0usize..3, op()), 1..60))| {
        run_case(&gateway, &config, &plans, &ops)?;
    });
    gateway.shutdown();
}

const RELOAD: &str = r#"
listeners:
  - bind: 127.0.0.1:0
services:
  - name: payment
    match: { path_prefix: /api/payment }
    versions:
{extra}      stable: { endpoints: ["{stable}"] }
      canary: { endpoints: ["{canary}"] }
    release:
      strategy: canary
      baseline: stable
      candidate: canary
      bucket_by: "header:X-User-Id"
      steps:
        - { weight: 0, pause: manual }
        - { weight: 100 }
"#;

/// Which version served each of `users` users, by the upstream's own account (checked against
/// graylane's `x-graylane-version`).
async fn served_by(gateway: &graylane_proxy::Gateway, users: usize) -> Vec<String> {
    let mut conn = Http1::connect(addr(gateway)).await.expect("connect");
    let mut out = Vec::with_capacity(users);
    for i in 0..users {
        let user = format!("user-{i}");
        let r = conn
            .get("/api/payment/orders", &[("x-user-id", user.as_str())])
            .await
            .expect("request");
        assert_eq!(r.status, 200, "{user}");
        let upstream = r.upstream_version();
        assert_eq!(r.version(), Some(upstream.as_str()), "{user}");
        out.push(upstream);
    }
    out
}

/// A reload that adds a version sorted before the others renumbers every version; the split
/// the controller set is kept by name, so the same users stay on the canary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_renumbers_the_versions_keeps_the_split_by_name() {
    let stable = Upstream::start("stable");
    let canary = Upstream::start("canary");
    let aaa = Upstream::start("aaa");
    let yaml = |extra: &str| {
        fill(
            RELOAD,
            &[
                ("extra", extra.to_string()),
                ("stable", stable.addr.to_string()),
                ("canary", canary.addr.to_string()),
            ],
        )
    };
    let before: Config = config(&yaml(""));
    let gateway = start_gateway(before.clone());

    // The controller takes the canary to 30%.
    let plan = Plan::from_release(before.services[0].release.as_ref().unwrap());
    let mut rollout = Rollout::start(&plan, 0);
    let thirty = Weight::from_percent(30.0).unwrap();
    rollout
        .apply(&plan, Command::SetWeight(thirty), "alice", "", 1)
        .unwrap();
    gateway
        .set_routing("payment", rollout.routing(&plan))
        .unwrap();
    assert_eq!(gateway.snapshot().table.weight(0), thirty);
    let users = 200;
    let first = served_by(&gateway, users).await;
    let on_canary = first.iter().filter(|v| *v == "canary").count();
    assert!(
        (35..=85).contains(&on_canary),
        "{on_canary} of {users} users on the canary at 30%"
    );
    assert_eq!(
        on_canary + first.iter().filter(|v| *v == "stable").count(),
        users
    );

    // Reload from a file that adds `aaa`: stable and canary move from 1 and 0 to 2 and 1.
    let file = temp_file("reload-renumbers.yaml");
    let extra = format!("      aaa: {{ endpoints: [\"{}\"] }}\n", aaa.addr);
    std::fs::write(&file, yaml(&extra)).unwrap();
    gateway.reload_from(&file).expect("the reload is valid");
    let _ = std::fs::remove_file(&file);

    let snapshot = gateway.snapshot();
    let after = snapshot.config.service("payment").unwrap();
    let index = |name| after.version_index(name).unwrap();
    assert_eq!(
        (index("aaa"), index("canary"), index("stable")),
        (0, 1, 2),
        "versions are sorted by name"
    );
    assert_eq!(snapshot.table.weight(0), thirty, "the canary still has 30%");
    let new_plan = Plan::from_release(after.release.as_ref().unwrap());
    assert_eq!(
        snapshot.table.routing(0),
        Some(&rollout.routing(&new_plan)),
        "the same split, in the new numbering"
    );
    assert_eq!(
        snapshot.table.routing(0).unwrap().weight_of(0),
        Weight::ZERO
    );

    let second = served_by(&gateway, users).await;
    assert_eq!(aaa.received(), 0, "the new version gets no traffic");
    assert_eq!(
        second, first,
        "every user is served by the same version as before the reload"
    );
    drop(snapshot);
    tokio::time::timeout(Duration::from_secs(30), shutdown(gateway))
        .await
        .expect("the gateway shuts down");
}
