//! `GET /api/v1/audit`: the audit log, filtered by the server so that old entries are found too.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use graylane_api::{AuditList, ErrorBody};
use graylane_store::AuditFilter;
use serde::Deserialize;
use utoipa::IntoParams;

use super::{blocking, controller};
use crate::admin::AdminState;
use crate::admin::error::ApiError;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct AuditQuery {
    /// How many matching entries (default 100, at most 10000).
    limit: Option<String>,
    /// Only entries about this service (the entry's `target`; `config` for configuration
    /// changes). Exact match; empty or absent: every target.
    service: Option<String>,
    /// Only entries by this actor (a token's name, `controller` for the timer, or `analysis`).
    /// Exact match; empty or absent: every actor.
    actor: Option<String>,
    /// Only entries of this action, e.g. `promote` or `config.apply`. Exact match; empty or
    /// absent: every action.
    action: Option<String>,
}

impl AuditQuery {
    /// The filter the query asks for. An empty value means no filter, so that a form (or
    /// `?actor=`) with nothing chosen shows everything.
    fn filter(&self) -> AuditFilter {
        let given = |v: &Option<String>| v.clone().filter(|v| !v.is_empty());
        AuditFilter {
            target: given(&self.service),
            actor: given(&self.actor),
            action: given(&self.action),
        }
    }
}

/// Every release transition and configuration change, newest first; `service`, `actor` and
/// `action` keep only the entries that match, searching back through the whole log.
#[utoipa::path(get, path = "/api/v1/audit", tag = "audit",
    params(AuditQuery),
    responses((status = 200, body = AuditList), (status = 400, body = ErrorBody)))]
pub(super) async fn audit(
    State(state): State<Arc<AdminState>>,
    Query(query): Query<AuditQuery>,
) -> Result<Json<AuditList>, ApiError> {
    let limit = match &query.limit {
        None => 100,
        Some(text) => match text.parse::<usize>() {
            Ok(n) if (1..=10_000).contains(&n) => n,
            _ => {
                return Err(ApiError::bad_request(format!(
                    "limit `{text}` must be a number from 1 to 10000"
                )));
            }
        },
    };
    let filter = query.filter();
    let c = controller(&state)?;
    let env = c.env().to_string();
    let entries = blocking(move || c.audit(&filter, limit)).await?;
    Ok(Json(AuditList { env, entries }))
}
