//! How graylane talks to a version's upstreams: the protocol its endpoints' scheme names, the
//! TLS settings of `https://` endpoints (certificates read and checked at load), and which
//! gRPC status codes count as a service's errors.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The protocol of a version's endpoints, from their scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UpstreamProtocol {
    /// `http://host:port` or a bare `host:port`: HTTP/1.1 over TCP.
    #[default]
    Http1,
    /// `h2c://host:port`: HTTP/2 over TCP, with prior knowledge.
    H2c,
    /// `https://host:port`: TLS, HTTP/2 or HTTP/1.1 as the upstream picks by ALPN.
    Https,
}

impl UpstreamProtocol {
    /// The scheme as written in an endpoint.
    pub fn scheme(self) -> &'static str {
        match self {
            UpstreamProtocol::Http1 => "http",
            UpstreamProtocol::H2c => "h2c",
            UpstreamProtocol::Https => "https",
        }
    }
}

/// A version's `tls:`, its files read and checked.
#[derive(Debug, Clone)]
pub struct UpstreamTls {
    /// Unique in the process to this loading of these settings (a clone keeps it): the data
    /// plane keeps connections made with them across routing changes, and never lets another
    /// version's settings use them.
    pub id: u64,
    /// The `ca` file, as resolved against the configuration's directory.
    pub ca_file: PathBuf,
    /// The certificates of `ca`: the roots an upstream's chain must lead to.
    pub roots: Vec<CertificateDer<'static>>,
    /// The name the certificate must carry: `server_name`, else the endpoints' host when they
    /// were written with a name; `None`: each endpoint's IP address.
    pub server_name: Option<String>,
    /// `client_cert` and `client_key`: what graylane presents when the upstream asks.
    pub client: Option<ClientIdentity>,
}

/// A certificate chain and its private key, presented to upstreams.
#[derive(Clone)]
pub struct ClientIdentity {
    /// The chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The private key; shared, since a key is not `Clone`.
    pub key: Arc<PrivateKeyDer<'static>>,
}

impl fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("chain", &self.chain.len())
            .field("key", &"[secret]")
            .finish()
    }
}

/// The gRPC status codes (0 to 16) that count as a service's errors, as a bit set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrpcErrorCodes(u32);

/// The gRPC status codes by number, as the gRPC specification names them.
pub const GRPC_CODE_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

impl GrpcErrorCodes {
    /// The codes of `codes` (each below 17).
    pub fn of(codes: &[u8]) -> GrpcErrorCodes {
        GrpcErrorCodes(
            codes
                .iter()
                .filter(|c| usize::from(**c) < GRPC_CODE_NAMES.len())
                .fold(0, |set, c| set | 1 << c),
        )
    }

    /// Whether `code` counts as an error; a code beyond the known ones always does.
    pub fn contains(self, code: u32) -> bool {
        code >= GRPC_CODE_NAMES.len() as u32 || self.0 & (1 << code) != 0
    }
}

impl Default for GrpcErrorCodes {
    /// The server's faults: UNKNOWN, DEADLINE_EXCEEDED, INTERNAL, UNAVAILABLE and DATA_LOSS.
    fn default() -> Self {
        GrpcErrorCodes::of(&[2, 4, 13, 14, 15])
    }
}
