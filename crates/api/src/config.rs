//! The configuration's revisions: one revision, the list of them, a diff between two, and the
//! outcome of applying or reverting one.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::states::RevisionSource;

/// One applied configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RevisionView {
    /// Its number: 1 for the first, then one more for each.
    pub n: u64,
    /// RFC 3339.
    pub at: String,
    /// Unix milliseconds.
    pub at_ms: i64,
    /// Who applied it: a token's name, or `file` for a revision read from the file.
    pub author: String,
    /// What the change is for, as the author said.
    pub message: String,
    /// `file`, `api` or `revert`.
    #[schema(value_type = String)]
    pub source: RevisionSource,
    /// For a revert: the revision whose text it restored.
    pub reverted_from: Option<u64>,
    /// The whole YAML; only when one revision is asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub yaml: Option<String>,
}

/// `GET /api/v1/config/revisions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RevisionList {
    /// The environment.
    pub env: String,
    /// The revision in effect.
    pub current: u64,
    /// Newest first.
    pub revisions: Vec<RevisionView>,
}

/// `GET /api/v1/config/diff`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DiffView {
    /// The older revision.
    pub from: u64,
    /// The newer revision.
    pub to: u64,
    /// Unified diff of the YAML texts.
    pub diff: String,
}

/// The outcome of a configuration change (or of trying one with `dry_run`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ApplyOutcome {
    /// Whether the change took effect.
    pub applied: bool,
    /// Whether the text is a valid configuration.
    pub valid: bool,
    /// The revision recorded; none for a dry run or a text identical to the current one.
    pub revision: Option<RevisionView>,
    /// Unified diff from the current revision to the proposed text.
    pub diff: String,
}
