//! `flags:`: feature flags for applications, read over OFREP on the admin listener.

use serde::Deserialize;

use super::RawRule;

/// One entry of `flags:` (the map key is the flag's key).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFlag {
    /// `variants`: variant name → value (a boolean, string, number or object), in file order.
    #[serde(default)]
    pub variants: serde_yaml_ng::Mapping,
    /// `default`: the variant a context gets when no rule matches and the rollout does not
    /// take it.
    pub default: Option<String>,
    /// `rules`: routing rules, each with the `variant` a matching context gets; first match
    /// wins.
    #[serde(default)]
    pub rules: Vec<RawFlagRule>,
    /// `rollout`: variant → percentage of the bucketed contexts, in file order; together at
    /// most 100, the rest gets `default`.
    #[serde(default)]
    pub rollout: serde_yaml_ng::Mapping,
    /// `bucket_by`: the context attribute bucketed on; the targeting key when unset.
    pub bucket_by: Option<String>,
    /// `disabled: true`: every context gets `default`, with reason `DISABLED`.
    pub disabled: Option<bool>,
}

/// One entry of a flag's `rules:`: a routing rule (the same kinds as `release.force`) and the
/// variant it gives, side by side in one map.
#[derive(Debug)]
pub struct RawFlagRule {
    /// `variant`: the variant a context that matches gets.
    pub variant: Option<String>,
    /// The rule itself: every key but `variant`.
    pub rule: RawRule,
}

/// Takes `variant` out of the map and reads the rest as a [`RawRule`]. Not `#[serde(flatten)]`:
/// a flattened struct ignores keys it does not know, and a misspelt rule kind must be an error.
impl<'de> Deserialize<'de> for RawFlagRule {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut map = serde_yaml_ng::Mapping::deserialize(deserializer)?;
        let variant = match map.remove("variant") {
            None => None,
            Some(serde_yaml_ng::Value::String(s)) => Some(s),
            Some(serde_yaml_ng::Value::Bool(b)) => Some(b.to_string()),
            Some(serde_yaml_ng::Value::Number(n)) => Some(n.to_string()),
            Some(_) => return Err(D::Error::custom("`variant` names a variant of the flag")),
        };
        let mut rest = serde_yaml_ng::Value::Mapping(map);
        numbers_as_text(&mut rest);
        let rule = RawRule::deserialize(rest).map_err(D::Error::custom)?;
        Ok(RawFlagRule { variant, rule })
    }
}

/// Rules have no number fields: a number (`equals: 5`) is the text it was written as, which
/// is how the file's own deserializer hands a plain scalar to a string field.
fn numbers_as_text(v: &mut serde_yaml_ng::Value) {
    match v {
        serde_yaml_ng::Value::Number(n) => *v = serde_yaml_ng::Value::String(n.to_string()),
        serde_yaml_ng::Value::Sequence(items) => items.iter_mut().for_each(numbers_as_text),
        serde_yaml_ng::Value::Mapping(map) => map.values_mut().for_each(numbers_as_text),
        _ => {}
    }
}
