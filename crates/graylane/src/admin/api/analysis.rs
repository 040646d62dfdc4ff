//! A release's analysis and live series, business events, and experiment results.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use bytes::Bytes;
use graylane_api::{
    AnalysisView, ErrorBody, EventBatch, EventBody, EventsRecorded, ExperimentResults, SeriesView,
};
use serde::Deserialize;
use utoipa::IntoParams;

use super::{blocking, controller};
use crate::admin::AdminState;
use crate::admin::error::ApiError;

/// The release's analysis: its checks and latest judgements, each check with its verdict and
/// figures (n, rates, effect, interval, statistic).
#[utoipa::path(get, path = "/api/v1/releases/{service}/analysis", tag = "analysis",
    params(("service" = String, Path, description = "The service whose analysis to show")),
    responses((status = 200, body = AnalysisView), (status = 404, body = ErrorBody)))]
pub(super) async fn get_analysis(
    State(state): State<Arc<AdminState>>,
    Path(service): Path<String>,
) -> Result<Json<AnalysisView>, ApiError> {
    Ok(Json(controller(&state)?.analysis(&service)?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct SeriesQuery {
    /// Only points after this time (Unix ms), for polling.
    since_ms: Option<i64>,
}

/// Per-version points, one a second for the last 15 minutes: requests/s, error rate, p50 and
/// p99 latency.
#[utoipa::path(get, path = "/api/v1/releases/{service}/series", tag = "analysis",
    params(("service" = String, Path, description = "The service whose series to show"), SeriesQuery),
    responses((status = 200, body = SeriesView), (status = 404, body = ErrorBody)))]
pub(super) async fn get_series(
    State(state): State<Arc<AdminState>>,
    Path(service): Path<String>,
    Query(query): Query<SeriesQuery>,
) -> Result<Json<SeriesView>, ApiError> {
    Ok(Json(
        controller(&state)?.series(&service, query.since_ms.unwrap_or(0))?,
    ))
}

/// Business events, attributed to the version (or variant) the user is bucketed into, for the
/// `event_rate` and `event_mean` checks and experiment results. A batch with a malformed event
/// or an unknown service records nothing.
#[utoipa::path(post, path = "/api/v1/events", tag = "analysis",
    request_body(content = EventBody, content_type = "application/json",
        description = "One event, or a JSON array of them"),
    responses((status = 200, body = EventsRecorded), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn post_events(
    State(state): State<Arc<AdminState>>,
    body: Bytes,
) -> Result<Json<EventsRecorded>, ApiError> {
    let batch: EventBatch = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!(
            "the body must be an event like {{\"service\": \"payment\", \"key\": \"u-1\", \"event\": \"purchase\", \"value\": 12.5}} or a list of them: {e}"
        ))
    })?;
    let events = match batch {
        EventBatch::One(e) => vec![e],
        EventBatch::Many(list) => list,
    };
    let mut checked = Vec::with_capacity(events.len());
    for (i, e) in events.into_iter().enumerate() {
        let service = match (e.service, e.experiment) {
            (Some(s), None) | (None, Some(s)) => s,
            _ => {
                return Err(ApiError::bad_request(format!(
                    "event {i}: give exactly one of `service` or `experiment`"
                )));
            }
        };
        if e.key.is_empty() || e.event.is_empty() {
            return Err(ApiError::bad_request(format!(
                "event {i}: `key` and `event` must not be empty"
            )));
        }
        checked.push((service, e.key, e.event, e.value));
    }
    let c = controller(&state)?;
    let recorded = blocking(move || {
        // Every service first, so a batch with an unknown one records nothing.
        for (service, ..) in &checked {
            c.check_release(service)?;
        }
        checked
            .iter()
            .map(|(service, key, event, value)| c.post_event(service, key, event, *value))
            .collect::<Result<Vec<_>, _>>()
    })
    .await?;
    Ok(Json(EventsRecorded { recorded }))
}

/// An experiment's results: exposures, error rates, latency and events per variant, each
/// variant against the control, and the sample-ratio-mismatch check.
#[utoipa::path(get, path = "/api/v1/experiments/{service}/results", tag = "analysis",
    params(("service" = String, Path, description = "The service of the experiment release")),
    responses((status = 200, body = ExperimentResults), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn experiment_results(
    State(state): State<Arc<AdminState>>,
    Path(service): Path<String>,
) -> Result<Json<ExperimentResults>, ApiError> {
    let c = controller(&state)?;
    Ok(Json(
        blocking(move || c.experiment_results(&service)).await?,
    ))
}
