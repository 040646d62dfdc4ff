//! `POST /api/v1/eval` (and `graylane eval`): which service and version an imaginary request
//! would get, and why.

use std::net::{IpAddr, Ipv4Addr};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// One imaginary request: what `eval` takes on its command line and `POST /api/v1/eval` in its
/// body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EvalRequest {
    /// HTTP method, e.g. `GET`.
    pub method: String,
    /// Path with optional query, e.g. `/api/payment/orders?x=1`.
    pub target: String,
    /// Request headers, each `Name: value`.
    #[serde(default)]
    pub headers: Vec<String>,
    /// The client's IP address (client_ip rules, and the fallback bucketing key); 127.0.0.1
    /// when absent.
    #[serde(default = "loopback")]
    #[schema(value_type = String, example = "203.0.113.7")]
    pub ip: IpAddr,
    /// Treat the client as a trusted hop, so its `x-graylane-lane` header and `trusted_only`
    /// keys and rules are honoured.
    #[serde(default)]
    pub trusted: bool,
}

fn loopback() -> IpAddr {
    IpAddr::V4(Ipv4Addr::LOCALHOST)
}

/// Which service and version the request gets, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EvalAnswer {
    /// `null` when no service matches.
    pub service: Option<String>,
    /// The version the request gets; `null` when no service matches.
    pub version: Option<String>,
    /// `no_route`, `no_release`, `lane`, `forced`, `sticky`, `bucket` or `fallback_key`.
    pub reason: String,
    /// The decision in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub explanation: Option<String>,
    /// For `forced`: the index of the matching `release.force` rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<usize>,
    /// For a bucket or sticky decision: the request's bucket (0–99,999)...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket: Option<u32>,
    /// ...the candidate's weight it was compared with...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_percent: Option<f64>,
    /// ...and where it came from: `configured`, `fallback_ip`, `random` or `sticky_cookie`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The sticky cookie the gateway would set (`name=value`), to replay with
    /// `-H "Cookie: ..."`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_cookie: Option<String>,
    /// The country the `geoip:` database gives for the client address, as `country` rules see
    /// it; absent without a database or when it has no answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
}
