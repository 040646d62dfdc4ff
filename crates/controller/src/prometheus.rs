//! Prometheus as a metrics source for `query` checks: one instant query per check and
//! interval, through the HTTP API (`GET /api/v1/query`). A query must come back as one number
//! (a scalar, or a vector of exactly one series); anything else — no answer, an error, no
//! series, several series, NaN — is a reason for the check to be inconclusive, never a pass.

use std::time::Duration;

use serde::Deserialize;

/// Where `query` checks get their numbers; a trait so the analysis does not care how.
pub trait QuerySource: Send + Sync {
    /// The value of the instant query `promql` now: one finite number, or why there is none.
    fn query(&self, promql: &str) -> Result<f64, QueryError>;
}

/// Why a query gave no number; the check it belongs to is inconclusive.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum QueryError {
    /// No answer: connection refused, timed out, or the body could not be read.
    #[error("Prometheus at {url} did not answer: {detail}")]
    Unreachable {
        /// The server's address, credentials masked.
        url: String,
        /// The transport's error.
        detail: String,
    },
    /// Prometheus answered with an error (a bad PromQL expression, a query timeout, ...).
    #[error("Prometheus refused the query ({status}): {detail}")]
    Refused {
        /// The HTTP status of the answer.
        status: u16,
        /// Prometheus's error message, or the start of the body.
        detail: String,
    },
    /// The query matched no series.
    #[error("the query returned no series")]
    NoSeries,
    /// The query gave this many series rather than one.
    #[error("the query returned {0} series; aggregate it to one (e.g. with sum(...))")]
    SeveralSeries(usize),
    /// The value is NaN, infinite or not a number at all.
    #[error("the query's value is not a number: {0}")]
    NotANumber(String),
    /// The answer is not Prometheus's query API JSON, or not a scalar or vector.
    #[error("unexpected answer from Prometheus: {0}")]
    Malformed(String),
}

/// A Prometheus server's HTTP API.
pub struct Prometheus {
    base: String,
    agent: ureq::Agent,
}

impl Prometheus {
    /// The server at `url` (e.g. `http://prometheus:9090`); each query may take up to
    /// `timeout` in all.
    pub fn new(url: &http::Uri, timeout: Duration) -> Prometheus {
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .build();
        Prometheus {
            base: url.to_string().trim_end_matches('/').to_string(),
            agent: config.into(),
        }
    }
}

#[derive(Deserialize)]
struct Answer {
    status: String,
    #[serde(default)]
    data: Option<Data>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
#[serde(tag = "resultType", content = "result", rename_all = "lowercase")]
enum Data {
    Scalar((f64, String)),
    Vector(Vec<Series>),
    /// A range query's answer, or a string: neither is one number.
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct Series {
    value: (f64, String),
}

impl QuerySource for Prometheus {
    fn query(&self, promql: &str) -> Result<f64, QueryError> {
        let url = format!("{}/api/v1/query", self.base);
        let mut resp = self
            .agent
            .get(&url)
            .query("query", promql)
            .call()
            .map_err(|e| QueryError::Unreachable {
                url: graylane_config::redact_url(&self.base),
                detail: e.to_string(),
            })?;
        let status = resp.status().as_u16();
        let body = resp
            .body_mut()
            .read_to_string()
            .map_err(|e| QueryError::Unreachable {
                url: graylane_config::redact_url(&self.base),
                detail: e.to_string(),
            })?;
        let answer: Answer = serde_json::from_str(&body)
            .map_err(|e| QueryError::Malformed(format!("{e}: {}", first_chars(&body))))?;
        if answer.status != "success" {
            return Err(QueryError::Refused {
                status,
                detail: answer.error.unwrap_or_else(|| first_chars(&body)),
            });
        }
        let text = match answer.data {
            Some(Data::Scalar((_, v))) => v,
            Some(Data::Vector(series)) => match series.as_slice() {
                [] => return Err(QueryError::NoSeries),
                [one] => one.value.1.clone(),
                many => return Err(QueryError::SeveralSeries(many.len())),
            },
            Some(Data::Other) | None => {
                return Err(QueryError::Malformed(
                    "an instant query must give a scalar or a vector".to_string(),
                ));
            }
        };
        match text.parse::<f64>() {
            Ok(v) if v.is_finite() => Ok(v),
            _ => Err(QueryError::NotANumber(text)),
        }
    }
}

fn first_chars(text: &str) -> String {
    text.chars().take(200).collect()
}

/// The query with `{{service}}`, `{{baseline}}` and `{{candidate}}` filled in.
pub fn render(query: &str, service: &str, baseline: &str, candidate: &str) -> String {
    query
        .replace("{{service}}", service)
        .replace("{{baseline}}", baseline)
        .replace("{{candidate}}", candidate)
}
