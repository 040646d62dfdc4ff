//! Errors that point at the file, line, column and key that are wrong, and say why.

use std::fmt;

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file as the user named it (or `<input>` for text that came from elsewhere).
    pub file: String,
    /// 1-based line of the offending key, when known.
    pub line: Option<usize>,
    /// 1-based column of the offending key, when known (only with `line`).
    pub column: Option<usize>,
    /// The key path, e.g. `services[0].release.steps[1].weight`; empty for the whole document.
    pub key: String,
    /// What is wrong and, where it helps, what to write instead ("did you mean ...").
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every problem found in one configuration; never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors {
    /// The problems in the order they were found; at least one.
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// "did you mean `x`?" for the candidate closest to `wrong`, if one is close enough.
pub(crate) fn did_you_mean<'a>(
    wrong: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(wrong, c), c))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// Appends a suggestion to serde's "unknown field `x`, expected one of `a`, `b`" messages.
pub(crate) fn with_suggestion(message: &str) -> String {
    let Some(wrong) = backticked(message, 0) else {
        return message.to_string();
    };
    if !(message.starts_with("unknown field") || message.starts_with("unknown variant")) {
        return message.to_string();
    }
    let expected: Vec<&str> = (1..)
        .map_while(|i| backticked(message, i))
        .collect::<Vec<_>>();
    match did_you_mean(wrong, expected.iter().copied()) {
        Some(best) => format!("{message}; did you mean `{best}`?"),
        None => message.to_string(),
    }
}

/// The `n`th backtick-quoted word of `s`.
fn backticked(s: &str, n: usize) -> Option<&str> {
    s.split('`').skip(1).step_by(2).nth(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_the_closest_known_key() {
        let m = "unknown field `bukcet_by`, expected one of `strategy`, `bucket_by`, `salt`";
        assert!(with_suggestion(m).ends_with("did you mean `bucket_by`?"));
    }

    #[test]
    fn no_suggestion_when_nothing_is_close() {
        let m = "unknown field `zzz`, expected one of `strategy`, `bucket_by`";
        assert_eq!(with_suggestion(m), m);
    }
}
