//! Structured logs through `tracing`: human-readable text, or one JSON object per line, on
//! stderr. Text is coloured only where a person reads it: on a terminal, unless `NO_COLOR` is
//! set (no-color.org), or when `--log-color always` asks; a file or a pipe (journald, a log
//! shipper) gets plain text.

use std::io::IsTerminal;

use clap::ValueEnum;
use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, ValueEnum, Default)]
pub(crate) enum LogFormat {
    /// Human-readable text.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Whether text log lines carry terminal colour codes.
#[derive(Debug, Clone, Copy, ValueEnum, Default, PartialEq, Eq)]
pub(crate) enum LogColor {
    /// On a terminal, unless `NO_COLOR` is set to anything but an empty string.
    #[default]
    Auto,
    /// Always, even into a file or a pipe.
    Always,
    /// Never.
    Never,
}

impl LogColor {
    /// Whether to colour, for a stream that is (or is not) a terminal and the `NO_COLOR` value.
    fn enabled(self, terminal: bool, no_color: Option<&str>) -> bool {
        match self {
            LogColor::Always => true,
            LogColor::Never => false,
            LogColor::Auto => terminal && no_color.is_none_or(str::is_empty),
        }
    }
}

/// Installs the global subscriber; `RUST_LOG` overrides `level`.
pub(crate) fn init(format: LogFormat, color: LogColor, level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let no_color = std::env::var("NO_COLOR").ok();
    let ansi = color.enabled(std::io::stderr().is_terminal(), no_color.as_deref());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::LogColor;

    #[test]
    fn colour_only_on_a_terminal_without_no_color_unless_asked() {
        assert!(LogColor::Auto.enabled(true, None));
        assert!(LogColor::Auto.enabled(true, Some("")));
        assert!(!LogColor::Auto.enabled(true, Some("1")));
        assert!(!LogColor::Auto.enabled(false, None));
        assert!(LogColor::Always.enabled(false, Some("1")));
        assert!(!LogColor::Never.enabled(true, None));
    }
}
