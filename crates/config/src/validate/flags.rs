//! `flags:`: feature flags — their variants and values, targeting rules, rollout and
//! bucketing attribute.

use std::collections::BTreeMap;

use super::Validator;
use super::scalars::is_token;
use crate::error::did_you_mean;
use crate::model::*;
use crate::raw::*;

/// Keys that start with this name a release read as a flag (`release.payment`), so no flag may.
const RELEASE_PREFIX: &str = "release.";

impl Validator<'_> {
    pub(super) fn flags(
        &mut self,
        raw: BTreeMap<String, RawFlag>,
        segments: &[Segment],
    ) -> Vec<Flag> {
        raw.into_iter()
            .filter_map(|(key, flag)| self.flag(key, flag, segments))
            .collect()
    }

    fn flag(&mut self, key: String, raw: RawFlag, segments: &[Segment]) -> Option<Flag> {
        let path = format!("flags.{key}");
        let errors_before = self.problems.len();
        if !is_token(&key) {
            self.fail(
                &path,
                format!("`{key}` is not a valid flag key: use letters, digits, `-`, `_` and `.`"),
            );
        } else if key.starts_with(RELEASE_PREFIX) {
            self.fail(
                &path,
                format!(
                    "flag keys starting with `{RELEASE_PREFIX}` are taken: `release.SERVICE` reads a service's release as a flag"
                ),
            );
        }
        let variants = self.flag_variants(&path, &raw.variants);
        let names: Vec<&str> = variants.iter().map(|v| v.name.as_str()).collect();
        let default = match &raw.default {
            Some(name) => self.variant_ref(&format!("{path}.default"), name, &names),
            None => {
                self.fail(
                    &path,
                    "a flag needs `default`: the variant a context gets when nothing else decides",
                );
                None
            }
        };
        let rules = raw
            .rules
            .iter()
            .enumerate()
            .filter_map(|(i, r)| self.flag_rule(&format!("{path}.rules[{i}]"), r, &names, segments))
            .collect();
        let rollout = self.flag_rollout(&format!("{path}.rollout"), &raw.rollout, &names);
        if let Some(attr) = &raw.bucket_by
            && attr.is_empty()
        {
            self.fail(
                format!("{path}.bucket_by"),
                "`bucket_by` names a context attribute (such as `userId`); leave it out to bucket on the targeting key",
            );
        }
        if self.problems.len() > errors_before {
            return None;
        }
        Some(Flag {
            key,
            variants,
            default: default?,
            rules,
            rollout,
            bucket_by: raw.bucket_by,
            disabled: raw.disabled.unwrap_or(false),
        })
    }

    fn flag_variants(&mut self, path: &str, raw: &serde_yaml_ng::Mapping) -> Vec<FlagVariant> {
        let path = format!("{path}.variants");
        if raw.is_empty() {
            self.fail(
                &path,
                "a flag needs at least one variant, such as `variants: { on: true, off: false }`",
            );
        }
        let mut out = Vec::new();
        for (name, value) in raw {
            let Some(name) = scalar_text(name) else {
                self.fail(&path, "a variant's name is a word, not a list or a map");
                continue;
            };
            let vpath = format!("{path}.{name}");
            if !is_token(&name) {
                self.fail(
                    &vpath,
                    format!(
                        "`{name}` is not a valid variant name: use letters, digits, `-`, `_` and `.`"
                    ),
                );
                continue;
            }
            let value = match value {
                serde_yaml_ng::Value::Null => Err("a variant's value may not be empty (null)"),
                serde_yaml_ng::Value::Sequence(_) => Err(
                    "a variant's value is a boolean, string, number or map, not a list (put the list in a map)",
                ),
                other => json_value(other),
            };
            match value {
                Ok(value) => out.push(FlagVariant { name, value }),
                Err(why) => self.fail(vpath, why),
            }
        }
        out
    }

    fn variant_ref(&mut self, path: &str, name: &str, names: &[&str]) -> Option<usize> {
        let found = names.iter().position(|v| *v == name);
        if found.is_none() && !names.is_empty() {
            let hint = did_you_mean(name, names.iter().copied())
                .map(|s| format!("; did you mean `{s}`?"))
                .unwrap_or_default();
            self.fail(
                path,
                format!(
                    "unknown variant `{name}` (the flag has: {}){hint}",
                    names.join(", ")
                ),
            );
        }
        found
    }

    fn flag_rule(
        &mut self,
        path: &str,
        raw: &RawFlagRule,
        names: &[&str],
        segments: &[Segment],
    ) -> Option<FlagRule> {
        let variant = match &raw.variant {
            Some(name) => self.variant_ref(&format!("{path}.variant"), name, names),
            None => {
                self.fail(
                    path,
                    "a flag's rule needs `variant`: the variant a context that matches gets",
                );
                None
            }
        };
        let trusted_before = self.trusted_only_at.len();
        let rule = self.rule(path, &raw.rule, segments, 0);
        if self.trusted_only_at.len() > trusted_before {
            // A context comes from the application, never from a trusted hop: such a rule could
            // never match, and the "needs trusted_hops" error would send the user the wrong way.
            for at in self.trusted_only_at.split_off(trusted_before) {
                self.fail(
                    at,
                    "a flag's context comes from an application, not from a trusted hop, so `trusted_only` would never match",
                );
            }
            return None;
        }
        Some(FlagRule {
            rule: rule?,
            variant: variant?,
        })
    }

    fn flag_rollout(
        &mut self,
        path: &str,
        raw: &serde_yaml_ng::Mapping,
        names: &[&str],
    ) -> Vec<FlagShare> {
        let mut out = Vec::new();
        let mut total = 0u32;
        for (name, percent) in raw {
            let Some(name) = scalar_text(name) else {
                self.fail(path, "the rollout maps a variant's name to a percentage");
                continue;
            };
            let spath = format!("{path}.{name}");
            let variant = self.variant_ref(&spath, &name, names);
            let weight = percent.as_f64().and_then(Weight::from_percent);
            if weight.is_none() {
                self.fail(
                    &spath,
                    format!(
                        "`{}` must be a percentage from 0 to 100 in steps of at most 0.001",
                        scalar_text(percent).unwrap_or_else(|| "this".into())
                    ),
                );
            }
            if let (Some(variant), Some(weight)) = (variant, weight) {
                total += weight.milli_percent();
                out.push(FlagShare { variant, weight });
            }
        }
        if total > Weight::FULL.milli_percent() {
            self.fail(
                path,
                format!(
                    "the rollout's percentages add up to {}%; they may add up to at most 100 (the rest gets `default`)",
                    f64::from(total) / 1000.0
                ),
            );
        }
        out
    }
}

