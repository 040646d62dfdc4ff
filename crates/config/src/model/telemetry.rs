//! `telemetry:`: OpenTelemetry trace export, off the request path.

use std::collections::BTreeMap;

/// `telemetry:`: what is exported about requests; today their traces (`otlp:`).
#[derive(Debug, Clone, PartialEq)]
pub struct Telemetry {
    /// `otlp:`: where spans go; `None`: no spans are recorded.
    pub otlp: Option<Otlp>,
}

/// `telemetry.otlp:`: an OTLP collector spans are exported to, and which requests are.
#[derive(Debug, Clone, PartialEq)]
pub struct Otlp {
    /// `endpoint`: the collector's base URL (`http://collector:4318` for `http/protobuf`,
    /// `http://collector:4317` for `grpc`, or `https://`); `http/protobuf` posts to
    /// `<endpoint>/v1/traces`.
    pub endpoint: http::Uri,
    /// How an `https://` endpoint is verified and what graylane presents to it: `Some` exactly
    /// when the endpoint is `https://`.
    pub tls: Option<OtlpTls>,
    /// `protocol`: how spans are sent.
    pub protocol: OtlpProtocol,
    /// `sample`: the share of traces started here that are exported, in [0, 1]; a request with
    /// a `traceparent` follows its sampled flag instead.
    pub sample: f64,
    /// `always_on_error`: a request that ended in an error (a 5xx, an upstream failure, a
    /// fallback) is exported even when it was not sampled.
    pub always_on_error: bool,
    /// `headers`: sent with every export (e.g. an API key), by lower-case name.
    pub headers: BTreeMap<String, HeaderSource>,
    /// `service_name`: the `service.name` resource attribute; default `graylane`.
    pub service_name: String,
}

/// `telemetry.otlp.tls:` of an `https://` collector, its files read and checked at load. The
/// PEM is kept as read: the gRPC client (tonic) takes PEM, the HTTP one is given what it holds.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct OtlpTls {
    /// `ca`: the PEM certificates the collector's chain must lead to; `None`: Mozilla's roots.
    pub ca_pem: Option<Vec<u8>>,
    /// `server_name`: the name the collector's certificate must carry (and the SNI sent);
    /// `None`: the endpoint's host.
    pub server_name: Option<String>,
    /// `client_cert` and `client_key` (PEM): what graylane presents when the collector asks.
    pub client: Option<OtlpClientPem>,
}

/// A client certificate chain and its private key, as PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct OtlpClientPem {
    /// The chain, leaf first.
    pub cert_pem: Vec<u8>,
    /// The private key.
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for OtlpTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtlpTls")
            .field("ca", &self.ca_pem.as_ref().map(|_| "[pem]"))
            .field("server_name", &self.server_name)
            .field("client", &self.client.as_ref().map(|_| "[secret]"))
            .finish()
    }
}

/// Where a `telemetry.otlp.headers` value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderSource {
    /// Written in the file (shown to the admin API's viewers and operators with the file).
    Text(String),
    /// `{ env: NAME }`: the environment variable's value when the exporter starts, so a secret
    /// stays out of the file.
    Env(String),
}

impl HeaderSource {
    /// The value: the text, or the variable's (`None` when it is unset or not a header value).
    pub fn resolve(&self) -> Option<String> {
        let value = match self {
            HeaderSource::Text(t) => t.clone(),
            HeaderSource::Env(name) => std::env::var(name).ok()?,
        };
        http::HeaderValue::from_str(&value).is_ok().then_some(value)
    }
}

/// How spans reach the collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// `http/protobuf`: `POST /v1/traces` with a protobuf body (port 4318 by convention).
    HttpProtobuf,
    /// `grpc`: the OTLP TraceService over gRPC (port 4317 by convention).
    Grpc,
}

impl OtlpProtocol {
    /// Parses `http/protobuf` or `grpc`.
    pub fn parse(s: &str) -> Option<OtlpProtocol> {
        match s {
            "http/protobuf" => Some(OtlpProtocol::HttpProtobuf),
            "grpc" => Some(OtlpProtocol::Grpc),
            _ => None,
        }
    }
}

impl Otlp {
    /// `service_name` when `telemetry.otlp` does not set it.
    pub const DEFAULT_SERVICE_NAME: &'static str = "graylane";
}
