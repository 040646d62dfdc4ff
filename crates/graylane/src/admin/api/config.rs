//! `/api/v1/config`: the configuration in effect, changing it, its revisions, diffs between
//! them, and reverting to one.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use graylane_api::{ApplyOutcome, DiffView, ErrorBody, RevisionList, RevisionView};
use graylane_config::Role;
use http::{HeaderValue, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::Deserialize;
use utoipa::IntoParams;

use super::{blocking, controller, now_ms};
use crate::admin::AdminState;
use crate::admin::auth::Caller;
use crate::admin::error::ApiError;

/// What a caller may read of a configuration text: an admin (who may write it anyway) the exact
/// text; anyone else every URL in it without its password, bare userinfo or query values.
fn shown_to(caller: &Caller, text: String) -> String {
    if caller.role >= Role::Admin {
        text
    } else {
        graylane_config::redact_urls_in(&text)
    }
}

/// The configuration in effect, as YAML; `X-Graylane-Revision` says which revision it is.
/// Below the admin role, the secrets in its URLs are shown as `***`.
#[utoipa::path(get, path = "/api/v1/config", tag = "config",
    responses((status = 200, description = "The YAML text", content_type = "text/yaml", body = String)))]
pub(super) async fn get_config(
    State(state): State<Arc<AdminState>>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    let (revision, yaml) = controller(&state)?.current();
    let mut resp = shown_to(&caller, yaml).into_response();
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/yaml; charset=utf-8"),
    );
    headers.insert("x-graylane-revision", HeaderValue::from(revision));
    Ok(resp)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ChangeQuery {
    /// Validate and show the diff; apply nothing.
    #[serde(default)]
    dry_run: bool,
    /// Recorded with the revision.
    #[serde(default)]
    message: Option<String>,
}

/// The largest configuration `PUT /api/v1/config` takes; real ones are a few kilobytes.
const MAX_CONFIG_BYTES: usize = 1 << 20;

/// Validate, write to the file, record as a revision and apply (`dry_run`: only validate and
/// diff). Invalid YAML changes nothing. A body over 1 MiB is refused unread.
#[utoipa::path(put, path = "/api/v1/config", tag = "config",
    params(ChangeQuery),
    request_body(content = String, content_type = "application/yaml"),
    responses(
        (status = 200, body = ApplyOutcome),
        (status = 413, description = "The body is over 1 MiB", body = ErrorBody),
        (status = 422, description = "Invalid configuration: every error with its location", body = ErrorBody)))]
pub(super) async fn put_config(
    State(state): State<Arc<AdminState>>,
    Extension(caller): Extension<Caller>,
    Query(query): Query<ChangeQuery>,
    body: Body,
) -> Result<Json<ApplyOutcome>, ApiError> {
    let c = controller(&state)?;
    let body = Limited::new(body, MAX_CONFIG_BYTES)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<LengthLimitError>() {
                ApiError::too_large(format!(
                    "the configuration is over {} MiB; a configuration needs a few kilobytes",
                    MAX_CONFIG_BYTES >> 20
                ))
            } else {
                ApiError::bad_request(format!("the request body could not be read: {e}"))
            }
        })?
        .to_bytes();
    let yaml = String::from_utf8(body.to_vec())
        .map_err(|_| ApiError::bad_request("the configuration must be UTF-8 text"))?;
    let message = query
        .message
        .unwrap_or_else(|| "applied through the admin API".to_string());
    let outcome =
        blocking(move || c.put_config(&yaml, &caller.name, &message, query.dry_run, now_ms()))
            .await?;
    Ok(Json(outcome))
}

/// Every applied configuration, newest first.
#[utoipa::path(get, path = "/api/v1/config/revisions", tag = "config",
    responses((status = 200, body = RevisionList)))]
pub(super) async fn list_revisions(
    State(state): State<Arc<AdminState>>,
) -> Result<Json<RevisionList>, ApiError> {
    let c = controller(&state)?;
    let current = c.current().0;
    let env = c.env().to_string();
    let revisions = blocking(move || c.revisions()).await?;
    Ok(Json(RevisionList {
        env,
        current,
        revisions,
    }))
}

/// One revision with its YAML (below the admin role, the secrets in its URLs as `***`).
#[utoipa::path(get, path = "/api/v1/config/revisions/{n}", tag = "config",
    params(("n" = u64, Path, description = "Revision number")),
    responses((status = 200, body = RevisionView), (status = 404, body = ErrorBody)))]
pub(super) async fn get_revision(
    State(state): State<Arc<AdminState>>,
    Extension(caller): Extension<Caller>,
    Path(n): Path<String>,
) -> Result<Json<RevisionView>, ApiError> {
    let n = revision_number(&n)?;
    let c = controller(&state)?;
    let mut view = blocking(move || c.revision(n)).await?;
    view.yaml = view.yaml.map(|yaml| shown_to(&caller, yaml));
    Ok(Json(view))
}

fn revision_number(text: &str) -> Result<u64, ApiError> {
    text.parse().map_err(|_| {
        ApiError::bad_request(format!("`{text}` is not a revision number (1, 2, 3, ...)"))
    })
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct DiffQuery {
    /// The older revision.
    from: Option<String>,
    /// The newer revision.
    to: Option<String>,
}

/// Unified diff between two revisions (below the admin role, the secrets in its URLs as `***`).
#[utoipa::path(get, path = "/api/v1/config/diff", tag = "config",
    params(DiffQuery),
    responses((status = 200, body = DiffView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn diff(
    State(state): State<Arc<AdminState>>,
    Extension(caller): Extension<Caller>,
    Query(query): Query<DiffQuery>,
) -> Result<Json<DiffView>, ApiError> {
    let (Some(from), Some(to)) = (&query.from, &query.to) else {
        return Err(ApiError::bad_request(
            "give both revisions: /api/v1/config/diff?from=A&to=B",
        ));
    };
    let (from, to) = (revision_number(from)?, revision_number(to)?);
    let c = controller(&state)?;
    let diff = shown_to(&caller, blocking(move || c.diff(from, to)).await?);
    Ok(Json(DiffView { from, to, diff }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct DryRunQuery {
    /// Validate and show the diff; apply nothing.
    #[serde(default)]
    dry_run: bool,
}

/// Apply revision `n`'s text again as a new revision (`dry_run`: only validate and diff).
#[utoipa::path(post, path = "/api/v1/config/revert/{n}", tag = "config",
    params(("n" = u64, Path, description = "The revision to go back to"), DryRunQuery),
    responses((status = 200, body = ApplyOutcome), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(super) async fn revert(
    State(state): State<Arc<AdminState>>,
    Extension(caller): Extension<Caller>,
    Path(n): Path<String>,
    Query(query): Query<DryRunQuery>,
) -> Result<Json<ApplyOutcome>, ApiError> {
    let n = revision_number(&n)?;
    let c = controller(&state)?;
    Ok(Json(
        blocking(move || c.revert(n, &caller.name, query.dry_run, now_ms())).await?,
    ))
}
