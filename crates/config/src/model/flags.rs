//! Feature flags: variants with their values, targeting rules, a bucketed rollout.

use super::{Rule, Weight};

/// One flag of `flags:`.
#[derive(Debug, Clone)]
pub struct Flag {
    /// The flag's key, as applications ask for it.
    pub key: String,
    /// The variants, in file order; at least one.
    pub variants: Vec<FlagVariant>,
    /// Index into `variants` of the variant given when nothing else decides.
    pub default: usize,
    /// Targeting rules in order; the first that matches decides.
    pub rules: Vec<FlagRule>,
    /// Shares of the bucketed contexts, laid out over the buckets in this order; together at
    /// most 100%, the rest gets `default`.
    pub rollout: Vec<FlagShare>,
    /// The context attribute a context is bucketed on; `None`: its targeting key.
    pub bucket_by: Option<String>,
    /// Every context gets `default`.
    pub disabled: bool,
}

/// A flag's variant: its name and the value a context with it gets.
#[derive(Debug, Clone, PartialEq)]
pub struct FlagVariant {
    /// The variant's name (letters, digits, `-`, `_`, `.`).
    pub name: String,
    /// A boolean, string, number or object.
    pub value: serde_json::Value,
}

/// A targeting rule of a flag.
#[derive(Debug, Clone)]
pub struct FlagRule {
    /// What the context must match.
    pub rule: Rule,
    /// Index into the flag's `variants` of the variant a match gives.
    pub variant: usize,
}

/// A variant's share of a flag's rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlagShare {
    /// Index into the flag's `variants`.
    pub variant: usize,
    /// The share of the bucketed contexts.
    pub weight: Weight,
}
