//! `/api/v1`: releases, configuration revisions and the audit log, as JSON. Each handler is
//! described for the OpenAPI document by its `#[utoipa::path]`, and [`router`] registers
//! handlers and document together, so a route cannot exist without its description.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bytes::Bytes;
use graylane_config::Role;
use graylane_controller::experiment::ExperimentResults;
use graylane_controller::series::SeriesView;
use graylane_controller::view::{
    AnalysisView, AuditView, EventAttribution, ReleaseView, RevisionView,
};
use graylane_controller::{Action, Actor, ApplyOutcome, ControlError, Controller};
use graylane_store::AuditFilter;
use http::{HeaderValue, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::{Deserialize, Serialize};
use utoipa::openapi::RefOr;
use utoipa::{IntoParams, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AdminState;
use super::auth::Caller;
use super::error::{ApiError, ErrorBody};
use crate::commands::eval::{EvalAnswer, EvalRequest, evaluate};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "graylane admin API",
        description = "Releases, configuration revisions and the audit log of one graylane environment. \
            Every path needs `Authorization: Bearer <token>`: role viewer for GET, operator for release \
            commands, admin for configuration changes."
    ),
    components(schemas(ErrorBody)),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        openapi.security = Some(vec![utoipa::openapi::security::SecurityRequirement::new(
            "bearer",
            Vec::<String>::new(),
        )]);
    }
}

/// The API's routes (relative to the admin listener's root) and their OpenAPI document.
pub fn router() -> (axum::Router<Arc<AdminState>>, utoipa::openapi::OpenApi) {
    let (router, mut doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(list_releases))
        .routes(routes!(get_release))
        .routes(routes!(promote))
        .routes(routes!(pause))
        .routes(routes!(resume))
        .routes(routes!(abort))
        .routes(routes!(retry))
        .routes(routes!(rollback))
        .routes(routes!(set_weight))
        .routes(routes!(get_analysis))
        .routes(routes!(get_series))
        .routes(routes!(whoami))
        .routes(routes!(cluster))
        .routes(routes!(eval))
        .routes(routes!(post_events))
        .routes(routes!(experiment_results))
        .routes(routes!(edit_segment))
        .routes(routes!(get_config, put_config))
        .routes(routes!(list_revisions))
        .routes(routes!(get_revision))
        .routes(routes!(diff))
        .routes(routes!(revert))
        .routes(routes!(audit))
        .split_for_parts();
    describe_responses(&mut doc);
    add_open_endpoints(&mut doc);
    (router, doc)
}

/// Gives every response without a description one: the operation's summary for a success,
/// what the status means in this API for an error (the error body says the rest).
fn describe_responses(doc: &mut utoipa::openapi::OpenApi) {
    for item in doc.paths.paths.values_mut() {
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ];
        for op in operations.into_iter().flatten() {
            let summary = op.summary.clone().unwrap_or_default();
            for (status, response) in &mut op.responses.responses {
                if let RefOr::T(r) = response
                    && r.description.trim().is_empty()
                {
                    r.description = match status.as_str() {
                        "400" => "The request is not valid; `error` says what is wrong".to_string(),
                        "401" => "No token, or one that is not configured".to_string(),
                        "403" => {
                            "The token's role is too low; `required_role` names the one needed"
                                .to_string()
                        }
                        "404" => "Not found; `error` names what exists".to_string(),
                        "409" => {
                            "Not allowed now; `allowed` lists the commands that are".to_string()
                        }
                        "422" => {
                            "The configuration is invalid; `errors` lists every problem".to_string()
                        }
                        _ => summary.trim_end_matches('.').to_string(),
                    };
                }
            }
        }
    }
}

