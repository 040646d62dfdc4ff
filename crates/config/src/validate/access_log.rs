//! `access_log:`: its format, path and sample share. The file itself is opened when the
//! gateway starts (an unwritable path is a start-up error naming it), not here: validating a
//! configuration writes nothing.

use super::Validator;
use crate::model::*;
use crate::raw::*;

impl Validator<'_> {
    pub(super) fn access_log(&mut self, raw: &RawAccessLog) -> Option<AccessLog> {
        let format = match raw.format.as_deref() {
            None => Some(AccessLogFormat::Json),
            Some(s) => {
                let format = AccessLogFormat::parse(s);
                if format.is_none() {
                    self.fail(
                        "access_log.format",
                        format!("`{s}` is not a format: use `json` or `combined`"),
                    );
                }
                format
            }
        };
        let path = match raw.path.as_deref() {
            None => Some(AccessLogPath::Stdout),
            Some(s) if s.trim().is_empty() => {
                self.fail(
                    "access_log.path",
                    "needs `stdout` or a file path, e.g. /var/log/graylane/access.log",
                );
                None
            }
            Some(s) => Some(AccessLogPath::parse(s, self.base_dir)),
        };
        let sample = raw.sample.unwrap_or(1.0);
        let sample_ok = sample > 0.0 && sample <= 1.0;
        if !sample_ok {
            self.fail(
                "access_log.sample",
                format!(
                    "{sample} is not a share of requests: use a number above 0 and at most 1 (1 logs every request)"
                ),
            );
        }
        Some(AccessLog {
            format: format?,
            path: path?,
            sample: sample_ok.then_some(sample)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::model::{AccessLogFormat, AccessLogPath};

    fn load(access_log: &str) -> Result<crate::Config, String> {
        let yaml = format!(
            "listeners: [{{ bind: 127.0.0.1:8080 }}]\n{}access_log: {access_log}\n",
            super::super::SERVICE
        );
        crate::load_str(&yaml, "t.yaml", std::path::Path::new("/etc/graylane"))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn an_access_log_defaults_to_json_lines_on_stdout_for_every_request() {
        let log = load("{}").unwrap().access_log.unwrap();
        assert_eq!(log.format, AccessLogFormat::Json);
        assert_eq!(log.path, AccessLogPath::Stdout);
        assert_eq!(log.sample, 1.0);
    }

    #[test]
    fn a_relative_access_log_path_is_found_from_the_configuration_folder() {
        let log = load("{ format: combined, path: logs/access.log, sample: 0.25 }")
            .unwrap()
            .access_log
            .unwrap();
        assert_eq!(log.format, AccessLogFormat::Combined);
        assert_eq!(
            log.path,
            AccessLogPath::File("/etc/graylane/logs/access.log".into())
        );
        assert_eq!(log.sample, 0.25);
    }

    #[test]
    fn bad_access_log_settings_are_errors_naming_their_key() {
        let err = load("{ format: apache, sample: 0 }").unwrap_err();
        assert!(
            err.contains("t.yaml:5:15: access_log.format: `apache` is not a format"),
            "{err}"
        );
        assert!(err.contains("access_log.sample: 0 is not a share"), "{err}");
        let err = load("{ sample: 1.5 }").unwrap_err();
        assert!(err.contains("access_log.sample: 1.5"), "{err}");
        let err = load("{ pth: x.log }").unwrap_err();
        assert!(err.contains("access_log.pth: unknown field"), "{err}");
    }
}
