//! A release's `gates:`: what a valid list turns into, and the error a user gets for each kind
//! of mistake — the file, line and key path it is at, and why.

use std::path::Path;
use std::time::Duration;

use graylane_config::{Config, ConfigError, ConfigErrors, GateKind};

fn canary(gates: &str) -> String {
    format!(
        "listeners: [{{ bind: 127.0.0.1:8080 }}]
services:
  - name: web
    versions:
      v1: {{ endpoints: [127.0.0.1:9001] }}
      v2: {{ endpoints: [127.0.0.1:9002] }}
    release:
      strategy: canary
      baseline: v1
      candidate: v2
      steps: [{{ weight: 10, pause: 1m }}, {{ weight: 100 }}]
      gates:
{gates}"
    )
}

fn load(yaml: &str) -> Result<Config, ConfigErrors> {
    graylane_config::load_str(yaml, "t.yaml", Path::new("."))
}

/// The only error of `yaml`: at `key`, on a line of `t.yaml`, saying each of `says`.
fn only_error(yaml: &str, key: &str, says: &[&str]) -> ConfigError {
    let all = match load(yaml) {
        Ok(_) => panic!("expected errors, the configuration was accepted:\n{yaml}"),
        Err(e) => e.errors,
    };
    assert_eq!(all.len(), 1, "expected one error at `{key}`, got {all:?}");
    let e = all.into_iter().next().unwrap();
    assert_eq!(e.key, key, "{e}");
    for s in says {
        assert!(e.message.contains(s), "`{}` should say {s:?}", e.message);
    }
    let line = e.to_string();
    assert!(line.starts_with("t.yaml:"), "{line}");
    assert!(e.line.is_some(), "the error points at a line: {line}");
    e
}

#[test]
fn gates_are_read_in_order_with_their_defaults() {
    let config = load(&canary(
        "        - { kind: pre_rollout, url: http://127.0.0.1:7000/pre }
        - { kind: confirm_promotion, url: https://gates.example/confirm, timeout: 2s, retries: 0 }
        - { kind: pre_step, url: http://127.0.0.1:7000/step }
        - { kind: post_rollback, url: http://127.0.0.1:7000/after }
",
    ))
    .unwrap();
    let gates = &config.services[0].release.as_ref().unwrap().gates;
    let kinds: Vec<GateKind> = gates.iter().map(|g| g.kind).collect();
    assert_eq!(
        kinds,
        [
            GateKind::PreRollout,
            GateKind::ConfirmPromotion,
            GateKind::PreStep,
            GateKind::PostRollback
        ]
    );
    assert_eq!(gates[0].url.to_string(), "http://127.0.0.1:7000/pre");
    assert_eq!(
        (gates[0].timeout, gates[0].retries),
        (Duration::from_secs(5), 2)
    );
    assert_eq!(
        (gates[1].timeout, gates[1].retries),
        (Duration::from_secs(2), 0)
    );
    assert_eq!(gates[1].url.scheme_str(), Some("https"));
}

#[test]
fn an_unknown_gate_kind_gets_a_did_you_mean() {
    only_error(
        &canary("        - { kind: confirm_promote, url: http://127.0.0.1:7000/ }\n"),
        "services[0].release.gates[0].kind",
        &[
            "unknown gate kind `confirm_promote`",
            "did you mean `confirm_promotion`?",
        ],
    );
}

#[test]
fn a_gate_url_must_be_http_or_https_with_a_host() {
    for url in ["ftp://127.0.0.1/x", "127.0.0.1:7000", "http://"] {
        only_error(
            &canary(&format!("        - {{ kind: pre_step, url: \"{url}\" }}\n")),
            "services[0].release.gates[0].url",
            &["is not an http:// or https:// URL"],
        );
    }
}

#[test]
fn a_gate_url_s_credentials_are_not_repeated_in_the_error() {
    let e = only_error(
        &canary("        - { kind: pre_step, url: \"ftp://user:secret@127.0.0.1/x\" }\n"),
        "services[0].release.gates[0].url",
        &[],
    );
    assert!(!e.message.contains("secret"), "{}", e.message);
}

#[test]
fn a_zero_or_huge_gate_timeout_is_refused() {
    for timeout in ["0s", "10m"] {
        only_error(
            &canary(&format!(
                "        - {{ kind: pre_step, url: http://127.0.0.1:7000/, timeout: {timeout} }}\n"
            )),
            "services[0].release.gates[0].timeout",
            &["out of range", "at most 60s"],
        );
    }
    only_error(
        &canary("        - { kind: pre_step, url: http://127.0.0.1:7000/, timeout: soon }\n"),
        "services[0].release.gates[0].timeout",
        &["not a duration"],
    );
}

#[test]
fn absurd_gate_retries_are_refused() {
    only_error(
        &canary("        - { kind: pre_step, url: http://127.0.0.1:7000/, retries: 1000 }\n"),
        "services[0].release.gates[0].retries",
        &["1000 retries is too many", "at most 10"],
    );
}

#[test]
fn a_misspelt_gate_key_is_refused_with_its_path() {
    let e = load(&canary(
        "        - { kind: pre_step, url: http://127.0.0.1:7000/, retry: 1 }\n",
    ))
    .unwrap_err();
    let rendered = e.to_string();
    assert!(rendered.contains("retry"), "{rendered}");
    assert!(rendered.contains("gates[0]"), "{rendered}");
}

#[test]
fn step_gates_need_a_canary_with_listed_steps() {
    let blue_green = "listeners: [{ bind: 127.0.0.1:8080 }]
services:
  - name: web
    versions:
      blue: { endpoints: [127.0.0.1:9001] }
      green: { endpoints: [127.0.0.1:9002] }
    release:
      strategy: blue_green
      active: blue
      preview: green
      gates:
        - { kind: pre_rollout, url: http://127.0.0.1:7000/pre }
        - { kind: confirm_promotion, url: http://127.0.0.1:7000/confirm }
";
    only_error(
        blue_green,
        "services[0].release.gates[1].kind",
        &["`confirm_promotion` gate needs a canary with listed `steps`"],
    );
    let adaptive = canary("        - { kind: pre_step, url: http://127.0.0.1:7000/ }\n").replace(
        "steps: [{ weight: 10, pause: 1m }, { weight: 100 }]",
        "steps: adaptive\n      analysis: { interval: 30s, checks: [{ metric: error_rate, max: 0.01 }] }",
    );
    only_error(
        &adaptive,
        "services[0].release.gates[0].kind",
        &["`pre_step` gate needs a canary with listed `steps`"],
    );
}