/// `/metrics`, `/healthz` and `/readyz`: served by the admin listener without a token, so
/// documented here with no security requirement.
fn add_open_endpoints(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::path::{HttpMethod, OperationBuilder, PathItem};
    use utoipa::openapi::security::SecurityRequirement;
    use utoipa::openapi::{ContentBuilder, ObjectBuilder, ResponseBuilder, Type};
    let text = |content_type: &str, description: &str| {
        ResponseBuilder::new()
            .description(description)
            .content(
                content_type,
                ContentBuilder::new()
                    .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
                    .build(),
            )
            .build()
    };
    let plain = "text/plain; charset=utf-8";
    let open = |summary: &str, responses: Vec<(&str, utoipa::openapi::Response)>| {
        let mut op = OperationBuilder::new()
            .tag("probes")
            .summary(Some(summary))
            .security(SecurityRequirement::default());
        for (status, response) in responses {
            op = op.response(status, response);
        }
        PathItem::new(HttpMethod::Get, op.build())
    };
    let paths = &mut doc.paths.paths;
    paths.insert(
        "/metrics".to_string(),
        open(
            "Prometheus metrics of the proxy, the releases and the webhooks (no token)",
            vec![(
                "200",
                text(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    "The metrics in the OpenMetrics text format",
                ),
            )],
        ),
    );
    paths.insert(
        "/healthz".to_string(),
        open(
            "Liveness: the process is up (no token)",
            vec![("200", text(plain, "`ok`"))],
        ),
    );
    paths.insert(
        "/readyz".to_string(),
        open(
            "Readiness: the gateway accepts traffic (no token)",
            vec![
                ("200", text(plain, "`ready`")),
                (
                    "503",
                    text(plain, "`draining`: shutting down, send traffic elsewhere"),
                ),
            ],
        ),
    );
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

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

// ----- releases -----

#[derive(Serialize, ToSchema)]
struct ReleaseList {
    env: String,
    releases: Vec<ReleaseView>,
}

/// Every release of this environment.
#[utoipa::path(get, path = "/api/v1/releases", tag = "releases",
    responses((status = 200, body = ReleaseList), (status = 401, body = ErrorBody)))]
