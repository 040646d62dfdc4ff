//! `/ofrep/v1`: the OpenFeature Remote Evaluation Protocol, so applications read the
//! configuration's feature flags, and every release as `release.SERVICE`, with any OpenFeature
//! SDK's OFREP provider. Evaluated on the gateway's live routing table (the weights in effect
//! now, as `POST /api/v1/eval` sees them) by `graylane_rules::flags`; a viewer token is enough.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use graylane_api::{OfrepBulk, OfrepBulkItem, OfrepError, OfrepEvaluation, OfrepRequest};
use graylane_rules::RoutingTable;
use graylane_rules::flags::{EvalContext, Evaluation, FlagError, FlagReason, RELEASE_PREFIX};
use http::{HeaderMap, HeaderValue, StatusCode, header};

use super::now_ms;
use crate::admin::AdminState;

/// One flag's value for a context: a configured flag's variant, or for `release.SERVICE` the
/// version a request from that context gets now.
#[utoipa::path(post, path = "/ofrep/v1/evaluate/flags/{key}", tag = "ofrep",
    params(("key" = String, Path, description = "A flag's key, or `release.SERVICE`")),
    request_body(content = OfrepRequest, description = "The evaluation context"),
    responses(
        (status = 200, description = "The flag's value, variant and reason", body = OfrepEvaluation),
        (status = 400, description = "`PARSE_ERROR` (the body is not JSON), `INVALID_CONTEXT` or `TARGETING_KEY_MISSING`", body = OfrepError),
        (status = 401, description = "No token, or an unknown one"),
        (status = 404, description = "`FLAG_NOT_FOUND`", body = OfrepError)))]
pub(super) async fn evaluate_flag(
    State(state): State<Arc<AdminState>>,
    Path(key): Path<String>,
    body: Bytes,
) -> Response {
    let ctx = match context(&body) {
        Ok(ctx) => ctx,
        Err(e) => return failure(StatusCode::BAD_REQUEST, Some(key), e),
    };
    let snapshot = state.gateway.snapshot();
    match evaluate(&snapshot.table, &key, &ctx) {
        Ok(e) => (StatusCode::OK, axum::Json(e)).into_response(),
        Err((status, e)) => (status, axum::Json(e)).into_response(),
    }
}

/// Every flag, then `release.SERVICE` for each service with a release, for one context. The
/// `ETag` is a hash of the answer itself: it changes exactly when the answer for this context
/// does (a flag's value or reason after a configuration change, a release's weight, a `time`
/// rule), so a client that sends it back in `If-None-Match` gets `304` until then. Every node
/// of a fleet running the same build gives the same answer the same tag.
#[utoipa::path(post, path = "/ofrep/v1/evaluate/flags", tag = "ofrep",
    params(("If-None-Match" = Option<String>, Header, description = "The `ETag` of the last answer")),
    request_body(content = OfrepRequest, description = "The evaluation context"),
    responses(
        (status = 200, description = "Every flag's value for the context (with an `ETag` header)", body = OfrepBulk),
        (status = 304, description = "Nothing changed since the answer whose `ETag` was sent"),
        (status = 400, description = "`PARSE_ERROR` or `INVALID_CONTEXT`", body = OfrepError),
        (status = 401, description = "No token, or an unknown one")))]
pub(super) async fn evaluate_flags(
    State(state): State<Arc<AdminState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let ctx = match context(&body) {
        Ok(ctx) => ctx,
        Err(e) => return failure(StatusCode::BAD_REQUEST, None, e),
    };
    let snapshot = state.gateway.snapshot();
    let table = &snapshot.table;
    let flags = table
        .flag_keys()
        .iter()
        .map(|key| match evaluate(table, key, &ctx) {
            Ok(e) => OfrepBulkItem::Evaluated(e),
            Err((_, e)) => OfrepBulkItem::Failed(e),
        })
        .collect();
    let body = match serde_json::to_vec(&OfrepBulk { flags }) {
        Ok(body) => body,
        Err(e) => {
            let e = ("GENERAL", format!("the answer cannot be written: {e}"));
            return failure(StatusCode::INTERNAL_SERVER_ERROR, None, e);
        }
    };
    json_with_etag(&headers, body)
}

