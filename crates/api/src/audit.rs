//! The audit log: every release transition and configuration change.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// One entry of the audit log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AuditView {
    /// Its place in the log: one more than the entry before.
    pub seq: u64,
    /// RFC 3339.
    pub at: String,
    /// Unix milliseconds.
    pub at_ms: i64,
    /// A token's name, `controller` for the timer, or `analysis`.
    pub actor: String,
    /// What was done, e.g. `promote` or `config.apply`.
    pub action: String,
    /// A service name, or `config`.
    pub target: String,
    /// Why, as the actor said.
    pub reason: String,
    /// The action's particulars (weights, revision numbers, ...).
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
}

/// `GET /api/v1/audit`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AuditList {
    /// The environment.
    pub env: String,
    /// Newest first.
    pub entries: Vec<AuditView>,
}
