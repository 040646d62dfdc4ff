use std::fmt;

/// A setting a constructor refused. `field` names the setting (`rate`, `burst`, `window`, …) so
/// the caller can point at its own configuration path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ConfigError {
    field: &'static str,
    reason: String,
}

impl ConfigError {
    pub(crate) fn new(field: &'static str, reason: impl fmt::Display) -> Self {
        ConfigError {
            field,
            reason: reason.to_string(),
        }
    }

    /// The setting that was refused, e.g. `"rate"` or `"failure_rate_threshold"`.
    pub fn field(&self) -> &'static str {
        self.field
    }
}

/// Checks a rate threshold is a fraction in (0, 1] (NaN fails too).
pub(crate) fn fraction(field: &'static str, value: f64) -> Result<f64, ConfigError> {
    if value > 0.0 && value <= 1.0 {
        Ok(value)
    } else {
        Err(ConfigError::new(
            field,
            format!("{value} must be a fraction in (0, 1], e.g. 0.5 for 50%"),
        ))
    }
}
