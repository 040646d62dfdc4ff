//! `GET /api/v1/flags/snapshot`: the flags and release splits an application evaluates in its
//! own process (`graylane-sdk`), with the gateway's answers; and OFREP's provider
//! configuration, `GET /ofrep/v1/configuration`. Both carry a strong `ETag` and answer `304`
//! to an `If-None-Match` naming it; a viewer token is enough.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use graylane_api::{
    FlagSnapshot, OfrepCacheInvalidation, OfrepCapabilities, OfrepConfiguration,
    OfrepFlagEvaluation, OfrepPolling, ReleaseSplit, SplitShare,
};
use http::HeaderMap;

use super::ofrep::json_with_etag;
use super::{controller, now_ms};
use crate::admin::AdminState;
use crate::admin::error::ApiError;

/// The shortest interval an OFREP provider (or `graylane-sdk`) should poll at: an answer is
/// cheap, but a fleet of applications polling faster than this gains nothing a person notices.
const MIN_POLLING_INTERVAL_MS: u64 = 1_000;

/// The routing part of the configuration in effect (flags, segments with their current
/// members, each service's versions and release routing) and each release's split now (its
/// step, an operator's `set-weight`): what an application needs to give a context the flag
/// value and the version the gateway gives it. No upstream address, token, webhook, analysis
/// query or gate; a `source: redis` segment is sent without members. The `ETag` is a hash of
/// the answer, so it changes exactly when the answer does.
#[utoipa::path(get, path = "/api/v1/flags/snapshot", tag = "flags",
    params(("If-None-Match" = Option<String>, Header, description = "The `ETag` of the last answer")),
    responses(
        (status = 200, description = "The snapshot (with an `ETag` header)", body = FlagSnapshot),
        (status = 304, description = "Nothing changed since the answer whose `ETag` was sent")))]
pub(super) async fn flag_snapshot(
    State(state): State<Arc<AdminState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let control = controller(&state)?;
    let (revision, source) = control.current();
    let views = control.releases(now_ms());
    let snapshot = state.gateway.snapshot();
    let config = graylane_config::snapshot::routing_document(&source, &snapshot.config)
        .map_err(ApiError::unavailable)?;
    let table = &snapshot.table;
    let releases = (0..snapshot.config.services.len())
        .filter_map(|service| {
            let routing = table.routing(service)?;
            let version = |v: usize| table.version_name(service, v).to_string();
            let name = table.service_name(service);
            let view = views.iter().find(|v| v.service == name);
            Some(ReleaseSplit {
                service: name.to_string(),
                state: view.map(|v| v.state.clone()),
                step: view.map(|v| v.step),
                force_to: routing.force_to.map(version),
                shares: routing
                    .shares
                    .iter()
                    .map(|s| SplitShare {
                        version: version(s.version),
                        milli_percent: s.weight.milli_percent(),
                    })
                    .collect(),
                mirror_milli_percent: routing.mirror.milli_percent(),
            })
        })
        .collect();
    let body = FlagSnapshot {
        revision,
        config,
        releases,
    };
    Ok(with_etag(&headers, &body))
}

/// What graylane offers an OFREP provider: polling the bulk evaluation with its `ETag`, no
/// faster than once a second, and every value type.
#[utoipa::path(get, path = "/ofrep/v1/configuration", tag = "ofrep",
    params(("If-None-Match" = Option<String>, Header, description = "The `ETag` of the last answer")),
    responses(
        (status = 200, description = "The provider configuration (with an `ETag` header)", body = OfrepConfiguration),
        (status = 304, description = "Unchanged since the answer whose `ETag` was sent")))]
pub(super) async fn ofrep_configuration(headers: HeaderMap) -> Response {
    let body = OfrepConfiguration {
        name: "graylane".to_string(),
        capabilities: OfrepCapabilities {
            cache_invalidation: OfrepCacheInvalidation {
                polling: OfrepPolling {
                    enabled: true,
                    min_polling_interval_ms: MIN_POLLING_INTERVAL_MS,
                },
            },
            flag_evaluation: OfrepFlagEvaluation {
                supported_types: ["boolean", "string", "int", "float", "object"]
                    .map(String::from)
                    .to_vec(),
            },
        },
    };
    with_etag(&headers, &body)
}

/// `body` as JSON with a strong `ETag` (a hash of the JSON), or `304` when `If-None-Match`
/// names that tag.
fn with_etag(headers: &HeaderMap, body: &impl serde::Serialize) -> Response {
    let body = match serde_json::to_vec(body) {
        Ok(body) => body,
        Err(e) => {
            return ApiError::unavailable(format!("the answer cannot be written: {e}"))
                .into_response();
        }
    };
    json_with_etag(headers, body)
}
