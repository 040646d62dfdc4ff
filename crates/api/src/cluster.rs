//! The fleet as one node sees it, and who a token is.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::states::{ClusterMode, Role};

/// The fleet as this node sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Cluster {
    /// `fleet` (on etcd) or `single` (one node with its own store: no members, no leader).
    #[schema(value_type = String)]
    pub mode: ClusterMode,
    /// This node's name (`--node`).
    pub node: Option<String>,
    /// The node that advances releases and runs the analyses.
    pub leader: Option<String>,
    /// The newest configuration revision in the store, as far as this node has heard.
    pub latest_revision: Option<u64>,
    /// Whether this node hears from etcd. `false`: it serves its last configuration and state,
    /// which may be stale.
    pub store_reachable: bool,
    /// Every node that has reported, by name.
    pub members: Vec<ClusterMember>,
}

/// One node of the fleet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ClusterMember {
    /// Its name (`--node`).
    pub name: String,
    /// Its admin listener.
    pub admin: Option<String>,
    /// The configuration revision it serves.
    pub config_revision: u64,
    /// Whether it takes traffic (`/readyz`).
    pub ready: bool,
    /// When it last reported (RFC 3339).
    pub last_seen: String,
    /// It serves an older revision than the newest.
    pub lagging: bool,
    /// It has not reported for longer than three heartbeats (it may be cut off from etcd).
    pub stale: bool,
}

/// Who the presented token is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Whoami {
    /// The token's name, recorded as the actor of what it does.
    pub name: String,
    /// `viewer`, `operator` or `admin`.
    #[schema(value_type = String)]
    pub role: Role,
}
