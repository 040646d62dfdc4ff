//! `/api/v1/releases`: the releases, one release, and the release commands (`promote`, `pause`,
//! `resume`, `abort`, `retry`, `rollback`, `weight`).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::{Extension, Json};
use bytes::Bytes;
use graylane_api::{CommandBody, ErrorBody, ReleaseList, ReleaseView, WeightBody};
use graylane_controller::{Action, Actor};

use super::{blocking, controller, now_ms};
use crate::admin::AdminState;
use crate::admin::auth::Caller;
use crate::admin::error::ApiError;

/// Every release of this environment.
#[utoipa::path(get, path = "/api/v1/releases", tag = "releases",
    responses((status = 200, body = ReleaseList), (status = 401, body = ErrorBody)))]
pub(super) async fn list_releases(
    State(state): State<Arc<AdminState>>,
) -> Result<Json<ReleaseList>, ApiError> {
    let c = controller(&state)?;
    Ok(Json(ReleaseList {
        env: c.env().to_string(),
        releases: c.releases(now_ms()),
    }))
}

/// One release: strategy, state, step, weights, pause and recent transitions.
#[utoipa::path(get, path = "/api/v1/releases/{service}", tag = "releases",
    params(("service" = String, Path, description = "The service whose release to show")),
    responses((status = 200, body = ReleaseView), (status = 404, body = ErrorBody)))]
pub(super) async fn get_release(
    State(state): State<Arc<AdminState>>,
    Path(service): Path<String>,
) -> Result<Json<ReleaseView>, ApiError> {
    Ok(Json(controller(&state)?.release(&service, now_ms())?))
}

fn command_body(body: &Bytes) -> Result<CommandBody, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(CommandBody::default());
    }
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!(
            "the body must be JSON like {{\"reason\": \"why\"}}: {e}"
        ))
    })
}

async fn run_command(
    state: Arc<AdminState>,
    caller: Caller,
    service: String,
    action: Action,
    reason: Option<String>,
) -> Result<Json<ReleaseView>, ApiError> {
    let c = controller(&state)?;
    let view = blocking(move || {
        c.command(
            &service,
            action,
            Actor {
                name: &caller.name,
                reason: reason.as_deref().unwrap_or(""),
            },
            now_ms(),
        )
    })
    .await?;
    Ok(Json(view))
}

macro_rules! release_command {
    ($name:ident, $path:literal, $doc:literal, $action:expr) => {
        #[doc = $doc]
        #[utoipa::path(post, path = $path, tag = "releases",
            params(("service" = String, Path, description = "The service whose release to command")),
            request_body(content = Option<CommandBody>, content_type = "application/json"),
            responses(
                (status = 200, description = "The release after the command", body = ReleaseView),
                (status = 404, description = "No such release", body = ErrorBody),
                (status = 409, description = "The command makes no sense now", body = ErrorBody)))]
        pub(super) async fn $name(
            State(state): State<Arc<AdminState>>,
            Extension(caller): Extension<Caller>,
            Path(service): Path<String>,
            body: Bytes,
        ) -> Result<Json<ReleaseView>, ApiError> {
            let body = command_body(&body)?;
            let action: fn(&CommandBody) -> Action = $action;
            run_command(state, caller, service, action(&body), body.reason.clone()).await
        }
    };
}

release_command!(
    promote,
    "/api/v1/releases/{service}/promote",
    "Next step (canary), switch (blue-green), or the named winner (experiment, `variant`); `full` goes straight to 100%.",
    |b| match (&b.variant, b.full) {
        (Some(v), _) => Action::PromoteVariant(v.clone()),
        (None, Some(true)) => Action::PromoteFull,
        _ => Action::Promote,
    }
);
release_command!(
    pause,
    "/api/v1/releases/{service}/pause",
    "Hold the release at its step; a timed pause stops counting.",
    |_| Action::Pause
);
release_command!(
    resume,
    "/api/v1/releases/{service}/resume",
    "Go on from where the release was paused.",
    |_| Action::Resume
);
release_command!(
    abort,
    "/api/v1/releases/{service}/abort",
    "All traffic to the stable version at once; force rules off.",
    |_| Action::Abort
);
release_command!(
    retry,
    "/api/v1/releases/{service}/retry",
    "Start an aborted or rolled-back release again from step 0.",
    |_| Action::Retry
);
release_command!(
    rollback,
    "/api/v1/releases/{service}/rollback",
    "Send a completed release back to the previous stable version.",
    |_| Action::Rollback
);

/// Override the candidate's weight until the next step.
#[utoipa::path(post, path = "/api/v1/releases/{service}/weight", tag = "releases",
    params(("service" = String, Path, description = "The service whose release to change")),
    request_body(content = WeightBody, content_type = "application/json"),
    responses(
        (status = 200, body = ReleaseView),
        (status = 400, description = "Weight missing, not a number, or out of range", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub(super) async fn set_weight(
    State(state): State<Arc<AdminState>>,
    Extension(caller): Extension<Caller>,
    Path(service): Path<String>,
    body: Bytes,
) -> Result<Json<ReleaseView>, ApiError> {
    let body: WeightBody = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!(
            "the body must be JSON like {{\"weight\": 12.5}}: {e}"
        ))
    })?;
    let weight = body.weight.as_f64().ok_or_else(|| {
        ApiError::bad_request(format!(
            "weight {} is not a number; give a percentage from 0 to 100, e.g. {{\"weight\": 12.5}}",
            body.weight
        ))
    })?;
    run_command(
        state,
        caller,
        service,
        Action::SetWeight(weight),
        body.reason,
    )
    .await
}
