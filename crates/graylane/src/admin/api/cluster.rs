//! `/api/v1/cluster` and `/api/v1/whoami`: the fleet as this node sees it, and who a token is.

use std::sync::Arc;

use axum::extract::State;
use axum::{Extension, Json};
use graylane_api::{Cluster, ClusterMember, ClusterMode, ErrorBody, Whoami};

use super::now_ms;
use crate::admin::AdminState;
use crate::admin::auth::{Caller, api_role};

/// The fleet: its leader and members, each with the revision it serves and when it was last
/// seen. A member behind the newest revision is `lagging`; one silent for three heartbeats is
/// `stale`; this node says whether it still hears from etcd.
#[utoipa::path(get, path = "/api/v1/cluster", tag = "cluster",
    responses((status = 200, body = Cluster), (status = 401, body = ErrorBody)))]
pub(super) async fn cluster(State(state): State<Arc<AdminState>>) -> Json<Cluster> {
    let Some(fleet) = &state.fleet else {
        return Json(Cluster {
            mode: ClusterMode::Single,
            node: None,
            leader: None,
            latest_revision: state.controller.as_ref().map(|c| c.current_revision()),
            store_reachable: true,
            members: Vec::new(),
        });
    };
    let view = fleet.cluster();
    let now = now_ms();
    let members = view
        .members
        .iter()
        .map(|m| ClusterMember {
            name: m.name.clone(),
            admin: m.admin.clone(),
            config_revision: m.config_revision,
            ready: m.ready,
            last_seen: graylane_controller::view::rfc3339(m.seen_ms),
            lagging: m.config_revision < view.latest_revision,
            stale: if m.name == view.node {
                !view.store_reachable
            } else {
                now - m.seen_ms > 3 * graylane_etcd::fleet::HEARTBEAT.as_millis() as i64
            },
        })
        .collect();
    Json(Cluster {
        mode: ClusterMode::Fleet,
        node: Some(view.node),
        leader: view.leader,
        latest_revision: Some(view.latest_revision),
        store_reachable: view.store_reachable,
        members,
    })
}

/// Who the presented token is, and its role (what the dashboard shows).
#[utoipa::path(get, path = "/api/v1/whoami", tag = "auth",
    responses((status = 200, body = Whoami), (status = 401, body = ErrorBody)))]
pub(super) async fn whoami(Extension(caller): Extension<Caller>) -> Json<Whoami> {
    Json(Whoami {
        role: api_role(caller.role),
        name: caller.name,
    })
}