/// A JSON body with a strong `ETag` (a hash of the body), or `304` when `If-None-Match` names
/// it: clients that poll re-read only what changed.
pub(super) fn json_with_etag(headers: &HeaderMap, body: Vec<u8>) -> Response {
    let mut hasher = std::hash::DefaultHasher::new();
    body.hash(&mut hasher);
    let etag = format!("\"{:016x}\"", hasher.finish());
    let etag_value = HeaderValue::from_str(&etag).unwrap_or(HeaderValue::from_static("\"\""));
    if matches_etag(headers, &etag) {
        let mut resp = StatusCode::NOT_MODIFIED.into_response();
        resp.headers_mut().insert(header::ETAG, etag_value);
        return resp;
    }
    let mut resp = (StatusCode::OK, body).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::ETAG, etag_value);
    resp
}

/// Whether `If-None-Match` lists `etag` (weak or strong) or is `*`.
fn matches_etag(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim())
        .any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t) == etag)
}

/// The request's context; an empty body or no `context` is an empty one.
fn context(body: &[u8]) -> Result<EvalContext, (&'static str, String)> {
    let request: OfrepRequest = if body.iter().all(u8::is_ascii_whitespace) {
        OfrepRequest::default()
    } else {
        serde_json::from_slice(body).map_err(|e| {
            (
                "PARSE_ERROR",
                format!("the body must be JSON like {{\"context\": {{\"targetingKey\": \"user-1\"}}}}: {e}"),
            )
        })?
    };
    let context = request
        .context
        .unwrap_or_else(|| serde_json::Value::Object(serde_json::Map::new()));
    EvalContext::from_json(&context).map_err(|e| ("INVALID_CONTEXT", e.0))
}

/// `key` for `ctx` as OFREP writes it: its value, or the error and its status.
fn evaluate(
    table: &RoutingTable,
    key: &str,
    ctx: &EvalContext,
) -> Result<OfrepEvaluation, (StatusCode, OfrepError)> {
    let error = |status, code: &str, details| {
        let e = OfrepError {
            key: Some(key.to_string()),
            error_code: code.to_string(),
            error_details: details,
        };
        (status, e)
    };
    match table.evaluate_flag(key, ctx, now_ms()) {
        Ok(e) => Ok(answer(table, key, e)),
        Err(FlagError::NotFound) => Err(error(
            StatusCode::NOT_FOUND,
            "FLAG_NOT_FOUND",
            format!(
                "no flag `{key}`: the configuration's `flags:` has {}, and `release.SERVICE` reads a service's release",
                list(table.flags().keys())
            ),
        )),
        Err(e @ FlagError::TargetingKeyMissing) => Err(error(
            StatusCode::BAD_REQUEST,
            "TARGETING_KEY_MISSING",
            e.to_string(),
        )),
    }
}

fn answer(table: &RoutingTable, key: &str, e: Evaluation<'_>) -> OfrepEvaluation {
    let mut metadata = BTreeMap::new();
    match e.reason {
        FlagReason::TargetingMatch { rule } => {
            metadata.insert("rule".to_string(), rule.into());
        }
        FlagReason::Split { bucket } => {
            metadata.insert("bucket".to_string(), bucket.into());
        }
        FlagReason::Default | FlagReason::Disabled => {}
    }
    if let Some(service) = key.strip_prefix(RELEASE_PREFIX)
        && let Some(index) = table.service_index(service)
    {
        metadata.insert("service".to_string(), service.into());
        metadata.insert(
            "weightPercent".to_string(),
            table.weight(index).percent().into(),
        );
    }
    OfrepEvaluation {
        key: key.to_string(),
        value: e.value.into_owned(),
        reason: e.reason.as_str().to_string(),
        variant: e.variant.to_string(),
        metadata,
    }
}

fn list<'a>(keys: impl Iterator<Item = &'a str>) -> String {
    let keys: Vec<&str> = keys.collect();
    if keys.is_empty() {
        "no flags".to_string()
    } else {
        keys.join(", ")
    }
}

/// An error of the whole request, in OFREP's shape.
fn failure(status: StatusCode, key: Option<String>, (code, details): (&str, String)) -> Response {
    let body = OfrepError {
        key,
        error_code: code.to_string(),
        error_details: details,
    };
    (status, axum::Json(body)).into_response()
}
