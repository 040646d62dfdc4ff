//! `telemetry:`: the OTLP collector's URL and protocol, the sampled share, the headers sent
//! with every export, and the `tls:` of an `https://` collector (its PEM files read and checked
//! here, as a version's `tls:` is). Nothing is connected to here: a collector that is down at
//! start, or shows a certificate that does not verify, is the exporter's business (it counts
//! failed exports), not a configuration error.

use std::collections::BTreeMap;

use super::Validator;
use crate::model::*;
use crate::raw::*;
use crate::redact_url;

impl Validator<'_> {
    pub(super) fn telemetry(&mut self, raw: &RawTelemetry) -> Telemetry {
        Telemetry {
            otlp: raw.otlp.as_ref().and_then(|o| self.otlp(o)),
        }
    }

    fn otlp(&mut self, raw: &RawOtlp) -> Option<Otlp> {
        let protocol = match raw.protocol.as_deref() {
            None => Some(OtlpProtocol::HttpProtobuf),
            Some(s) => {
                let protocol = OtlpProtocol::parse(s);
                if protocol.is_none() {
                    self.fail(
                        "telemetry.otlp.protocol",
                        format!("`{s}` is not an OTLP protocol: use `http/protobuf` or `grpc`"),
                    );
                }
                protocol
            }
        };
        let endpoint = self.otlp_endpoint(&raw.endpoint, protocol);
        let tls = match &endpoint {
            Some(uri) => self.otlp_tls(uri, raw.tls.as_ref()),
            None => Some(None),
        };
        let sample = raw.sample.unwrap_or(1.0);
        let sample_ok = (0.0..=1.0).contains(&sample);
        if !sample_ok {
            self.fail(
                "telemetry.otlp.sample",
                format!(
                    "{sample} is not a share of traces: use a number from 0 to 1 (1 exports every trace, 0 only those a caller sampled{})",
                    if raw.always_on_error == Some(true) {
                        " and failed requests"
                    } else {
                        ""
                    }
                ),
            );
        }
        let mut headers = BTreeMap::new();
        for (name, value) in &raw.headers {
            let key = format!("telemetry.otlp.headers.{name}");
            let parsed = http::HeaderName::from_bytes(name.as_bytes());
            let Ok(parsed) = parsed else {
                self.fail(
                    key,
                    format!("`{name}` is not a header name: use letters, digits and `-`"),
                );
                continue;
            };
            let source = match value {
                RawHeaderValue::Text(text) => {
                    if http::HeaderValue::from_str(text).is_err() {
                        // The value is likely a secret: it is not repeated.
                        self.fail(
                            key,
                            "the value is not a valid header value: use visible ASCII characters, no line breaks",
                        );
                        continue;
                    }
                    HeaderSource::Text(text.clone())
                }
                RawHeaderValue::Env { env } => {
                    let valid = !env.is_empty()
                        && env.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
                    if !valid {
                        self.fail(
                            format!("{key}.env"),
                            format!("`{env}` is not an environment variable name: use letters, digits and `_`"),
                        );
                        continue;
                    }
                    HeaderSource::Env(env.clone())
                }
            };
            headers.insert(parsed.as_str().to_string(), source);
        }
        let service_name = match raw.service_name.as_deref() {
            None => Some(Otlp::DEFAULT_SERVICE_NAME.to_string()),
            Some(s) if s.trim().is_empty() => {
                self.fail(
                    "telemetry.otlp.service_name",
                    "must not be empty: it names graylane in the trace backend (default `graylane`)",
                );
                None
            }
            Some(s) => Some(s.to_string()),
        };
        Some(Otlp {
            endpoint: endpoint?,
            tls: tls?,
            protocol: protocol?,
            sample: sample_ok.then_some(sample)?,
            always_on_error: raw.always_on_error.unwrap_or(false),
            headers,
            service_name: service_name?,
        })
    }

    fn otlp_endpoint(&mut self, s: &str, protocol: Option<OtlpProtocol>) -> Option<http::Uri> {
        let key = "telemetry.otlp.endpoint";
        let example = match protocol {
            Some(OtlpProtocol::Grpc) => "http://127.0.0.1:4317",
            _ => "http://127.0.0.1:4318",
        };
        match s.parse::<http::Uri>() {
            Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some() => {
                let has_path = !matches!(u.path(), "" | "/");
                if protocol == Some(OtlpProtocol::Grpc) && has_path {
                    self.fail(
                        key,
                        format!(
                            "`{}`: a grpc collector is named by its address alone, e.g. {example}",
                            redact_url(s)
                        ),
                    );
                    return None;
                }
                Some(u)
            }
            _ => {
                self.fail(
                    key,
                    format!("`{}` is not an http(s) URL like {example}", redact_url(s)),
                );
                None
            }
        }
    }

    /// The TLS of the collector at `endpoint`: `Some(None)` for `http://` (where `tls:` is an
    /// error), the defaults or `raw` read for `https://`; `None` when a file is bad.
    fn otlp_tls(
        &mut self,
        endpoint: &http::Uri,
        raw: Option<&RawUpstreamTls>,
    ) -> Option<Option<OtlpTls>> {
        let path = "telemetry.otlp.tls";
        if endpoint.scheme_str() != Some("https") {
            if raw.is_some() {
                self.fail(
                    path,
                    "`tls` applies to an `https://` endpoint; this one is http://, so nothing would be verified",
                );
                return None;
            }
            return Some(None);
        }
        let Some(raw) = raw else {
            return Some(Some(OtlpTls::default()));
        };
        let mut ok = true;
        let ca_pem = match &raw.ca {
            None => None,
            Some(ca) => {
                let key = format!("{path}.ca");
                let bytes = self.read_pem(&key, ca);
                let certs = bytes
                    .as_ref()
                    .and_then(|b| self.certificates_in(&key, ca, b));
                ok &= certs.is_some();
                bytes
            }
        };
        if let Some(name) = &raw.server_name
            && rustls_pki_types::ServerName::try_from(name.as_str()).is_err()
        {
            self.fail(
                format!("{path}.server_name"),
                format!("`{name}` is not a DNS name or an IP address"),
            );
            ok = false;
        }
        let client = match (&raw.client_cert, &raw.client_key) {
            (None, None) => None,
            (Some(cert), Some(key)) => {
                let (cert_key, key_key) =
                    (format!("{path}.client_cert"), format!("{path}.client_key"));
                let cert_pem = self.read_pem(&cert_key, cert);
                let chain = cert_pem
                    .as_ref()
                    .and_then(|b| self.certificates_in(&cert_key, cert, b));
                let key_pem = self.read_pem(&key_key, key);
                let private = key_pem.as_ref().and_then(|b| self.key_in(&key_key, key, b));
                ok &= chain.is_some() && private.is_some();
                if chain.is_some() && private.is_some() {
                    // A key of another certificate would only fail at the first handshake.
                    let loaded = crate::tls::load_certificate(
                        &self.base_dir.join(cert),
                        &self.base_dir.join(key),
                    );
                    if let Err(e) = loaded {
                        let at = match e.file {
                            crate::tls::PemFile::Cert => &cert_key,
                            crate::tls::PemFile::Key => &key_key,
                        };
                        self.fail(at.as_str(), e.message);
                        ok = false;
                    }
                }
                cert_pem
                    .zip(key_pem)
                    .map(|(cert_pem, key_pem)| OtlpClientPem { cert_pem, key_pem })
            }
            (Some(_), None) | (None, Some(_)) => {
                self.unpaired_client_identity(path, raw.client_cert.is_some());
                None
            }
        };
        ok &= raw.client_cert.is_some() == raw.client_key.is_some();
        ok.then_some(Some(OtlpTls {
            ca_pem,
            server_name: raw.server_name.clone(),
            client,
        }))
    }
}

