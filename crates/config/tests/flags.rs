//! `flags:`: what a valid flag turns into, and the error a user gets for each mistake — the
//! key path it is at (line and column too), and why.

use std::path::Path;

use graylane_config::{Config, ConfigError, ConfigErrors, Rule, Weight};

const HEAD: &str = "listeners: [{ bind: 127.0.0.1:8080 }]
segments:
  beta-users: { values: [u-1, u-2] }
services:
  - name: web
    versions: { stable: { endpoints: [127.0.0.1:9001] } }
";

fn load(yaml: &str) -> Result<Config, ConfigErrors> {
    graylane_config::load_str(yaml, "t.yaml", Path::new("."))
}

fn with_flags(flags: &str) -> String {
    format!("{HEAD}flags:\n{flags}")
}

fn valid(flags: &str) -> Config {
    let yaml = with_flags(flags);
    load(&yaml).unwrap_or_else(|e| panic!("expected a valid configuration, got:\n{e}\n---\n{yaml}"))
}

/// Every error of `flags`, each rendered as `file:line:col: key: message`.
fn errors(flags: &str) -> Vec<ConfigError> {
    match load(&with_flags(flags)) {
        Ok(_) => panic!("expected errors, the configuration was accepted:\n{flags}"),
        Err(e) => e.errors,
    }
}

/// The only error, at `key`, saying each of `says`, with a line number.
fn only_error(flags: &str, key: &str, says: &[&str]) {
    let all = errors(flags);
    let rendered: Vec<String> = all.iter().map(ToString::to_string).collect();
    assert_eq!(
        all.len(),
        1,
        "expected one error at {key}, got:\n{}",
        rendered.join("\n")
    );
    let e = &all[0];
    assert_eq!(e.key, key, "{e}");
    assert!(e.line.is_some(), "the error should have a line: {e}");
    for s in says {
        assert!(e.message.contains(s), "`{}` should say {s:?}", e.message);
    }
}

