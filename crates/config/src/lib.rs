//! graylane's configuration, in two layers (the ripgrep LowArgs → HiArgs pattern):
//!
//! * [`raw`] — the YAML file as serde reads it, unknown keys rejected;
//! * [`model`] — the validated configuration, every name resolved and every value parsed.
//!
//! [`load_file`] and [`load_str`] go from text to [`Config`], collecting *every* problem as a
//! [`ConfigError`] that names the file, line, column and key path:
//!
//! ```
//! let yaml = "listeners: [{ bind: 127.0.0.1:8080 }]\n\
//!             services:\n  - name: web\n    versions: { stable: { endpoints: [127.0.0.1:9001] } }\n";
//! let cfg = graylane_config::load_str(yaml, "inline.yaml", std::path::Path::new(".")).unwrap();
//! assert_eq!(cfg.services[0].name, "web");
//!
//! let bad = "listeners: [{ bind: 127.0.0.1:8080 }]\nservices: [{ nmae: web }]\n";
//! let err = graylane_config::load_str(bad, "bad.yaml", std::path::Path::new(".")).unwrap_err();
//! assert!(err.to_string().starts_with("bad.yaml:2:14: services[0].nmae: unknown field `nmae`"));
//! assert!(err.to_string().contains("did you mean `name`?"));
//! ```

mod error;
mod locate;
pub mod model;
pub mod raw;
mod validate;

use std::path::Path;

pub use error::{ConfigError, ConfigErrors};
pub use model::*;

/// Reads and validates the configuration file at `path`. Relative paths inside it (segment
/// files, TLS keys) are resolved against the file's folder.
pub fn load_file(path: &Path) -> Result<Config, ConfigErrors> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
        errors: vec![ConfigError {
            file: shown.clone(),
            line: None,
            column: None,
            key: String::new(),
            message: format!("cannot read the file: {e}"),
        }],
    })?;
    load_str(&text, &shown, &validate::resolve_base_dir(path))
}

/// Validates `text` as if it were the contents of the file at `path` (a configuration about to
/// be written there): errors name `path`, relative paths resolve against its folder.
pub fn load_text_for(text: &str, path: &Path) -> Result<Config, ConfigErrors> {
    load_str(
        text,
        &path.display().to_string(),
        &validate::resolve_base_dir(path),
    )
}

/// Validates configuration `text`; `file` is only used in error messages.
pub fn load_str(text: &str, file: &str, base_dir: &Path) -> Result<Config, ConfigErrors> {
    let deserializer = serde_yaml_ng::Deserializer::from_str(text);
    let raw: raw::RawConfig = match serde_path_to_error::deserialize(deserializer) {
        Ok(raw) => raw,
        Err(e) => {
            return Err(ConfigErrors {
                errors: vec![serde_error(file, &e)],
            });
        }
    };
    let mut validator = validate::Validator::new(base_dir);
    if let Some(cfg) = validator.config(raw) {
        return Ok(cfg);
    }
    let locations = locate::Locations::index(text);
    let errors = validator
        .problems
        .into_iter()
        .map(|(key, message)| {
            let loc = locations.find(&key);
            ConfigError {
                file: file.to_string(),
                line: loc.map(|l| l.0),
                column: loc.map(|l| l.1),
                key,
                message,
            }
        })
        .collect();
    Err(ConfigErrors { errors })
}

fn serde_error(file: &str, e: &serde_path_to_error::Error<serde_yaml_ng::Error>) -> ConfigError {
    // A syntax error has no key yet; serde_path_to_error then ends the path with `?`.
    let key = e.path().to_string();
    let key = key.trim_end_matches('?').trim_end_matches('.');
    let key = if key == "." { "" } else { key }.to_string();
    let inner = e.inner();
    let full = inner.to_string();
    // serde_yaml_ng's message carries its own path prefix and location suffix; we show both
    // in our own format instead.
    let mut message = full.as_str();
    if let Some((prefix, rest)) = message.split_once(": ")
        && !prefix.contains(' ')
    {
        message = rest;
    }
    let message = without_locations(message);
    let loc = inner.location();
    ConfigError {
        file: file.to_string(),
        line: loc.as_ref().map(|l| l.line()),
        column: loc.as_ref().map(|l| l.column()),
        key,
        message: error::with_suggestion(&message),
    }
}

/// Removes every " at line N column M" from a serde_yaml_ng message.
fn without_locations(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(start) = rest.find(" at line ") {
        out.push_str(&rest[..start]);
        let after = &rest[start + " at line ".len()..];
        let digits = |s: &str| s.len() - s.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        let line_len = digits(after);
        let tail = &after[line_len..];
        match tail.strip_prefix(" column ") {
            Some(col) if line_len > 0 => rest = &col[digits(col)..],
            _ => {
                out.push_str(" at line ");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}
