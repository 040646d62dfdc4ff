//! The routing part of a configuration, for applications that evaluate flags and releases
//! themselves (`graylane-sdk`, through `GET /api/v1/flags/snapshot`): everything the rule
//! engine reads to give a context the same flag value and the same version the gateway gives
//! it, and nothing an application must not see.
//!
//! [`routing_document`] keeps of a configuration text its `flags:`, each service's `name`,
//! `match`, `default_version`, version names and the routing keys of its `release:` (strategy,
//! versions, `force` rules, `bucket_by`, `salt`, `sticky`, experiment variants), and writes
//! every segment's current members inline. Upstream addresses, TLS files, tokens, webhooks,
//! analysis queries, gates, traffic control and the admin listener stay out: the document's one
//! listener and every version's endpoints are placeholders (a loopback listener, the registry
//! selector `{ registry: graylane-snapshot }`) so that it loads with [`crate::load_str`] like any
//! configuration. A canary's steps are one placeholder step too: the split in effect travels
//! beside the document (the gateway's live routing), not in it.
//!
//! Two things evaluate differently from the document than on the gateway: a `source: redis`
//! segment is sent without members (a Redis set may hold millions), so a rule on it matches
//! nothing; and `country` rules read only their header (the `geoip:` database stays on the
//! gateway).

use serde_yaml_ng::{Mapping, Value};

use crate::Config;

/// The registry name every version's placeholder endpoints select: nothing ever connects to
/// them.
pub const PLACEHOLDER_REGISTRY: &str = "graylane-snapshot";

/// The release keys that decide where a request or a context goes; every other key (steps,
/// analysis, gates, pauses, mirroring) only moves the split, which the snapshot carries as it is
/// now.
const RELEASE_KEYS: [&str; 10] = [
    "strategy",
    "baseline",
    "candidate",
    "active",
    "preview",
    "variants",
    "force",
    "bucket_by",
    "salt",
    "sticky",
];

/// The routing document of the configuration `source` (its text, which `config` was validated
/// from): see the module's documentation. `config` gives the segments' current members (a
/// `file:` segment's lines as last read). An `Err` says why the text cannot be read, which for
/// a text that validated into `config` does not happen.
pub fn routing_document(source: &str, config: &Config) -> Result<String, String> {
    let mut doc: Value =
        serde_yaml_ng::from_str(source).map_err(|e| format!("the configuration text: {e}"))?;
    doc.apply_merge()
        .map_err(|e| format!("the configuration's merge keys: {e}"))?;
    let mut out = Mapping::new();
    out.insert(
        "listeners".into(),
        Value::Sequence(vec![Value::Mapping(Mapping::from_iter([(
            "bind".into(),
            "127.0.0.1:1".into(),
        )]))]),
    );
    let segments: Mapping = config
        .segments
        .iter()
        .map(|s| {
            let members = s.members.iter().map(|m| Value::from(m.as_str())).collect();
            let body = Mapping::from_iter([("values".into(), Value::Sequence(members))]);
            (Value::from(s.name.as_str()), Value::Mapping(body))
        })
        .collect();
    if !segments.is_empty() {
        out.insert("segments".into(), Value::Mapping(segments));
    }
    let services: Vec<Value> = doc
        .get("services")
        .and_then(Value::as_sequence)
        .map(|services| services.iter().filter_map(service).collect())
        .unwrap_or_default();
    out.insert("services".into(), Value::Sequence(services));
    if let Some(flags) = doc.get("flags") {
        out.insert("flags".into(), flags.clone());
    }
    serde_yaml_ng::to_string(&Value::Mapping(out))
        .map_err(|e| format!("the routing document cannot be written: {e}"))
}