#[test]
fn a_flag_with_every_key_is_read_in_file_order() {
    let config = valid(
        "  new-checkout:
    variants: { on: true, off: false }
    default: off
    rules:
      - header: { name: x-plan, equals: pro }
        variant: on
      - segment: { name: beta-users, key: \"header:userId\" }
        variant: on
    rollout: { on: 5 }
    bucket_by: userId
  banner:
    variants:
      blue: { colour: \"#00f\", size: 3 }
      text: hello
      ratio: 0.25
    default: text
    disabled: true
",
    );
    assert_eq!(config.flags.len(), 2);
    let banner = config.flag("banner").expect("banner");
    let names: Vec<&str> = banner.variants.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["blue", "text", "ratio"], "file order");
    assert_eq!(banner.variants[0].value["colour"], "#00f");
    assert_eq!(banner.variants[0].value["size"], 3);
    assert_eq!(banner.variants[2].value, 0.25);
    assert_eq!(banner.default, 1);
    assert!(banner.disabled);

    let flag = config.flag("new-checkout").expect("new-checkout");
    assert_eq!(flag.variants[0].value, true);
    assert_eq!(flag.default, 1);
    assert_eq!(flag.rules.len(), 2);
    assert_eq!(flag.rules[0].variant, 0);
    assert!(matches!(flag.rules[0].rule, Rule::Header { .. }));
    assert!(matches!(
        flag.rules[1].rule,
        Rule::Segment { segment: 0, .. }
    ));
    assert_eq!(flag.rollout.len(), 1);
    assert_eq!(flag.rollout[0].variant, 0);
    assert_eq!(flag.rollout[0].weight, Weight::from_percent(5.0).unwrap());
    assert_eq!(flag.bucket_by.as_deref(), Some("userId"));
    assert!(!flag.disabled);
}

#[test]
fn an_unknown_default_variant_names_the_variants_and_suggests_one() {
    only_error(
        "  f:\n    variants: { on: true, off: false }\n    default: of\n",
        "flags.f.default",
        &["unknown variant `of`", "on, off", "did you mean `off`?"],
    );
}

#[test]
fn a_rule_naming_an_unknown_variant_is_refused_at_its_variant() {
    only_error(
        "  f:
    variants: { on: true, off: false }
    default: off
    rules:
      - header: { name: x-plan, equals: pro }
        variant: onn
",
        "flags.f.rules[0].variant",
        &["unknown variant `onn`"],
    );
}

#[test]
fn a_rule_without_a_variant_is_refused() {
    only_error(
        "  f:
    variants: { on: true, off: false }
    default: off
    rules:
      - header: { name: x-plan, equals: pro }
",
        "flags.f.rules[0]",
        &["needs `variant`"],
    );
}

#[test]
fn a_bad_matcher_in_a_flag_rule_is_refused_where_it_is_written() {
    only_error(
        "  f:
    variants: { on: true, off: false }
    default: off
    rules:
      - header: { name: x-plan, regex: \"(\" }
        variant: on
",
        "flags.f.rules[0].header.regex",
        &["regex"],
    );
    only_error(
        "  f:
    variants: { on: true, off: false }
    default: off
    rules:
      - segment: { name: beta-userz, key: \"header:userId\" }
        variant: on
",
        "flags.f.rules[0].segment.name",
        &["beta-userz"],
    );
}

#[test]
fn a_misspelt_rule_kind_in_a_flag_rule_is_an_unknown_field() {
    let all = errors(
        "  f:
    variants: { on: true, off: false }
    default: off
    rules:
      - heder: { name: x-plan, equals: pro }
        variant: on
",
    );
    let rendered: Vec<String> = all.iter().map(ToString::to_string).collect();
    assert!(
        rendered
            .iter()
            .any(|e| e.contains("flags.f.rules") && e.contains("heder")),
        "{rendered:#?}"
    );
}

#[test]
fn trusted_only_in_a_flag_rule_is_refused_because_contexts_are_never_trusted() {
    only_error(
        "  f:
    variants: { on: true, off: false }
    default: off
    rules:
      - header: { name: x-plan, equals: pro, trusted_only: true }
        variant: on
",
        "flags.f.rules[0].header.trusted_only",
        &["never match"],
    );
}

#[test]
fn rollout_percentages_over_100_are_refused_with_their_sum() {
    only_error(
        "  f:
    variants: { a: 1, b: 2, c: 3 }
    default: c
    rollout: { a: 60, b: 50.5 }
",
        "flags.f.rollout",
        &["110.5%", "at most 100"],
    );
}

#[test]
fn a_rollout_naming_an_unknown_variant_or_a_bad_percentage_is_refused() {
    only_error(
        "  f:\n    variants: { on: true, off: false }\n    default: off\n    rollout: { yes: 5 }\n",
        "flags.f.rollout.yes",
        &["unknown variant `yes`"],
    );
    only_error(
        "  f:\n    variants: { on: true, off: false }\n    default: off\n    rollout: { on: 101 }\n",
        "flags.f.rollout.on",
        &["percentage from 0 to 100"],
    );
    only_error(
        "  f:\n    variants: { on: true, off: false }\n    default: off\n    rollout: { on: lots }\n",
        "flags.f.rollout.on",
        &["`lots` must be a percentage"],
    );
}

#[test]
fn variants_must_have_values_a_client_can_read() {
    only_error(
        "  f:\n    variants: { on: true, off: ~ }\n    default: on\n",
        "flags.f.variants.off",
        &["null"],
    );
    only_error(
        "  f:\n    variants: { on: true, many: [1, 2] }\n    default: on\n",
        "flags.f.variants.many",
        &["not a list"],
    );
    only_error(
        "  f:\n    variants: {}\n    default: on\n",
        "flags.f.variants",
        &["at least one variant"],
    );
    only_error(
        "  f:\n    variants: { \"o n\": true }\n    default: on\n",
        "flags.f.variants.o n",
        &["not a valid variant name"],
    );
}

#[test]
fn a_flag_without_a_default_is_refused() {
    only_error(
        "  f:\n    variants: { on: true, off: false }\n",
        "flags.f",
        &["needs `default`"],
    );
}

#[test]
fn flag_keys_are_words_and_release_keys_are_taken() {
    only_error(
        "  release.web:\n    variants: { on: true }\n    default: on\n",
        "flags.release.web",
        &["`release.` are taken"],
    );
    only_error(
        "  \"new checkout\":\n    variants: { on: true }\n    default: on\n",
        "flags.new checkout",
        &["not a valid flag key"],
    );
}

#[test]
fn a_number_in_a_flag_rule_reads_as_its_text() {
    let config = valid(
        "  f:
    variants: { on: true, off: false }
    default: off
    rules:
      - header: { name: x-tier, equals: 5 }
        variant: on
",
    );
    assert!(matches!(config.flags[0].rules[0].rule, Rule::Header { .. }));
}
