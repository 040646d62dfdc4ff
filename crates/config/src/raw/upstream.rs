//! The keys of how graylane talks to a version's upstreams beyond plain HTTP/1.1: a version's
//! `tls:` (for `https://` endpoints) and a service's `grpc:`.

use serde::Deserialize;

/// A version's `tls:` (and `telemetry.otlp.tls:`): how its `https://` endpoints are verified
/// and what graylane presents.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstreamTls {
    /// `ca`: a PEM file of the certificates the upstream's chain must lead to. Required for
    /// upstreams; an OTLP collector without it is verified against Mozilla's roots.
    pub ca: Option<String>,
    /// `server_name`: the name the upstream's certificate must carry (and the SNI sent);
    /// default the endpoint's host.
    pub server_name: Option<String>,
    /// `client_cert`: a PEM certificate chain graylane presents (mutual TLS); with
    /// `client_key`.
    pub client_cert: Option<String>,
    /// `client_key`: the PEM private key of `client_cert`.
    pub client_key: Option<String>,
}

/// A service's `grpc:`: how its gRPC responses are judged.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGrpc {
    /// `error_codes`: the `grpc-status` codes that count as the version's errors, by name
    /// (`UNAVAILABLE`) or number (`14`); default `[UNKNOWN, DEADLINE_EXCEEDED, INTERNAL,
    /// UNAVAILABLE, DATA_LOSS]`.
    pub error_codes: Option<Vec<RawGrpcCode>>,
}

/// One gRPC status code as written: a name or a number.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawGrpcCode {
    /// `14`
    Number(u64),
    /// `UNAVAILABLE`
    Name(String),
}
