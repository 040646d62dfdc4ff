//! A listener's certificate read from its PEM files: the chain, its private key checked to
//! belong to it, the names it serves (its DNS subject alternative names) and when it expires.
//! Validation reads every pair through [`load_certificate`], so a bad pair is a configuration
//! error; the proxy reads them through it again on every rotation.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

/// A certificate and its key, ready to serve.
#[derive(Debug, Clone)]
pub struct LoadedCertificate {
    /// The chain and the signing key, as rustls serves them.
    pub key: Arc<CertifiedKey>,
    /// The DNS names of its subject alternative names, lowercase, in the certificate's order;
    /// `*.example.com` for a wildcard.
    pub names: Vec<String>,
    /// The end of its validity (`notAfter`), in seconds since the Unix epoch.
    pub not_after: i64,
}

/// Which of the pair's two files is at fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PemFile {
    /// The certificate chain (`cert`).
    Cert,
    /// The private key (`key`).
    Key,
}

impl PemFile {
    /// The configuration key that names this file.
    pub fn key_name(self) -> &'static str {
        match self {
            PemFile::Cert => "cert",
            PemFile::Key => "key",
        }
    }
}

/// Why a certificate and key could not be loaded; the message names the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateError {
    /// The file at fault.
    pub file: PemFile,
    /// What is wrong, naming the file.
    pub message: String,
}

impl fmt::Display for CertificateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CertificateError {}

/// Reads the PEM certificate chain at `cert` (the server's certificate first) and the PEM
/// private key at `key`, and checks that the key is the certificate's.
pub fn load_certificate(cert: &Path, key: &Path) -> Result<LoadedCertificate, CertificateError> {
    let fail = |file: PemFile, message: String| CertificateError { file, message };
    let (cert_shown, key_shown) = (cert.display(), key.display());
    let cert_pem = std::fs::read(cert).map_err(|e| {
        fail(
            PemFile::Cert,
            format!("cannot read certificate {cert_shown}: {e}"),
        )
    })?;
    let key_pem = std::fs::read(key)
        .map_err(|e| fail(PemFile::Key, format!("cannot read key {key_shown}: {e}")))?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(PemFile::Cert, format!("{cert_shown}: not valid PEM: {e}")))?;
    let Some(leaf) = chain.first() else {
        return Err(fail(
            PemFile::Cert,
            format!("{cert_shown}: no certificate found (expected a `BEGIN CERTIFICATE` block)"),
        ));
    };
    let (names, not_after) = describe(leaf).map_err(|e| {
        fail(
            PemFile::Cert,
            format!("{cert_shown}: not a valid X.509 certificate: {e}"),
        )
    })?;
    let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => fail(
            PemFile::Key,
            format!("{key_shown}: no private key found (expected a `BEGIN PRIVATE KEY` block)"),
        ),
        e => fail(PemFile::Key, format!("{key_shown}: not valid PEM: {e}")),
    })?;
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(private)
        .map_err(|e| fail(PemFile::Key, format!("{key_shown}: unusable key: {e}")))?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|_| {
        fail(
            PemFile::Key,
            format!("{key_shown}: this key is not the key of the certificate in {cert_shown}"),
        )
    })?;
    Ok(LoadedCertificate {
        key: Arc::new(certified),
        names,
        not_after,
    })
}

/// The DNS names and the expiry of a DER certificate.
fn describe(der: &CertificateDer<'_>) -> Result<(Vec<String>, i64), String> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
    let mut names = Vec::new();
    if let Some(san) = cert
        .subject_alternative_name()
        .map_err(|e| format!("subject alternative names: {e}"))?
    {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(dns) = name {
                names.push(dns.to_ascii_lowercase());
            }
        }
    }
    Ok((names, cert.validity().not_after.timestamp()))
}

/// Whether a certificate for `pattern` (a DNS name, or `*.` and a name for a wildcard of one
/// label) serves the name a client asked for, ignoring case.
pub fn name_matches(pattern: &str, asked: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(parent) => asked.split_once('.').is_some_and(|(label, rest)| {
            !label.is_empty() && label != "*" && rest.eq_ignore_ascii_case(parent)
        }),
        None => pattern.eq_ignore_ascii_case(asked),
    }
}

#[cfg(test)]
mod tests {
    use super::name_matches;

    #[test]
    fn a_wildcard_covers_exactly_one_label() {
        assert!(name_matches("api.example.com", "API.Example.com"));
        assert!(!name_matches("api.example.com", "www.example.com"));
        assert!(name_matches("*.example.com", "shop.EXAMPLE.com"));
        assert!(!name_matches("*.example.com", "example.com"));
        assert!(!name_matches("*.example.com", "a.b.example.com"));
        assert!(!name_matches("*.example.com", ".example.com"));
    }
}
