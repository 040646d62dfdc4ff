//! How an exchange with an upstream failed, as the request path classifies it: for the status
//! the client gets (`502` or `504`), the failure rules of retries and breakers, and the metrics.

use http::StatusCode;

/// Why a request did not get an upstream response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamErrorKind {
    /// The endpoint refused the connection.
    ConnectRefused,
    /// Connecting took longer than the service's `connect_timeout`.
    ConnectTimeout,
    /// Connecting failed otherwise.
    ConnectError,
    /// The TLS handshake with an `https://` endpoint failed (its certificate was not trusted,
    /// say), or the version's TLS settings could not be used.
    Tls,
    /// The upstream did not answer within the request's (or the try's) time.
    Timeout,
    /// The exchange broke: a malformed or cut-off response, a reset connection.
    Protocol,
}

impl UpstreamErrorKind {
    /// Every kind, in the order the metrics count them.
    pub(crate) const ALL: [UpstreamErrorKind; 6] = [
        UpstreamErrorKind::ConnectRefused,
        UpstreamErrorKind::ConnectTimeout,
        UpstreamErrorKind::ConnectError,
        UpstreamErrorKind::Tls,
        UpstreamErrorKind::Timeout,
        UpstreamErrorKind::Protocol,
    ];

    /// The kind as the `kind` label of `graylane_upstream_errors` and error bodies spell it.
    pub(crate) fn label(self) -> &'static str {
        match self {
            UpstreamErrorKind::ConnectRefused => "connect_refused",
            UpstreamErrorKind::ConnectTimeout => "connect_timeout",
            UpstreamErrorKind::ConnectError => "connect_error",
            UpstreamErrorKind::Tls => "tls",
            UpstreamErrorKind::Timeout => "timeout",
            UpstreamErrorKind::Protocol => "protocol",
        }
    }

    /// The status a client gets for it: `504` when the upstream ran out of time, `502` when it
    /// failed otherwise.
    pub(crate) fn status(self) -> StatusCode {
        match self {
            UpstreamErrorKind::ConnectTimeout | UpstreamErrorKind::Timeout => {
                StatusCode::GATEWAY_TIMEOUT
            }
            _ => StatusCode::BAD_GATEWAY,
        }
    }
}
