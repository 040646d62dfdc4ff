//! How a version's upstreams are spoken to: the scheme of its endpoints (one for all), its
//! `tls:` with the certificate files read and checked here, and a service's `grpc:` codes.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use super::Validator;
use crate::error::did_you_mean;
use crate::model::*;
use crate::raw::*;

/// The next [`UpstreamTls::id`]; 0 is no TLS.
static NEXT_TLS_ID: AtomicU64 = AtomicU64::new(1);

/// The scheme an endpoint names and the rest of it; `Ok(None)` for a bare `host:port`, `Err`
/// with the scheme when graylane does not know it.
pub(super) fn split_scheme(endpoint: &str) -> Result<(Option<UpstreamProtocol>, &str), &str> {
    let Some((scheme, rest)) = endpoint.split_once("://") else {
        return Ok((None, endpoint));
    };
    let protocol = match scheme.to_ascii_lowercase().as_str() {
        "http" => UpstreamProtocol::Http1,
        "h2c" => UpstreamProtocol::H2c,
        "https" => UpstreamProtocol::Https,
        _ => return Err(scheme),
    };
    Ok((Some(protocol), rest))
}

/// The host of a `host:port` (without brackets).
fn host_of(hostport: &str) -> &str {
    let hostport = hostport.trim_end_matches('/');
    if let Some(rest) = hostport.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    hostport.rsplit_once(':').map_or(hostport, |(host, _)| host)
}