async fn list_releases(
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
async fn get_release(
    State(state): State<Arc<AdminState>>,
    Path(service): Path<String>,
) -> Result<Json<ReleaseView>, ApiError> {
    Ok(Json(controller(&state)?.release(&service, now_ms())?))
}

/// The optional body of a release command.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CommandBody {
    /// Why, for the audit log.
    #[serde(default)]
    reason: Option<String>,
    /// `promote`: straight to 100%.
    #[serde(default)]
    full: Option<bool>,
    /// `promote` of an experiment: the winning variant.
    #[serde(default)]
    variant: Option<String>,
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
        async fn $name(
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

/// `{"weight": 12.5, "reason": "..."}`.
#[derive(Debug, Deserialize, ToSchema)]
struct WeightBody {
    /// Percent, 0–100, at most three decimals.
    weight: serde_json::Value,
    #[serde(default)]
    reason: Option<String>,
}

/// Override the candidate's weight until the next step.
#[utoipa::path(post, path = "/api/v1/releases/{service}/weight", tag = "releases",
    params(("service" = String, Path, description = "The service whose release to change")),
    request_body(content = WeightBody, content_type = "application/json"),
    responses(
        (status = 200, body = ReleaseView),
        (status = 400, description = "Weight missing, not a number, or out of range", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
async fn set_weight(
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

// ----- analysis, events, experiments -----

/// The release's analysis: its checks and latest judgements, each check with its verdict and
/// figures (n, rates, effect, interval, statistic).
#[utoipa::path(get, path = "/api/v1/releases/{service}/analysis", tag = "analysis",
    params(("service" = String, Path, description = "The service whose analysis to show")),
    responses((status = 200, body = AnalysisView), (status = 404, body = ErrorBody)))]
async fn get_analysis(
    State(state): State<Arc<AdminState>>,
    Path(service): Path<String>,
) -> Result<Json<AnalysisView>, ApiError> {
    Ok(Json(controller(&state)?.analysis(&service)?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct SeriesQuery {
    /// Only points after this time (Unix ms), for polling.
    since_ms: Option<i64>,
}

/// Per-version points, one a second for the last 15 minutes: requests/s, error rate, p50 and
/// p99 latency.
#[utoipa::path(get, path = "/api/v1/releases/{service}/series", tag = "analysis",
    params(("service" = String, Path, description = "The service whose series to show"), SeriesQuery),
    responses((status = 200, body = SeriesView), (status = 404, body = ErrorBody)))]
async fn get_series(
    State(state): State<Arc<AdminState>>,
    Path(service): Path<String>,
    Query(query): Query<SeriesQuery>,
) -> Result<Json<SeriesView>, ApiError> {
    Ok(Json(
        controller(&state)?.series(&service, query.since_ms.unwrap_or(0))?,
    ))
}

/// The fleet as this node sees it.
#[derive(Serialize, ToSchema)]
struct Cluster {
    /// `fleet` (on etcd) or `single` (one node with its own store: no members, no leader).
    mode: &'static str,
    /// This node's name (`--node`).
    node: Option<String>,
    /// The node that advances releases and runs the analyses.
    leader: Option<String>,
    /// The newest configuration revision in the store, as far as this node has heard.
    latest_revision: Option<u64>,
    /// Whether this node hears from etcd. `false`: it serves its last configuration and state,
    /// which may be stale.
    store_reachable: bool,
    members: Vec<ClusterMember>,
}

#[derive(Serialize, ToSchema)]
struct ClusterMember {
    name: String,
    /// Its admin listener.
    admin: Option<String>,
    /// The configuration revision it serves.
    config_revision: u64,
    /// Whether it takes traffic (`/readyz`).
    ready: bool,
    /// When it last reported (RFC 3339).
    last_seen: String,
    /// It serves an older revision than the newest.
    lagging: bool,
    /// It has not reported for longer than three heartbeats (it may be cut off from etcd).
    stale: bool,
}

/// The fleet: its leader and members, each with the revision it serves and when it was last
/// seen. A member behind the newest revision is `lagging`; one silent for three heartbeats is
/// `stale`; this node says whether it still hears from etcd.
#[utoipa::path(get, path = "/api/v1/cluster", tag = "cluster",
    responses((status = 200, body = Cluster), (status = 401, body = ErrorBody)))]
async fn cluster(State(state): State<Arc<AdminState>>) -> Json<Cluster> {
    let Some(fleet) = &state.fleet else {
        return Json(Cluster {
            mode: "single",
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
        mode: "fleet",
        node: Some(view.node),
        leader: view.leader,
        latest_revision: Some(view.latest_revision),
        store_reachable: view.store_reachable,
        members,
    })
}

#[derive(Serialize, ToSchema)]
struct Whoami {
    /// The token's name, recorded as the actor of what it does.
    name: String,
    /// `viewer`, `operator` or `admin`.
    role: &'static str,
}

/// Who the presented token is, and its role (what the dashboard shows).
#[utoipa::path(get, path = "/api/v1/whoami", tag = "auth",
    responses((status = 200, body = Whoami), (status = 401, body = ErrorBody)))]
async fn whoami(Extension(caller): Extension<Caller>) -> Json<Whoami> {
    Json(Whoami {
        name: caller.name,
        role: caller.role.as_str(),
    })
}

/// Which service and version a request would get from this gateway now, and why: its live
/// routing (the release's current step, `set-weight` overrides, Redis segment members), where
/// `graylane eval --config` sees only the file.
#[utoipa::path(post, path = "/api/v1/eval", tag = "eval",
    request_body(content = EvalRequest, description = "The imaginary request"),
    responses(
        (status = 200, description = "The decision; `service` is null when no service matches", body = EvalAnswer),
        (status = 400, description = "The body is not a valid request", body = ErrorBody),
        (status = 401, description = "No token, or an unknown one", body = ErrorBody)))]
