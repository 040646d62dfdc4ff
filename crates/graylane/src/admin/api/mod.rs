//! `/api/v1`: releases, configuration revisions and the audit log, as JSON. Each handler is
//! described for the OpenAPI document by its `#[utoipa::path]`, and [`router`] registers
//! handlers and document together, so a route cannot exist without its description.
//!
//! The documents themselves are the `graylane-api` crate's types; the handlers are here, one
//! file per group of routes: [`releases`] (a release and its commands), [`analysis`]
//! (analysis, series, events, experiment results), [`config`] (the configuration and its
//! revisions), [`audit`], [`cluster`] (the fleet and `whoami`), [`eval`], [`segments`],
//! [`ofrep`] (feature flags and releases over OFREP, under `/ofrep/v1`), [`snapshot`] (the
//! flags and release splits `graylane-sdk` evaluates locally, and OFREP's provider
//! configuration), and the document's frame in [`openapi`].

mod analysis;
mod audit;
mod cluster;
mod config;
mod eval;
mod ofrep;
mod openapi;
mod releases;
mod segments;
mod snapshot;

use std::sync::Arc;

use graylane_controller::{ControlError, Controller};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AdminState;
use super::error::ApiError;

/// The API's routes (relative to the admin listener's root) and their OpenAPI document.
pub(crate) fn router() -> (axum::Router<Arc<AdminState>>, utoipa::openapi::OpenApi) {
    let (router, mut doc) = OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(releases::list_releases))
        .routes(routes!(releases::get_release))
        .routes(routes!(releases::promote))
        .routes(routes!(releases::pause))
        .routes(routes!(releases::resume))
        .routes(routes!(releases::abort))
        .routes(routes!(releases::retry))
        .routes(routes!(releases::rollback))
        .routes(routes!(releases::set_weight))
        .routes(routes!(analysis::get_analysis))
        .routes(routes!(analysis::get_series))
        .routes(routes!(cluster::whoami))
        .routes(routes!(cluster::cluster))
        .routes(routes!(eval::eval))
        .routes(routes!(ofrep::evaluate_flag))
        .routes(routes!(ofrep::evaluate_flags))
        .routes(routes!(snapshot::flag_snapshot))
        .routes(routes!(snapshot::ofrep_configuration))
        .routes(routes!(analysis::post_events))
        .routes(routes!(analysis::experiment_results))
        .routes(routes!(segments::edit_segment))
        .routes(routes!(config::get_config, config::put_config))
        .routes(routes!(config::list_revisions))
        .routes(routes!(config::get_revision))
        .routes(routes!(config::diff))
        .routes(routes!(config::revert))
        .routes(routes!(audit::audit))
        .split_for_parts();
    openapi::describe_responses(&mut doc);
    openapi::add_open_endpoints(&mut doc);
    (router, doc)
}

fn controller(state: &AdminState) -> Result<Arc<Controller>, ApiError> {
    state.controller.clone().ok_or_else(|| {
        ApiError::unavailable(
            "this gateway runs without a controller (the demo); start `graylane serve` for the admin API",
        )
    })
}

/// Runs a controller call off the async threads: it may wait for the store's disk writes.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ControlError> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result.map_err(ApiError::from),
        Err(e) => Err(ApiError::unavailable(format!(
            "the call did not finish: {e}"
        ))),
    }
}

/// The wall clock in Unix milliseconds (0 before 1970, the maximum past 2262).
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The answer to a path under `/api/v1` that does not exist.
pub(crate) async fn method_not_allowed(method: http::Method, uri: http::Uri) -> ApiError {
    ApiError::method_not_allowed(format!(
        "{method} is not served on {}: the `Allow` header lists the methods that are, and \
         /api/v1/openapi.json what each does",
        uri.path()
    ))
}

/// The answer to a path under `/api/v1` that is not an API path at all.
pub(crate) async fn not_found(uri: http::Uri) -> ApiError {
    ApiError::not_found(format!(
        "no such API path: {}; the paths are listed in /api/v1/openapi.json",
        uri.path()
    ))
}
