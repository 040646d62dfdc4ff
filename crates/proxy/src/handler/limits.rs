//! The limits phase: a service's rate limits, local or shared through Redis, the `429` of a
//! refused request and the `RateLimit-*` headers of an allowed one.

use graylane_rules::RequestView;
use http::header::{self, HeaderName, HeaderValue};
use http::{Response, StatusCode};

use super::respond::json_response;
use crate::body::ProxyBody;
use crate::guards::{self, LimitAnswer, LimitRoute};
use crate::snapshot::ServiceRoute;

static RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
static RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
static RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");
static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");

/// What the rate limits said of a request: refused (the `429`), or allowed, with the
/// `RateLimit-*` values to send when a limit that applies asks for them on allowed responses.
pub(super) enum LimitVerdict {
    Refused(Box<Response<ProxyBody>>),
    Allowed(Option<LimitHeaders>),
}

/// The `RateLimit-*` values of one limit's answer.
pub(super) struct LimitHeaders {
    limit: u32,
    remaining: u32,
    reset_secs: u64,
    policy: HeaderValue,
}

impl LimitHeaders {
    fn of(limit: &LimitRoute, answer: &LimitAnswer) -> LimitHeaders {
        LimitHeaders {
            limit: limit.burst,
            remaining: answer.remaining.min(limit.burst),
            reset_secs: answer.reset_secs,
            policy: limit.policy.clone(),
        }
    }

    /// Of two limits' values, the one a client has to mind: the fewer requests left.
    fn tighter(current: Option<LimitHeaders>, new: LimitHeaders) -> Option<LimitHeaders> {
        Some(match current {
            Some(c) if c.remaining <= new.remaining => c,
            _ => new,
        })
    }

    fn stamp(&self, headers: &mut http::HeaderMap) {
        headers.insert(RATELIMIT_LIMIT.clone(), HeaderValue::from(self.limit));
        headers.insert(
            RATELIMIT_REMAINING.clone(),
            HeaderValue::from(self.remaining),
        );
        headers.insert(RATELIMIT_RESET.clone(), HeaderValue::from(self.reset_secs));
        headers.insert(RATELIMIT_POLICY.clone(), self.policy.clone());
    }
}

/// Adds the `RateLimit-*` headers to an allowed request's response, when a limit asked for them.
pub(super) fn stamp_limits(
    mut response: Response<ProxyBody>,
    limits: Option<&LimitHeaders>,
) -> Response<ProxyBody> {
    if let Some(limits) = limits {
        limits.stamp(response.headers_mut());
    }
    response
}

/// Checks the service's rate limits that apply to this request (all kept in this process).
pub(super) fn check_rate_limits(
    service: &ServiceRoute,
    view: &RequestView<'_>,
    now: u64,
) -> LimitVerdict {
    let mut headers = None;
    for limit in applicable_limits(service, view.path) {
        let answer = view.with_policy_key(limit.key_for(view.trusted), |key| {
            limit.limiter.check_local(key, now)
        });
        if let Ok(answer) = answer {
            if !answer.allowed {
                return LimitVerdict::Refused(Box::new(too_many_requests(service, limit, &answer)));
            }
            if limit.headers_on_allowed {
                headers = LimitHeaders::tighter(headers, LimitHeaders::of(limit, &answer));
            }
        }
    }
    LimitVerdict::Allowed(headers)
}

/// [`check_rate_limits`] for a service with a limit shared through Redis.
pub(super) async fn check_rate_limits_global(
    service: &ServiceRoute,
    view: &RequestView<'_>,
    now: u64,
) -> LimitVerdict {
    let mut headers = None;
    for limit in applicable_limits(service, view.path) {
        let answer = match view.with_policy_key(limit.key_for(view.trusted), |key| {
            limit
                .limiter
                .check_local(key, now)
                .map_err(|g| (g, KeyBuf::from_slice(key)))
        }) {
            Ok(answer) => answer,
            // The key is copied out of the request view for the wait on Redis.
            Err((global, key)) => guards::check_global(global, key.as_slice()).await,
        };
        if !answer.allowed {
            return LimitVerdict::Refused(Box::new(too_many_requests(service, limit, &answer)));
        }
        if limit.headers_on_allowed {
            headers = LimitHeaders::tighter(headers, LimitHeaders::of(limit, &answer));
        }
    }
    LimitVerdict::Allowed(headers)
}

fn applicable_limits<'a>(
    service: &'a ServiceRoute,
    path: &'a str,
) -> impl Iterator<Item = &'a LimitRoute> {
    service.guards.limits.iter().filter(move |limit| {
        limit
            .path_prefix
            .as_deref()
            .is_none_or(|p| path.starts_with(p))
    })
}

/// The `429` of a refused request: the `RateLimit-*` headers (the same meaning for a local and
/// a Redis limit: the burst, what is left of it, seconds until it is full again, and the
/// policy), `Retry-After` and a JSON body naming the limit.
fn too_many_requests(
    service: &ServiceRoute,
    limit: &LimitRoute,
    answer: &LimitAnswer,
) -> Response<ProxyBody> {
    let mut resp = json_response(
        StatusCode::TOO_MANY_REQUESTS,
        serde_json::json!({
            "error": "rate limit exceeded",
            "service": service.name,
            "limit": &*limit.describe,
            "retry_after_s": answer.retry_after_secs,
        }),
    );
    let headers = resp.headers_mut();
    LimitHeaders::of(limit, answer).stamp(headers);
    if let Some(after) = answer.retry_after_secs {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(after));
    }
    resp
}

/// A rate-limit key copied out of the request: on the stack up to 64 bytes (user ids, IPs), on
/// the heap beyond.
enum KeyBuf {
    Inline([u8; 64], usize),
    Heap(Vec<u8>),
}

impl KeyBuf {
    fn from_slice(key: &[u8]) -> KeyBuf {
        if key.len() <= 64 {
            let mut buf = [0u8; 64];
            buf[..key.len()].copy_from_slice(key);
            KeyBuf::Inline(buf, key.len())
        } else {
            KeyBuf::Heap(key.to_vec())
        }
    }

    fn as_slice(&self) -> &[u8] {
        match self {
            KeyBuf::Inline(buf, len) => &buf[..*len],
            KeyBuf::Heap(v) => v,
        }
    }
}
