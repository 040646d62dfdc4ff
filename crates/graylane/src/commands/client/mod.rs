//! The commands that talk to a running gateway's admin API (docs/admin-api.md): `status` and
//! the release commands, `history`, `diff`, `revert`, `apply` and `audit`.
//!
//! Every exchange goes through [`Client`], which is the one place that knows about HTTP: it
//! sends the token, and turns a failed exchange (no connection, 401, 403, an error body) into
//! the message `main` prints after `graylane: ` before exiting 1. The verbs only build a
//! request and render its answer.

pub(crate) mod audit;
mod cluster;
pub(crate) mod releases;
pub(crate) mod revisions;
pub(crate) mod segments;
mod table;

use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, anyhow};
use clap::Args;
use graylane_api::ErrorBody;
use serde::de::DeserializeOwned;
use serde_json::Value;
use ureq::http::Response;
use ureq::{Body, RequestBuilder};

/// The environment variable holding the bearer token. Not a flag, so the secret never shows
/// in a process listing or the shell history.
const TOKEN_ENV: &str = "GRAYLANE_TOKEN";

/// Upper bound on one exchange with the admin API, connecting included.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Options shared by every admin API command.
#[derive(Args)]
pub(crate) struct AdminArgs {
    /// The admin API's address. A token, if the API needs one, is read from GRAYLANE_TOKEN.
    #[arg(
        long = "admin",
        env = "GRAYLANE_ADMIN",
        default_value = "http://127.0.0.1:9900",
        value_name = "URL"
    )]
    pub url: String,
    /// Print the server's JSON answer (pretty) instead of text.
    #[arg(long)]
    pub json: bool,
}

