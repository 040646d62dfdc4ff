//! `POST /api/v1/segments/{name}/members`: the members of a `source: redis` segment.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use bytes::Bytes;
use graylane_api::{ErrorBody, SegmentEdit, SegmentEdited};

use crate::admin::AdminState;
use crate::admin::error::ApiError;

/// Adds and removes members of a `source: redis` segment (the gray users): every gateway
/// sharing the Redis set sees the change at its next refresh, this one at once.
#[utoipa::path(post, path = "/api/v1/segments/{name}/members", tag = "segments",
    params(("name" = String, Path, description = "The segment")),
    request_body(content = SegmentEdit, content_type = "application/json"),
    responses((status = 200, body = SegmentEdited), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn edit_segment(
    State(state): State<Arc<AdminState>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<SegmentEdited>, ApiError> {
    let edit: SegmentEdit = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!(
            "the body must be JSON like {{\"add\": [\"u-1\"], \"remove\": [\"u-2\"]}}: {e}"
        ))
    })?;
    if edit.add.is_empty() && edit.remove.is_empty() {
        return Err(ApiError::bad_request(
            "nothing to do: give `add` and/or `remove`",
        ));
    }
    match state
        .gateway
        .edit_segment(&name, &edit.add, &edit.remove)
        .await
    {
        Ok((added, removed)) => Ok(Json(SegmentEdited {
            segment: name,
            added,
            removed,
        })),
        Err(e @ graylane_proxy::SegmentError::Unknown { .. }) => {
            Err(ApiError::not_found(e.to_string()))
        }
        Err(e @ graylane_proxy::SegmentError::NotRedis { .. }) => {
            Err(ApiError::conflict(e.to_string()))
        }
        Err(e) => Err(ApiError::unavailable(e.to_string())),
    }
}
