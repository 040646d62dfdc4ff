//! `GET /api/v1/flags/snapshot`: what an application needs to evaluate the configuration's
//! flags, and every release as `release.SERVICE`, in its own process with exactly the
//! gateway's answers (`graylane-sdk`'s local evaluation), and nothing it must not see.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::ReleaseState;

/// The routing part of the configuration in effect, and each release's split right now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FlagSnapshot {
    /// The configuration revision the document was taken from.
    pub revision: u64,
    /// A configuration (YAML) with the routing keys only: flags, segments with their current
    /// members, each service's match, versions and release routing (strategy, versions, force
    /// rules, `bucket_by`, `salt`). Its listener and endpoints are placeholders; it holds no
    /// address, token, webhook, analysis query or gate. `graylane_config::load_str` reads it.
    pub config: String,
    /// Each release's split in effect (its current step, an operator's `set-weight`, an
    /// abort), in the document's service order.
    pub releases: Vec<ReleaseSplit>,
}

/// How one release splits its traffic now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ReleaseSplit {
    /// The service.
    pub service: String,
    /// The release's state (`progressing`, `paused`, ...); `null` when the controller has no
    /// record of it.
    #[schema(value_type = Option<String>)]
    pub state: Option<ReleaseState>,
    /// The index of its current step (0 for the first); `null` as `state`.
    pub step: Option<usize>,
    /// The version the force rules send a context to; `null` when they are off (an aborted
    /// release).
    pub force_to: Option<String>,
    /// Versions and their shares of the 100 000 buckets, in bucket order.
    pub shares: Vec<SplitShare>,
    /// A mirror step's copied share, in thousandths of a percent (0: none).
    pub mirror_milli_percent: u32,
}

/// One version's share of a release's buckets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SplitShare {
    /// The version's name.
    pub version: String,
    /// Its share in thousandths of a percent, 0 to 100 000.
    pub milli_percent: u32,
}