/// A query string's parameters, encoded by the HTTP client.
type Query<'a> = &'a [(&'a str, String)];

pub(crate) struct Client {
    agent: ureq::Agent,
    /// The admin URL as given, without a trailing `/`.
    base: String,
    /// `base` as messages show it: without a password or query values it may carry.
    shown: String,
    token: Option<String>,
    json: bool,
}

impl Client {
    pub(crate) fn new(args: &AdminArgs) -> Client {
        let config = ureq::Agent::config_builder()
            // A 4xx/5xx carries the JSON body that says what is wrong; it must be read, not
            // turned into a bare status error.
            .http_status_as_error(false)
            .timeout_global(Some(TIMEOUT))
            .build();
        Client {
            agent: config.into(),
            base: args.url.trim_end_matches('/').to_string(),
            shown: graylane_config::redact_url(args.url.trim_end_matches('/')),
            token: std::env::var(TOKEN_ENV).ok().filter(|t| !t.is_empty()),
            json: args.json,
        }
    }

    pub(crate) fn get(&self, path: &str, query: Query<'_>) -> anyhow::Result<Value> {
        let request = self.prepare(self.agent.get(self.url(path)), query);
        self.finish(request.call())
    }

    /// A POST with a JSON body, or with none.
    pub(crate) fn post(
        &self,
        path: &str,
        query: Query<'_>,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        let request = self.prepare(self.agent.post(self.url(path)), query);
        self.finish(match body {
            Some(body) => request.send_json(body),
            None => request.send_empty(),
        })
    }

    pub(crate) fn put_yaml(
        &self,
        path: &str,
        query: Query<'_>,
        yaml: &str,
    ) -> anyhow::Result<Value> {
        let request = self.prepare(self.agent.put(self.url(path)), query);
        self.finish(request.content_type("application/yaml").send(yaml))
    }

    /// Prints an answer: as the server's JSON with `--json`, else as `render` puts it once the
    /// answer is read as a `T`.
    pub(crate) fn show<T: DeserializeOwned>(
        &self,
        answer: Value,
        render: impl FnOnce(T) -> String,
    ) -> anyhow::Result<ExitCode> {
        if self.json {
            println!("{}", serde_json::to_string_pretty(&answer)?);
        } else {
            print!("{}", render(self.read(answer)?));
        }
        Ok(ExitCode::SUCCESS)
    }

    fn read<T: DeserializeOwned>(&self, answer: Value) -> anyhow::Result<T> {
        serde_json::from_value(answer).with_context(|| {
            format!(
                "the admin API at {} answered in a shape this graylane does not know \
                 (is it the same version?)",
                self.shown
            )
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn prepare<B>(&self, mut request: RequestBuilder<B>, query: Query<'_>) -> RequestBuilder<B> {
        for (key, value) in query {
            request = request.query(key, value);
        }
        match &self.token {
            Some(token) => request.header("authorization", format!("Bearer {token}")),
            None => request,
        }
    }

    fn finish(&self, sent: Result<Response<Body>, ureq::Error>) -> anyhow::Result<Value> {
        let mut response = sent.map_err(|e| self.unreachable(e))?;
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .read_to_string()
            .map_err(|e| self.unreachable(e))?;
        if !(200..300).contains(&status) {
            return Err(anyhow!(error_message(
                &self.shown,
                status,
                &body,
                self.token.is_some()
            )));
        }
        serde_json::from_str(&body).map_err(|_| {
            anyhow!(
                "the admin API at {} answered {status} with something that is not JSON: {}",
                self.shown,
                first_chars(&body)
            )
        })
    }

    fn unreachable(&self, error: ureq::Error) -> anyhow::Error {
        let reason = match error {
            ureq::Error::BadUri(_) | ureq::Error::Http(_) => {
                return anyhow!(
                    "`{}` is not a usable admin API address ({error}); \
                     expected something like http://127.0.0.1:9900",
                    self.shown
                );
            }
            // Built without TLS: the admin listener serves plain HTTP.
            ureq::Error::TlsRequired => {
                return anyhow!(
                    "`{}`: this graylane talks plain HTTP to the admin API; use http://",
                    self.shown
                );
            }
            ureq::Error::Io(e) => e.to_string(),
            ureq::Error::Timeout(_) => format!("no answer within {}s", TIMEOUT.as_secs()),
            other => other.to_string(),
        };
        anyhow!(
            "cannot reach the admin API at {}: {reason} \
             (is `graylane serve` running? set --admin or GRAYLANE_ADMIN)",
            self.shown
        )
    }
}

/// A path segment with everything but unreserved characters percent-encoded, so that a
/// service name cannot change which endpoint is called.
pub(crate) fn segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// The message for an unsuccessful answer. The server's `error` sentence already names what
/// is wrong and what is allowed (the services that exist, the commands allowed now), so it is
/// shown as is; only authentication gets a sentence of ours, since the fix is on this side.
fn error_message(admin: &str, status: u16, body: &str, token_sent: bool) -> String {
    let Ok(error) = serde_json::from_str::<ErrorBody>(body) else {
        if body.trim().is_empty() {
            return format!("admin API answered {status} with an empty body");
        }
        return format!("admin API answered {status}: {}", first_chars(body));
    };
    let role = error
        .required_role
        .as_ref()
        .map_or("viewer or higher", |role| role.as_str());
    let mut message = match status {
        401 if token_sent => format!(
            "the admin API at {admin} does not accept the token in {TOKEN_ENV}: \
             set it to a token with role {role} ({})",
            error.error
        ),
        401 => format!(
            "the admin API at {admin} needs a token: set {TOKEN_ENV} to a token with role \
             {role} ({})",
            error.error
        ),
        403 => format!(
            "your token's role may not do this: it needs role {role} ({})",
            error.error
        ),
        _ => error.error,
    };
    for e in error.errors.iter().flatten() {
        message.push_str("\nerror: ");
        message.push_str(e);
    }
    message
}

/// The start of a body that is not what was expected, enough to recognise it.
fn first_chars(body: &str) -> String {
    body.chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ADMIN: &str = "http://127.0.0.1:9900";

    #[test]
    fn an_error_body_is_shown_as_the_servers_sentence() {
        let body = json!({
            "error": "no release for service `paymnt`; services with a release: payment, search",
            "code": "unknown_service",
            "services": ["payment", "search"],
        });
        assert_eq!(
            error_message(ADMIN, 404, &body.to_string(), false),
            "no release for service `paymnt`; services with a release: payment, search"
        );

        let body = json!({
            "error": "`resume` makes no sense for a release that is progressing; allowed now: promote, pause",
            "code": "not_allowed",
            "allowed": ["promote", "pause"],
        });
        assert_eq!(
            error_message(ADMIN, 409, &body.to_string(), true),
            "`resume` makes no sense for a release that is progressing; allowed now: promote, pause"
        );
    }

    #[test]
    fn a_missing_or_refused_token_says_what_to_set_and_which_role() {
        let body = json!({
            "error": "this needs a bearer token",
            "code": "unauthorized",
            "required_role": "operator",
        });
        assert_eq!(
            error_message(ADMIN, 401, &body.to_string(), false),
            "the admin API at http://127.0.0.1:9900 needs a token: set GRAYLANE_TOKEN to a \
             token with role operator (this needs a bearer token)"
        );
        assert!(
            error_message(ADMIN, 401, &body.to_string(), true)
                .starts_with("the admin API at http://127.0.0.1:9900 does not accept the token in GRAYLANE_TOKEN: set it to a token with role operator")
        );

        let body = json!({
            "error": "token `grafana` has role viewer",
            "code": "forbidden",
            "required_role": "admin",
        });
        assert_eq!(
            error_message(ADMIN, 403, &body.to_string(), true),
            "your token's role may not do this: it needs role admin (token `grafana` has role viewer)"
        );
    }

    #[test]
    fn an_invalid_configuration_lists_every_error_on_its_own_line() {
        let body = json!({
            "error": "the configuration is invalid (2 errors); nothing changed",
            "code": "invalid_config",
            "errors": [
                "graylane.yaml:16:17: services[0].release.steps[1].weight: weight 150 must be a percentage from 0 to 100",
                "graylane.yaml:18:9: services[0].release.force[1].segment.name: unknown segment `staf`",
            ],
        });
        assert_eq!(
            error_message(ADMIN, 422, &body.to_string(), true),
            "the configuration is invalid (2 errors); nothing changed\n\
             error: graylane.yaml:16:17: services[0].release.steps[1].weight: weight 150 must be a percentage from 0 to 100\n\
             error: graylane.yaml:18:9: services[0].release.force[1].segment.name: unknown segment `staf`"
        );
    }

    #[test]
    fn a_body_that_is_not_an_error_body_is_quoted_shortened() {
        let html = format!("<html>{}</html>", "x".repeat(300));
        let message = error_message(ADMIN, 502, &html, false);
        assert_eq!(
            message,
            format!("admin API answered 502: <html>{}", "x".repeat(194))
        );
        assert_eq!(
            error_message(ADMIN, 404, "not found", false),
            "admin API answered 404: not found"
        );
        assert_eq!(
            error_message(ADMIN, 404, "", false),
            "admin API answered 404 with an empty body"
        );
    }

    #[test]
    fn path_segments_cannot_escape_their_place() {
        assert_eq!(segment("payment-v2.eu_1"), "payment-v2.eu_1");
        assert_eq!(segment("a/b c?d"), "a%2Fb%20c%3Fd");
    }
}