/// One service's routing keys; `None` for an entry that is not a map (validation refused it).
fn service(raw: &Value) -> Option<Value> {
    let raw = raw.as_mapping()?;
    let mut out = Mapping::new();
    for key in ["name", "match", "default_version"] {
        if let Some(v) = raw.get(key) {
            out.insert(key.into(), v.clone());
        }
    }
    let placeholder = Value::Mapping(Mapping::from_iter([(
        "endpoints".into(),
        Value::Mapping(Mapping::from_iter([(
            "registry".into(),
            PLACEHOLDER_REGISTRY.into(),
        )])),
    )]));
    if let Some(versions) = raw.get("versions").and_then(Value::as_mapping) {
        let versions: Mapping = versions
            .keys()
            .map(|name| (name.clone(), placeholder.clone()))
            .collect();
        out.insert("versions".into(), Value::Mapping(versions));
    }
    if let Some(release) = raw.get("release").and_then(Value::as_mapping) {
        let mut kept: Mapping = RELEASE_KEYS
            .iter()
            .filter_map(|&k| Some((Value::from(k), release.get(k)?.clone())))
            .collect();
        if release.get("strategy").and_then(Value::as_str) == Some("canary") {
            let step = Value::Mapping(Mapping::from_iter([("weight".into(), 0.into())]));
            kept.insert("steps".into(), Value::Sequence(vec![step]));
        }
        out.insert("release".into(), Value::Mapping(kept));
    }
    Some(Value::Mapping(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOURCE: &str = r#"
listeners: [{ bind: 127.0.0.1:8080, trusted_hops: [10.0.0.0/8] }]
admin: { bind: 127.0.0.1:9900, tokens: [{ name: a, env: SECRET_ENV, role: admin }] }
segments:
  beta: { values: [u-1, u-2] }
services:
  - name: payment
    match: { path_prefix: /pay }
    versions:
      stable: { endpoints: ["10.1.1.1:7001"] }
      canary: { endpoints: ["10.1.1.2:7001"], tag: build-7 }
    release:
      strategy: canary
      baseline: stable
      candidate: canary
      force: [{ segment: { name: beta, key: "header:x-user" } }]
      bucket_by: "header:x-user"
      steps: [{ weight: 5, pause: 1m }, { weight: 100 }]
      analysis:
        interval: 1m
        checks: [{ metric: error_rate, max: 0.05 }]
  - name: web
    versions: { stable: { endpoints: ["10.1.1.3:80"] } }
  - name: checkout
    match: { path_prefix: /checkout }
    versions:
      blue: { endpoints: ["10.1.1.4:80"] }
      green: { endpoints: ["10.1.1.5:80"] }
    release: { strategy: blue_green, active: blue, preview: green, keep_previous: 5m }
  - name: search
    match: { path_prefix: /search }
    versions:
      a: { endpoints: ["10.1.1.6:80"] }
      b: { endpoints: ["10.1.1.7:80"] }
    release:
      strategy: experiment
      bucket_by: "header:x-user"
      variants:
        - { name: control, version: a, weight: 40 }
        - { name: treatment, version: b, weight: 60 }
webhooks: [{ url: "http://hooks.internal:7000/h?token=hunter2" }]
flags:
  checkout:
    variants: { on: true, off: false }
    default: off
    rules: [{ header: { name: plan, equals: pro }, variant: on }]
"#;

    #[test]
    fn the_routing_document_loads_and_holds_no_address_or_secret() {
        let config = crate::load_str(SOURCE, "source.yaml", std::path::Path::new(".")).unwrap();
        let doc = routing_document(SOURCE, &config).unwrap();
        for secret in [
            "10.1.1",
            "SECRET_ENV",
            "hunter2",
            "hooks.internal",
            "9900",
            "build-7",
            "error_rate",
        ] {
            assert!(!doc.contains(secret), "{secret} leaked into:\n{doc}");
        }
        let loaded = crate::load_str(&doc, "snapshot", std::path::Path::new(".")).unwrap();
        assert_eq!(loaded.services.len(), 4);
        assert_eq!(loaded.flags.len(), 1);
        assert_eq!(loaded.segments[0].members, ["u-1", "u-2"]);
        let names = |s: &crate::Service| {
            s.versions
                .iter()
                .map(|v| v.name.clone())
                .collect::<Vec<_>>()
        };
        for (kept, original) in loaded.services.iter().zip(&config.services) {
            assert_eq!(names(kept), names(original), "{}", kept.name);
            match (&kept.release, &original.release) {
                (Some(k), Some(o)) => {
                    assert_eq!(k.salt, o.salt, "{}", kept.name);
                    assert_eq!((k.baseline, k.candidate), (o.baseline, o.candidate));
                    assert_eq!(k.bucket_by, o.bucket_by, "{}", kept.name);
                }
                (None, None) => {}
                _ => panic!("{}: a release lost or made up", kept.name),
            }
        }
    }
}