impl Validator<'_> {
    /// The one protocol of a version's `endpoints` (written `host:port` or `scheme://host:port`)
    /// and each endpoint without its scheme, with its index (one with an unknown scheme is
    /// left out); a second scheme is an error naming the endpoint.
    pub(super) fn endpoint_schemes<'e>(
        &mut self,
        vpath: &str,
        version: &str,
        endpoints: &'e [String],
    ) -> (UpstreamProtocol, Vec<(usize, &'e str)>) {
        let mut first: Option<(UpstreamProtocol, usize)> = None;
        let mut rest = Vec::with_capacity(endpoints.len());
        for (i, endpoint) in endpoints.iter().enumerate() {
            let path = format!("{vpath}.endpoints[{i}]");
            let (protocol, hostport) = match split_scheme(endpoint) {
                Ok((p, hostport)) => (p.unwrap_or_default(), hostport),
                Err(scheme) => {
                    self.fail(
                        path,
                        format!(
                            "`{endpoint}`: unknown scheme `{scheme}://`; use `http://` (the default), `h2c://` or `https://`"
                        ),
                    );
                    continue;
                }
            };
            rest.push((i, hostport));
            match first {
                None => first = Some((protocol, i)),
                Some((p, at)) if p != protocol => self.fail(
                    path,
                    format!(
                        "`{endpoint}` is {}:// but endpoints[{at}] is {}://: all endpoints of version `{version}` must use one scheme",
                        protocol.scheme(),
                        p.scheme()
                    ),
                ),
                Some(_) => {}
            }
        }
        (first.map(|(p, _)| p).unwrap_or_default(), rest)
    }

    /// A version's `tls:`, its files read: required with `https://` endpoints, refused with the
    /// others. `hosts` are the endpoints as written, without scheme.
    pub(super) fn upstream_tls(
        &mut self,
        vpath: &str,
        raw: Option<&RawUpstreamTls>,
        protocol: UpstreamProtocol,
        hosts: &[(usize, &str)],
    ) -> Option<UpstreamTls> {
        let path = format!("{vpath}.tls");
        if protocol != UpstreamProtocol::Https {
            if raw.is_some() {
                self.fail(
                    path,
                    format!(
                        "`tls` applies to `https://` endpoints; this version's are {}://",
                        protocol.scheme()
                    ),
                );
            }
            return None;
        }
        let default = RawUpstreamTls::default();
        let raw = raw.unwrap_or(&default);
        let Some(ca) = &raw.ca else {
            self.fail(
                format!("{path}.ca"),
                "`https://` endpoints need `tls.ca`, a PEM file of the certificates their chain leads to (graylane carries no built-in root certificates)",
            );
            return None;
        };
        let ca_file = self.base_dir.join(ca);
        let roots = self.pem_certificates(&format!("{path}.ca"), ca);
        let server_name = match &raw.server_name {
            Some(name) => {
                if ServerName::try_from(name.as_str()).is_err() {
                    self.fail(
                        format!("{path}.server_name"),
                        format!("`{name}` is not a DNS name or an IP address"),
                    );
                }
                Some(name.clone())
            }
            None => self.default_server_name(&path, hosts),
        };
        let client = match (&raw.client_cert, &raw.client_key) {
            (None, None) => None,
            (Some(cert), Some(key)) => {
                let chain = self.pem_certificates(&format!("{path}.client_cert"), cert);
                let key = self.pem_key(&format!("{path}.client_key"), key);
                Some(ClientIdentity {
                    chain: chain?,
                    key: std::sync::Arc::new(key?),
                })
            }
            (Some(_), None) | (None, Some(_)) => {
                self.unpaired_client_identity(&path, raw.client_cert.is_some());
                None
            }
        };
        Some(UpstreamTls {
            id: NEXT_TLS_ID.fetch_add(1, Ordering::Relaxed),
            ca_file,
            roots: roots?,
            server_name,
            client,
        })
    }

    /// The endpoints' host when they were all written with the same name; `None` when they
    /// are IP addresses (each is verified as its own address).
    fn default_server_name(&mut self, path: &str, hosts: &[(usize, &str)]) -> Option<String> {
        let mut names = hosts
            .iter()
            .map(|(_, h)| host_of(h))
            .filter(|h| h.parse::<IpAddr>().is_err());
        let first = names.next()?;
        if names.any(|other| !other.eq_ignore_ascii_case(first)) {
            self.fail(
                format!("{path}.server_name"),
                "the endpoints name different hosts: say which name their certificates carry with `server_name`",
            );
        }
        Some(first.to_ascii_lowercase())
    }

    /// Reports a `tls:` table (at `path`) with a client certificate and no key, or a key and no
    /// certificate.
    pub(super) fn unpaired_client_identity(&mut self, path: &str, has_cert: bool) {
        if has_cert {
            self.fail(
                format!("{path}.client_key"),
                "`client_cert` needs its private key in `client_key`",
            );
        } else {
            self.fail(
                format!("{path}.client_cert"),
                "`client_key` needs its certificate in `client_cert`",
            );
        }
    }

    /// The bytes of `file` (relative to the configuration's directory); an unreadable file is an
    /// error at `path`.
    pub(super) fn read_pem(&mut self, path: &str, file: &str) -> Option<Vec<u8>> {
        let full = self.base_dir.join(file);
        match std::fs::read(&full) {
            Ok(bytes) => Some(bytes),
            Err(e) => {
                self.fail(path, format!("cannot read `{}`: {e}", full.display()));
                None
            }
        }
    }

    fn pem_certificates(&mut self, path: &str, file: &str) -> Option<Vec<CertificateDer<'static>>> {
        let bytes = self.read_pem(path, file)?;
        self.certificates_in(path, file, &bytes)
    }

    /// The certificates of `bytes`, read from `file`: at least one, else an error at `path`.
    pub(super) fn certificates_in(
        &mut self,
        path: &str,
        file: &str,
        bytes: &[u8],
    ) -> Option<Vec<CertificateDer<'static>>> {
        match CertificateDer::pem_slice_iter(bytes).collect::<Result<Vec<_>, _>>() {
            Ok(certs) if !certs.is_empty() => Some(certs),
            Ok(_) => {
                self.fail(
                    path,
                    format!("`{file}` holds no PEM certificate (`-----BEGIN CERTIFICATE-----`)"),
                );
                None
            }
            Err(e) => {
                self.fail(path, format!("`{file}` is not valid PEM: {e}"));
                None
            }
        }
    }

    fn pem_key(&mut self, path: &str, file: &str) -> Option<PrivateKeyDer<'static>> {
        let bytes = self.read_pem(path, file)?;
        self.key_in(path, file, &bytes)
    }

    /// The private key of `bytes`, read from `file`; none is an error at `path`.
    pub(super) fn key_in(
        &mut self,
        path: &str,
        file: &str,
        bytes: &[u8],
    ) -> Option<PrivateKeyDer<'static>> {
        match PrivateKeyDer::from_pem_slice(bytes) {
            Ok(key) => Some(key),
            Err(pem::Error::NoItemsFound) => {
                self.fail(
                    path,
                    format!("`{file}` holds no PEM private key (PKCS#8, PKCS#1 or SEC1)"),
                );
                None
            }
            Err(e) => {
                self.fail(path, format!("`{file}` is not valid PEM: {e}"));
                None
            }
        }
    }

    /// A service's `grpc.error_codes`, by name or number.
    pub(super) fn grpc_error_codes(&mut self, path: &str, raw: Option<&RawGrpc>) -> GrpcErrorCodes {
        let Some(codes) = raw.and_then(|g| g.error_codes.as_ref()) else {
            return GrpcErrorCodes::default();
        };
        let mut out = Vec::with_capacity(codes.len());
        for (i, code) in codes.iter().enumerate() {
            let at = format!("{path}.grpc.error_codes[{i}]");
            match code {
                RawGrpcCode::Number(n) if *n < GRPC_CODE_NAMES.len() as u64 => out.push(*n as u8),
                RawGrpcCode::Number(n) => {
                    self.fail(at, format!("{n} is not a gRPC status code (0 to 16)"))
                }
                RawGrpcCode::Name(name) => {
                    let upper = name.to_ascii_uppercase();
                    match GRPC_CODE_NAMES.iter().position(|n| *n == upper) {
                        Some(n) => out.push(n as u8),
                        None => {
                            let hint = did_you_mean(&upper, GRPC_CODE_NAMES.iter().copied())
                                .map(|s| format!("; did you mean `{s}`?"))
                                .unwrap_or_default();
                            self.fail(at, format!("unknown gRPC status code `{name}`{hint}"));
                        }
                    }
                }
            }
        }
        GrpcErrorCodes::of(&out)
    }
}
