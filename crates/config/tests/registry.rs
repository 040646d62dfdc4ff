//! `endpoints: { registry: NAME, labels: {...} }`: what a valid selector turns into, and the
//! located error each kind of mistake gets.

use std::collections::BTreeMap;
use std::path::Path;

use graylane_config::{Config, ConfigError, RegistrySelector};

fn with(endpoints: &str) -> String {
    format!(
        "listeners: [{{ bind: 127.0.0.1:8080 }}]
services:
  - name: payment
    versions:
      stable: {{ endpoints: [127.0.0.1:9001] }}
      canary:
        endpoints: {endpoints}
"
    )
}

fn load(yaml: &str) -> Result<Config, Vec<ConfigError>> {
    graylane_config::load_str(yaml, "t.yaml", Path::new(".")).map_err(|e| e.errors)
}

fn error_at(yaml: &str, key: &str, says: &str) {
    let errors = load(yaml).expect_err("the configuration must be refused");
    assert!(
        errors
            .iter()
            .any(|e| e.key == key && e.message.contains(says) && e.line.is_some()),
        "no located error at `{key}` saying {says:?}: {:#?}",
        errors.iter().map(ToString::to_string).collect::<Vec<_>>()
    );
}

#[test]
fn a_registry_selector_starts_without_endpoints_and_keeps_its_labels() {
    let cfg = load(&with(
        "{ registry: payment, labels: { version: canary, zone: eu-1 } }",
    ))
    .unwrap();
    let service = cfg.service("payment").unwrap();
    let canary = &service.versions[service.version_index("canary").unwrap()];
    assert!(canary.endpoints.is_empty());
    assert_eq!(
        canary.registry,
        Some(RegistrySelector {
            service: "payment".to_string(),
            labels: BTreeMap::from([
                ("version".to_string(), "canary".to_string()),
                ("zone".to_string(), "eu-1".to_string()),
            ]),
        })
    );
    let stable = &service.versions[service.version_index("stable").unwrap()];
    assert_eq!(stable.registry, None);
    assert_eq!(stable.endpoints.len(), 1);
}

#[test]
fn labels_are_optional_and_plain_scalars_are_read_as_text() {
    let cfg = load(&with("{ registry: pay.v2_x-y }")).unwrap();
    let service = cfg.service("payment").unwrap();
    let selector = service.versions[0].registry.as_ref().unwrap();
    assert_eq!(selector.service, "pay.v2_x-y");
    assert!(selector.labels.is_empty());

    let cfg = load(&with("{ registry: payment, labels: { major: 2 } }")).unwrap();
    let selector = cfg.service("payment").unwrap().versions[0]
        .registry
        .clone()
        .unwrap();
    assert_eq!(selector.labels["major"], "2");
}

#[test]
fn an_unknown_key_in_the_selector_is_named_with_a_suggestion() {
    error_at(
        &with("{ registry: payment, lables: { version: canary } }"),
        "services[0].versions.canary.endpoints.lables",
        "did you mean `labels`?",
    );
}

#[test]
fn a_selector_without_a_registry_is_refused() {
    let errors = load(&with("{ labels: { version: canary } }")).unwrap_err();
    assert!(
        errors
            .iter()
            .any(|e| e.key == "services[0].versions.canary.endpoints"
                && e.message.contains("missing field `registry`")),
        "{errors:#?}"
    );
}

#[test]
fn a_registry_name_with_other_characters_is_refused() {
    error_at(
        &with("{ registry: \"pay/ment\" }"),
        "services[0].versions.canary.endpoints.registry",
        "`pay/ment` is not a valid registry service name",
    );
}

#[test]
fn empty_label_values_and_names_are_refused() {
    error_at(
        &with("{ registry: payment, labels: { version: \"\" } }"),
        "services[0].versions.canary.endpoints.labels.version",
        "a label value may not be empty",
    );
    error_at(
        &with("{ registry: payment, labels: { \"\": canary } }"),
        "services[0].versions.canary.endpoints.labels",
        "a label name may not be empty",
    );
}

#[test]
fn endpoints_of_another_shape_are_refused_naming_both_forms() {
    let errors = load(&with("127.0.0.1:9002")).unwrap_err();
    assert!(
        errors
            .iter()
            .any(|e| e.key == "services[0].versions.canary.endpoints"
                && e.message
                    .contains("a list of `host:port` or a registry selector")),
        "{errors:#?}"
    );
}

#[test]
fn an_empty_list_still_needs_an_endpoint_or_a_selector() {
    error_at(
        &with("[]"),
        "services[0].versions.canary.endpoints",
        "or a registry selector",
    );
}