async fn eval(
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

/// One business event, or a list of them.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct EventBody {
    /// The service whose release the event counts for...
    #[serde(default)]
    service: Option<String>,
    /// ...or the experiment (the service name of an experiment release).
    #[serde(default)]
    experiment: Option<String>,
    /// The user's bucketing key (the value of the release's `bucket_by`).
    key: String,
    /// The event's name, as the checks' `event` says.
    event: String,
    /// A value (an order's amount, say) for `event_mean`; 1 when absent.
    #[serde(default)]
    value: Option<f64>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
enum EventBatch {
    One(EventBody),
    Many(Vec<EventBody>),
}

#[derive(Serialize, ToSchema)]
struct EventsRecorded {
    /// Where each event was counted, in the order posted.
    recorded: Vec<EventAttribution>,
}

/// Business events, attributed to the version (or variant) the user is bucketed into, for the
/// `event_rate` and `event_mean` checks and experiment results. A batch with a malformed event
/// or an unknown service records nothing.
#[utoipa::path(post, path = "/api/v1/events", tag = "analysis",
    request_body(content = EventBody, content_type = "application/json",
        description = "One event, or a JSON array of them"),
    responses((status = 200, body = EventsRecorded), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn post_events(
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
async fn experiment_results(
    State(state): State<Arc<AdminState>>,
    Path(service): Path<String>,
) -> Result<Json<ExperimentResults>, ApiError> {
    let c = controller(&state)?;
    Ok(Json(
        blocking(move || c.experiment_results(&service)).await?,
    ))
}

/// Members to add to and remove from a Redis segment.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct SegmentEdit {
    #[serde(default)]
    add: Vec<String>,
    #[serde(default)]
    remove: Vec<String>,
}

#[derive(Serialize, ToSchema)]
struct SegmentEdited {
    segment: String,
    /// Members that were not in the set before.
    added: u64,
    /// Members that were in the set.
    removed: u64,
}

/// Adds and removes members of a `source: redis` segment (the gray users): every gateway
/// sharing the Redis set sees the change at its next refresh, this one at once.
#[utoipa::path(post, path = "/api/v1/segments/{name}/members", tag = "segments",
    params(("name" = String, Path, description = "The segment")),
    request_body(content = SegmentEdit, content_type = "application/json"),
    responses((status = 200, body = SegmentEdited), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn edit_segment(
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

// ----- configuration -----

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
async fn get_config(
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
struct ChangeQuery {
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
async fn put_config(
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

#[derive(Serialize, ToSchema)]
struct RevisionList {
    env: String,
    /// The revision in effect.
    current: u64,
    /// Newest first.
    revisions: Vec<RevisionView>,
}

/// Every applied configuration, newest first.
#[utoipa::path(get, path = "/api/v1/config/revisions", tag = "config",
    responses((status = 200, body = RevisionList)))]
async fn list_revisions(
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
async fn get_revision(
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
struct DiffQuery {
    /// The older revision.
    from: Option<String>,
    /// The newer revision.
    to: Option<String>,
}

#[derive(Serialize, ToSchema)]
struct DiffView {
    from: u64,
    to: u64,
    /// Unified diff of the YAML texts.
    diff: String,
}

/// Unified diff between two revisions (below the admin role, the secrets in its URLs as `***`).
#[utoipa::path(get, path = "/api/v1/config/diff", tag = "config",
    params(DiffQuery),
    responses((status = 200, body = DiffView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn diff(
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
struct DryRunQuery {
    /// Validate and show the diff; apply nothing.
    #[serde(default)]
    dry_run: bool,
}

/// Apply revision `n`'s text again as a new revision (`dry_run`: only validate and diff).
#[utoipa::path(post, path = "/api/v1/config/revert/{n}", tag = "config",
    params(("n" = u64, Path, description = "The revision to go back to"), DryRunQuery),
    responses((status = 200, body = ApplyOutcome), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn revert(
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

// ----- audit -----

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct AuditQuery {
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

#[derive(Serialize, ToSchema)]
struct AuditList {
    env: String,
    /// Newest first.
    entries: Vec<AuditView>,
}

/// Every release transition and configuration change, newest first; `service`, `actor` and
/// `action` keep only the entries that match, searching back through the whole log.
#[utoipa::path(get, path = "/api/v1/audit", tag = "audit",
    params(AuditQuery),
    responses((status = 200, body = AuditList), (status = 400, body = ErrorBody)))]
async fn audit(
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

/// The answer to a path under `/api/v1` that does not exist.
pub async fn method_not_allowed(method: http::Method, uri: http::Uri) -> ApiError {
    ApiError::method_not_allowed(format!(
        "{method} is not served on {}: the `Allow` header lists the methods that are, and \
         /api/v1/openapi.json what each does",
        uri.path()
    ))
}

pub async fn not_found(uri: http::Uri) -> ApiError {
    ApiError::not_found(format!(
        "no such API path: {}; the paths are listed in /api/v1/openapi.json",
        uri.path()
    ))
}
