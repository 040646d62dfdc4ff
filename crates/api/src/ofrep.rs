//! The OpenFeature Remote Evaluation Protocol (OFREP) on the admin listener:
//! `POST /ofrep/v1/evaluate/flags/{key}`, `POST /ofrep/v1/evaluate/flags` and the provider
//! configuration, `GET /ofrep/v1/configuration`. Field names are
//! OFREP's (camelCase), so any OFREP provider reads them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The body of both evaluation calls: the evaluation context.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct OfrepRequest {
    /// The targeting key (`targetingKey`) and attributes rules read: a string, number or
    /// boolean attribute is a header, cookie and query parameter of its name; `ip`, `path`,
    /// `method` and `host` are also the client address, path, method and host.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub context: Option<serde_json::Value>,
}

/// A flag's value for the context.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct OfrepEvaluation {
    /// The flag's key.
    pub key: String,
    /// The variant's value: a boolean, string, number or object (a release's: the version).
    #[schema(value_type = Object)]
    pub value: serde_json::Value,
    /// `TARGETING_MATCH`, `SPLIT`, `DEFAULT` or `DISABLED`.
    pub reason: String,
    /// The variant's name (a release's: the version's name).
    pub variant: String,
    /// What else decided it: `rule` (index of the matching rule), `bucket` (0–99,999) and,
    /// for a release, `service` and `weightPercent` (the candidate's live weight).
    #[schema(value_type = Object)]
    pub metadata: BTreeMap<String, serde_json::Value>,
}

/// Why a flag could not be evaluated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OfrepError {
    /// The flag's key; absent for an error of the whole bulk request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// `FLAG_NOT_FOUND`, `PARSE_ERROR`, `INVALID_CONTEXT`, `TARGETING_KEY_MISSING` or
    /// `GENERAL`.
    pub error_code: String,
    /// What is wrong, in a sentence.
    pub error_details: String,
}

/// One flag of a bulk evaluation: its value, or why it has none.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum OfrepBulkItem {
    /// The flag's value for the context.
    Evaluated(OfrepEvaluation),
    /// Why it could not be evaluated for this context.
    Failed(OfrepError),
}

/// Every flag (and every release, as `release.SERVICE`) for one context.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct OfrepBulk {
    /// The configured flags by key, then `release.SERVICE` for each service with a release.
    pub flags: Vec<OfrepBulkItem>,
}

/// `GET /ofrep/v1/configuration`: what the flag system offers an OFREP provider.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct OfrepConfiguration {
    /// The flag management system: `graylane`.
    pub name: String,
    /// What it supports.
    pub capabilities: OfrepCapabilities,
}

/// The capabilities of an OFREP configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OfrepCapabilities {
    /// How a provider learns that flags changed.
    pub cache_invalidation: OfrepCacheInvalidation,
    /// The value types flags may have.
    pub flag_evaluation: OfrepFlagEvaluation,
}

/// How a provider's cache learns of changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct OfrepCacheInvalidation {
    /// Polling the bulk evaluation with its `ETag`.
    pub polling: OfrepPolling,
}

/// Polling the bulk evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OfrepPolling {
    /// Whether polling is supported.
    pub enabled: bool,
    /// The shortest interval a provider should poll at, in milliseconds.
    pub min_polling_interval_ms: u64,
}

/// The flag value types.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OfrepFlagEvaluation {
    /// `boolean`, `string`, `int`, `float` and `object`.
    pub supported_types: Vec<String>,
}