/// A scalar's text: a map key or a number as written; `None` for a list or a map.
fn scalar_text(v: &serde_yaml_ng::Value) -> Option<String> {
    match v {
        serde_yaml_ng::Value::String(s) => Some(s.clone()),
        serde_yaml_ng::Value::Bool(b) => Some(b.to_string()),
        serde_yaml_ng::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A YAML value as the JSON an OFREP client receives.
fn json_value(v: &serde_yaml_ng::Value) -> Result<serde_json::Value, &'static str> {
    use serde_yaml_ng::Value as Y;
    Ok(match v {
        Y::Null => serde_json::Value::Null,
        Y::Bool(b) => serde_json::Value::Bool(*b),
        Y::String(s) => serde_json::Value::String(s.clone()),
        Y::Number(n) => {
            if let Some(i) = n.as_i64() {
                i.into()
            } else if let Some(u) = n.as_u64() {
                u.into()
            } else {
                n.as_f64()
                    .and_then(serde_json::Number::from_f64)
                    .map(serde_json::Value::Number)
                    .ok_or("a number in a variant's value must be finite (not .nan or .inf)")?
            }
        }
        Y::Sequence(items) => items
            .iter()
            .map(json_value)
            .collect::<Result<Vec<_>, _>>()?
            .into(),
        Y::Mapping(map) => {
            let mut out = serde_json::Map::new();
            for (k, v) in map {
                let k = scalar_text(k).ok_or("a map in a variant's value has words as keys")?;
                out.insert(k, json_value(v)?);
            }
            serde_json::Value::Object(out)
        }
        Y::Tagged(_) => return Err("a variant's value may not carry a YAML tag (`!name`)"),
    })
}
