//! `POST /api/v1/eval`: which service and version a request would get from this gateway now.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use bytes::Bytes;
use graylane_api::{ErrorBody, EvalAnswer, EvalRequest};

use super::now_ms;
use crate::admin::AdminState;
use crate::admin::error::ApiError;
use crate::commands::eval::evaluate;

/// Which service and version a request would get from this gateway now, and why: its live
/// routing (the release's current step, `set-weight` overrides, Redis segment members), where
/// `graylane eval --config` sees only the file.
#[utoipa::path(post, path = "/api/v1/eval", tag = "eval",
    request_body(content = EvalRequest, description = "The imaginary request"),
    responses(
        (status = 200, description = "The decision; `service` is null when no service matches", body = EvalAnswer),
        (status = 400, description = "The body is not a valid request", body = ErrorBody),
        (status = 401, description = "No token, or an unknown one", body = ErrorBody)))]
pub(super) async fn eval(
    State(state): State<Arc<AdminState>>,
    body: Bytes,
) -> Result<Json<EvalAnswer>, ApiError> {
    let request: EvalRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!(
            "the body must be a request like {{\"method\": \"GET\", \"target\": \"/api/payment\", \"headers\": [\"X-User-Id: u-1\"], \"ip\": \"203.0.113.7\"}}: {e}"
        ))
    })?;
    let snapshot = state.gateway.snapshot();
    evaluate(&snapshot.table, &snapshot.config, &request, now_ms())
        .map(Json)
        .map_err(|e| ApiError::bad_request(format!("{e:#}")))
}
