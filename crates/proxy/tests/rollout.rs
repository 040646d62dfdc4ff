//! The rollout controller's lever: a weight set on the gateway reaches the data plane at once,
//! survives reloads, and always equals the state machine's weight.

mod common;

use common::*;
use graylane_config::{Pause, Step, Weight};
use graylane_rollout::{Command, Plan, Rollout};

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

#[test]
fn the_data_plane_weight_always_equals_the_state_machines() {
    let (_stable, _canary, gateway) = setup();
    let release = gateway.snapshot().config.services[0]
        .release
        .clone()
        .expect("payment has a release");
    let plan = Plan {
        steps: vec![
            Step {
                weight: Weight::ZERO,
                pause: Pause::Manual,
            },
            Step {
                weight: Weight::from_percent(5.0).unwrap(),
                pause: Pause::Manual,
            },
            Step {
                weight: Weight::from_percent(20.0).unwrap(),
                pause: Pause::Manual,
            },
            Step {
                weight: Weight::FULL,
                pause: Pause::None,
            },
        ],
        ..Plan::from_release(&release)
    };
    let commands = [
        Command::Promote,
        Command::SetWeight(Weight::from_percent(12.5).unwrap()),
        Command::Pause,
        Command::Resume,
        Command::Promote,
        Command::Abort,
        Command::Retry,
        Command::Promote,
        Command::PromoteFull,
        Command::Rollback,
        Command::Retry,
        Command::AnalysisFailed,
        Command::Resume,
    ];
    let mut rollout = Rollout::start(&plan, 0);
    gateway
        .set_routing("payment", rollout.routing(&plan))
        .unwrap();
    for (t, command) in commands.iter().cycle().take(200).enumerate() {
        // Refused commands are part of the exercise: they must leave both sides unchanged.
        let _ = rollout.apply(&plan, *command, "test", "", t as i64);
        gateway
            .set_routing("payment", rollout.routing(&plan))
            .unwrap();
        let snapshot = gateway.snapshot();
        assert_eq!(
            snapshot.table.weight(0),
            rollout.weight,
            "after {command:?} ({:?})",
            rollout.phase
        );
        assert_eq!(
            snapshot.table.routing(0),
            Some(&rollout.routing(&plan)),
            "after {command:?}"
        );
    }
    gateway.shutdown();
}
