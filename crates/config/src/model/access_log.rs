//! `access_log:`: one line per request, written off the request path.

use std::path::PathBuf;

/// `access_log:`: where each request's line goes, in which format, and what share of requests
/// is logged.
#[derive(Debug, Clone, PartialEq)]
pub struct AccessLog {
    /// `format`: JSON lines or nginx's combined format.
    pub format: AccessLogFormat,
    /// `path`: standard output or a file (appended to, created if missing).
    pub path: AccessLogPath,
    /// `sample`: the share of requests logged, in (0, 1]; 1 logs every request.
    pub sample: f64,
}

/// How an access log line is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLogFormat {
    /// One JSON object per line, with stable field names.
    Json,
    /// nginx's `combined` format, graylane's fields appended as `key=value`.
    Combined,
}

impl AccessLogFormat {
    /// Parses `json` or `combined`.
    pub fn parse(s: &str) -> Option<AccessLogFormat> {
        match s {
            "json" => Some(AccessLogFormat::Json),
            "combined" => Some(AccessLogFormat::Combined),
            _ => None,
        }
    }
}

/// Where access log lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogPath {
    /// The process's standard output.
    Stdout,
    /// A file, appended to; reopened on SIGUSR1 (after logrotate renamed it).
    File(PathBuf),
}

impl AccessLogPath {
    /// `stdout`, or a file path resolved against `base_dir` when relative.
    pub fn parse(s: &str, base_dir: &std::path::Path) -> AccessLogPath {
        if s == "stdout" || s == "-" {
            AccessLogPath::Stdout
        } else {
            AccessLogPath::File(base_dir.join(s))
        }
    }
}

impl std::fmt::Display for AccessLogPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AccessLogPath::Stdout => f.write_str("stdout"),
            AccessLogPath::File(p) => write!(f, "{}", p.display()),
        }
    }
}