#[cfg(test)]
mod tests {
    use crate::model::{HeaderSource, OtlpProtocol};

    fn load(telemetry: &str) -> Result<crate::Config, String> {
        let yaml = format!(
            "listeners: [{{ bind: 127.0.0.1:8080 }}]\n{}telemetry: {telemetry}\n",
            super::super::SERVICE
        );
        crate::load_str(&yaml, "t.yaml", std::path::Path::new("/etc/graylane"))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn an_otlp_collector_defaults_to_http_protobuf_and_every_trace() {
        let otlp = load("{ otlp: { endpoint: 'http://127.0.0.1:4318' } }")
            .unwrap()
            .telemetry
            .unwrap()
            .otlp
            .unwrap();
        assert_eq!(otlp.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(otlp.sample, 1.0);
        assert!(!otlp.always_on_error);
        assert_eq!(otlp.service_name, "graylane");
        assert!(otlp.headers.is_empty());
    }

    #[test]
    fn grpc_sample_headers_and_service_name_are_read() {
        let otlp = load(
            "{ otlp: { endpoint: 'http://collector:4317', protocol: grpc, sample: 0, always_on_error: true, headers: { X-Api-Key: s3cret, X-Token: { env: OTLP_TOKEN } }, service_name: edge } }",
        )
        .unwrap()
        .telemetry
        .unwrap()
        .otlp
        .unwrap();
        assert_eq!(otlp.protocol, OtlpProtocol::Grpc);
        assert_eq!(otlp.sample, 0.0);
        assert!(otlp.always_on_error);
        assert_eq!(
            otlp.headers["x-api-key"],
            HeaderSource::Text("s3cret".into())
        );
        assert_eq!(
            otlp.headers["x-token"],
            HeaderSource::Env("OTLP_TOKEN".into())
        );
        assert_eq!(otlp.service_name, "edge");
    }

    #[test]
    fn bad_otlp_settings_are_errors_naming_their_line_and_key() {
        let err = load(
            "{ otlp: { endpoint: 'ftp://x', protocol: thrift, sample: 1.5, headers: { 'bad name': v } } }",
        )
        .unwrap_err();
        assert!(
            err.contains("t.yaml:5:")
                && err.contains("telemetry.otlp.endpoint: `ftp://x` is not an http(s) URL"),
            "{err}"
        );
        assert!(
            err.contains("telemetry.otlp.protocol: `thrift` is not an OTLP protocol"),
            "{err}"
        );
        assert!(
            err.contains("telemetry.otlp.sample: 1.5 is not a share"),
            "{err}"
        );
        assert!(
            err.contains("telemetry.otlp.headers.bad name: `bad name` is not a header name"),
            "{err}"
        );
        let err = load("{ otlp: { endpoint: 'http://c:4318', headers: { x-key: \"a\\nb\" } } }")
            .unwrap_err();
        assert!(
            err.contains("telemetry.otlp.headers.x-key: the value is not a valid header value"),
            "{err}"
        );
        let err =
            load("{ otlp: { endpoint: 'http://c:4318', headers: { x-key: { env: 'A B' } } } }")
                .unwrap_err();
        assert!(
            err.contains(
                "telemetry.otlp.headers.x-key.env: `A B` is not an environment variable name"
            ),
            "{err}"
        );
        let err = load("{ otlp: { endpoint: 'http://c:4317/v1', protocol: grpc } }").unwrap_err();
        assert!(
            err.contains("a grpc collector is named by its address"),
            "{err}"
        );
        let err = load("{ otlp: { endpont: 'http://c:4318' } }").unwrap_err();
        assert!(
            err.contains("telemetry.otlp.endpont: unknown field"),
            "{err}"
        );
    }

    #[test]
    fn an_https_collector_is_verified_against_mozillas_roots_unless_a_ca_is_given() {
        let otlp = load("{ otlp: { endpoint: 'https://otlp.example.com', protocol: grpc } }")
            .unwrap()
            .telemetry
            .unwrap()
            .otlp
            .unwrap();
        assert_eq!(otlp.tls, Some(crate::model::OtlpTls::default()));
        let plain = load("{ otlp: { endpoint: 'http://c:4318' } }")
            .unwrap()
            .telemetry
            .unwrap()
            .otlp
            .unwrap();
        assert_eq!(plain.tls, None);
    }

    #[test]
    fn bad_otlp_tls_settings_are_errors_naming_their_line_and_key() {
        let err = load(
            "{ otlp: { endpoint: 'https://c:4318', tls: { ca: /nonexistent/ca.pem, client_key: /nonexistent/c.key } } }",
        )
        .unwrap_err();
        assert!(
            err.contains("t.yaml:5:")
                && err.contains("telemetry.otlp.tls.ca: cannot read `/nonexistent/ca.pem`"),
            "{err}"
        );
        assert!(
            err.contains(
                "telemetry.otlp.tls.client_cert: `client_key` needs its certificate in `client_cert`"
            ),
            "{err}"
        );
        let err = load("{ otlp: { endpoint: 'http://c:4318', tls: { ca: /nonexistent/ca.pem } } }")
            .unwrap_err();
        assert!(
            err.contains("telemetry.otlp.tls: `tls` applies to an `https://` endpoint"),
            "{err}"
        );
        assert!(!err.contains("cannot read"), "{err}");
        let err = load("{ otlp: { endpoint: 'https://c:4318', tls: { server_name: 'a b' } } }")
            .unwrap_err();
        assert!(
            err.contains("telemetry.otlp.tls.server_name: `a b` is not a DNS name"),
            "{err}"
        );
    }
}
