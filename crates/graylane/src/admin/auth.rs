//! Bearer tokens and roles. Tokens are read once at start from the environment variables the
//! configuration names; a request's role decides what it may do: `viewer` reads, `operator`
//! also drives releases, `admin` also changes the configuration.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use graylane_config::{ApiToken, Role};
use http::{Method, header};
use std::sync::Arc;

use super::AdminState;
use super::error::ApiError;

/// Who made a request (recorded as the actor of what it changes).
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    pub name: String,
    pub role: Role,
}

/// The tokens in effect: (secret, caller).
#[derive(Default)]
pub(crate) struct Tokens(Vec<(String, Caller)>);

impl Tokens {
    /// Reads each token's environment variable; an unset or empty one is skipped with a
    /// warning, since it could never match.
    pub(crate) fn from_env(tokens: &[ApiToken]) -> Tokens {
        let mut out = Vec::new();
        for t in tokens {
            match std::env::var(&t.env) {
                Ok(secret) if !secret.is_empty() => out.push((
                    secret,
                    Caller {
                        name: t.name.clone(),
                        role: t.role,
                    },
                )),
                _ => tracing::warn!(
                    token = %t.name,
                    env = %t.env,
                    "admin token skipped: its environment variable is unset or empty"
                ),
            }
        }
        Tokens(out)
    }

    /// Adds a token that no environment variable holds (the demo's, made at start).
    pub(crate) fn grant(&mut self, secret: String, caller: Caller) {
        self.0.push((secret, caller));
    }

    /// Adds every token of `other`.
    pub(crate) fn extend(&mut self, other: Tokens) {
        self.0.extend(other.0);
    }

    /// The caller a presented secret belongs to. Every token is compared in full, so the time
    /// taken does not tell how much of a secret was right.
    fn find(&self, presented: &str) -> Option<&Caller> {
        let mut found = None;
        for (secret, caller) in &self.0 {
            if constant_time_eq(secret.as_bytes(), presented.as_bytes()) {
                found = Some(caller);
            }
        }
        found
    }
}

/// A role as the API's documents name it.
pub(crate) fn api_role(role: Role) -> graylane_api::Role {
    match role {
        Role::Viewer => graylane_api::Role::Viewer,
        Role::Operator => graylane_api::Role::Operator,
        Role::Admin => graylane_api::Role::Admin,
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The role a request needs: reads (and `eval`, and OFREP evaluations) are for viewers, release commands, business events and
/// segment members for operators, and configuration changes for admins.
pub(crate) fn required_role(method: &Method, path: &str) -> Role {
    // `POST /api/v1/eval` changes nothing: it asks how a request would be routed; nor does an
    // OFREP evaluation, which asks what a flag gives a context.
    if method == Method::GET
        || method == Method::HEAD
        || path == "/api/v1/eval"
        || path.starts_with("/ofrep/")
    {
        Role::Viewer
    } else if path.starts_with("/api/v1/releases/")
        || path == "/api/v1/events"
        || path.starts_with("/api/v1/segments/")
    {
        Role::Operator
    } else {
        Role::Admin
    }
}

/// Checks the bearer token and the role, and hands the [`Caller`] to the handler.
pub(crate) async fn authorize(
    State(state): State<Arc<AdminState>>,
    mut req: Request,
    next: Next,
) -> Response {
    let needed = required_role(req.method(), req.uri().path());
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    let caller = match presented {
        None => {
            return ApiError::unauthorized("this needs `Authorization: Bearer <token>`", needed)
                .into_response();
        }
        Some(token) => match state.tokens.find(token) {
            Some(c) => c.clone(),
            None => {
                return ApiError::unauthorized(
                    "the token is not one of the configured admin tokens",
                    needed,
                )
                .into_response();
            }
        },
    };
    if caller.role < needed {
        return ApiError::forbidden(&caller, needed).into_response();
    }
    req.extensions_mut().insert(caller);
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_need_a_viewer_commands_an_operator_and_config_changes_an_admin() {
        assert_eq!(required_role(&Method::GET, "/api/v1/config"), Role::Viewer);
        assert_eq!(required_role(&Method::POST, "/api/v1/eval"), Role::Viewer);
        assert_eq!(
            required_role(&Method::POST, "/ofrep/v1/evaluate/flags"),
            Role::Viewer
        );
        assert_eq!(
            required_role(&Method::POST, "/api/v1/releases/payment/promote"),
            Role::Operator
        );
        assert_eq!(required_role(&Method::PUT, "/api/v1/config"), Role::Admin);
        assert_eq!(
            required_role(&Method::POST, "/api/v1/config/revert/3"),
            Role::Admin
        );
    }

    #[test]
    fn only_an_exact_secret_matches() {
        let tokens = Tokens(vec![(
            "s3cret".to_string(),
            Caller {
                name: "alice".to_string(),
                role: Role::Operator,
            },
        )]);
        assert_eq!(
            tokens.find("s3cret").map(|c| c.name.as_str()),
            Some("alice")
        );
        assert!(tokens.find("s3cre").is_none());
        assert!(tokens.find("s3cret!").is_none());
        assert!(tokens.find("").is_none());
    }
}
