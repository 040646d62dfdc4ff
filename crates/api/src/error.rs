//! The body of every failed call: `{"error": "<sentence>", "code": "<kind>", ...}`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::states::Role;

/// What every failed call answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong and what would work, in one sentence.
    pub error: String,
    /// `unauthorized`, `forbidden`, `not_found`, `method_not_allowed`, `unknown_service`,
    /// `not_allowed`, `bad_request`, `too_large`, `invalid_config`, `store`, `write_failed` or
    /// `unavailable`.
    pub code: String,
    /// `forbidden`/`unauthorized`: the role the call needs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub required_role: Option<Role>,
    /// `unknown_service`: the services that have a release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub services: Option<Vec<String>>,
    /// `not_allowed`: the commands that make sense now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed: Option<Vec<String>>,
    /// `invalid_config`: every problem, as `file:line:col: key: reason`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<String>>,
}
