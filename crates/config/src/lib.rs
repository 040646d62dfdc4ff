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

mod aliases;
mod depth;
mod dns;
mod error;
mod geoip;
mod locate;
pub mod model;
pub mod raw;
mod redact;
mod registry;
pub mod snapshot;
pub mod tls;
mod validate;

use std::path::Path;

pub use dns::{DnsLookup, dns_lookups, resolve_dns};
pub use error::{ConfigError, ConfigErrors};
pub use geoip::CountryDb;
pub use model::*;
pub use redact::{redact_url, redact_urls_in};
pub use registry::{RegistryInstance, registry_services, resolve_registry};

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
    if let Some((line, column)) = depth::too_deep(text) {
        return Err(ConfigErrors {
            errors: vec![ConfigError {
                file: file.to_string(),
                line: Some(line),
                column: Some(column),
                key: String::new(),
                message: format!(
                    "the document nests more than {} levels deep here; a configuration needs a handful",
                    depth::MAX_NESTING
                ),
            }],
        });
    }
    if let Some((line, column)) = aliases::too_much_expansion(text) {
        return Err(ConfigErrors {
            errors: vec![ConfigError {
                file: file.to_string(),
                line: Some(line),
                column: Some(column),
                key: String::new(),
                message: format!(
                    "with this alias, the document's aliases (`*name`) repeat more than {} MiB of what their anchors hold; \
                     a configuration does not need them to repeat that much",
                    aliases::MAX_ALIAS_EXPANSION >> 20
                ),
            }],
        });
    }
    let (raw, mut errors) = match raw_config(text, file) {
        Ok(parsed) => parsed,
        Err(errors) => return Err(ConfigErrors { errors }),
    };
    let mut validator = validate::Validator::new(base_dir);
    let config = validator.config(raw);
    if let Some(cfg) = config
        && errors.is_empty()
    {
        return Ok(cfg);
    }
    let locations = locate::Locations::index(text);
    errors.extend(validator.problems.into_iter().map(|(key, message)| {
        let loc = locations.find(&key);
        ConfigError {
            file: file.to_string(),
            line: loc.map(|l| l.0),
            column: loc.map(|l| l.1),
            key,
            message,
        }
    }));
    Err(ConfigErrors { errors })
}

/// Unknown keys and wrong types reported in one go before giving up on a file.
const MAX_KEY_ERRORS: usize = 64;

/// Deserializes the raw model. serde stops at the first unknown key or wrong type; so that one
/// does not hide the rest, the offending key is taken out of the document and deserialization
/// runs again, until it succeeds or a problem cannot be taken out (a syntax error, a missing
/// key, a bad list item). `Ok` carries the model and the unknown keys left out of it: the rest
/// of the file is still validated. Any other problem is `Err` with every one found: a model
/// missing a mistyped value would only yield errors that follow from its absence.
fn raw_config(
    text: &str,
    file: &str,
) -> Result<(raw::RawConfig, Vec<ConfigError>), Vec<ConfigError>> {
    let deserialize = |text: &str| {
        serde_path_to_error::deserialize::<_, raw::RawConfig>(
            serde_yaml_ng::Deserializer::from_str(text),
        )
    };
    let mut failure = match deserialize(text) {
        Ok(raw) => return Ok((raw, Vec::new())),
        Err(e) => e,
    };
    let mut errors = vec![serde_error(file, &failure)];
    let Ok(mut doc) = serde_yaml_ng::from_str::<serde_yaml_ng::Value>(text) else {
        return Err(errors);
    };
    let locations = locate::Locations::index(text);
    let mut removed = vec![errors[0].key.clone()];
    while errors.len() < MAX_KEY_ERRORS && remove(&mut doc, failure.path()) {
        // Written back to text rather than deserialized from the value tree: a plain scalar
        // such as `8080` then reaches a string field exactly as it did from the file.
        let Ok(rest) = serde_yaml_ng::to_string(&doc) else {
            break;
        };
        failure = match deserialize(&rest) {
            Ok(raw)
                if errors
                    .iter()
                    .all(|e| e.message.starts_with("unknown field")) =>
            {
                return Ok((raw, errors));
            }
            Ok(_) => break,
            Err(e) => e,
        };
        let mut error = serde_error(file, &failure);
        if let Some(missing) = error
            .message
            .strip_prefix("missing field `")
            .and_then(|m| m.split('`').next())
        {
            // Missing because an earlier error took it out, or because it is misspelt (the
            // unknown key next to it already says "did you mean"): nothing new to report.
            let hint = format!("did you mean `{missing}`?");
            let misspelt = errors.iter().any(|e| {
                e.message.ends_with(&hint)
                    && e.key.rsplit_once('.').map_or("", |(parent, _)| parent) == error.key
            });
            if misspelt || removed.contains(&locate::join_key(&error.key, missing)) {
                break;
            }
        }
        // The location serde saw is in the rewritten text; the original's is wanted.
        let loc = locations.find(&error.key);
        error.line = loc.map(|l| l.0);
        error.column = loc.map(|l| l.1);
        removed.push(error.key.clone());
        errors.push(error);
    }
    Err(errors)
}

/// Takes the mapping entry at `path` out of `doc`; false if `path` does not end in one.
fn remove(doc: &mut serde_yaml_ng::Value, path: &serde_path_to_error::Path) -> bool {
    use serde_path_to_error::Segment;
    let segments: Vec<&Segment> = path.iter().collect();
    let Some((Segment::Map { key }, parents)) = segments.split_last() else {
        return false;
    };
    let mut node = doc;
    for segment in parents {
        let next = match segment {
            Segment::Map { key } => node.get_mut(key.as_str()),
            Segment::Seq { index } => node.get_mut(*index),
            Segment::Enum { .. } | Segment::Unknown => None,
        };
        match next {
            Some(n) => node = n,
            None => return false,
        }
    }
    node.as_mapping_mut()
        .is_some_and(|m| m.shift_remove(key.as_str()).is_some())
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
