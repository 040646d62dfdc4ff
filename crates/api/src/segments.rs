//! Editing the members of a `source: redis` segment.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Members to add to and remove from a Redis segment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SegmentEdit {
    /// Members to add.
    #[serde(default)]
    pub add: Vec<String>,
    /// Members to remove.
    #[serde(default)]
    pub remove: Vec<String>,
}

/// What an edit changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SegmentEdited {
    /// The segment.
    pub segment: String,
    /// Members that were not in the set before.
    pub added: u64,
    /// Members that were in the set.
    pub removed: u64,
}
