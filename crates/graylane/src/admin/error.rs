//! The admin API's errors: the error body (`{"error": "<sentence>", "code": "<kind>", ...}`,
//! [`ErrorBody`] in `graylane-api`) with the status that goes with the kind (see
//! docs/admin-api.md).

use axum::Json;
use axum::response::{IntoResponse, Response};
use graylane_api::ErrorBody;
use graylane_config::Role;
use graylane_controller::ControlError;
use graylane_rollout::CommandError;
use graylane_store::StoreError;
use http::StatusCode;

use super::auth::{Caller, api_role};

#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    /// Boxed: errors travel in `Result`s through every handler.
    body: Box<ErrorBody>,
}

impl ApiError {
    pub(crate) fn new(
        status: StatusCode,
        code: &'static str,
        error: impl Into<String>,
    ) -> ApiError {
        ApiError {
            status,
            body: Box::new(ErrorBody {
                error: error.into(),
                code: code.to_string(),
                required_role: None,
                services: None,
                allowed: None,
                errors: None,
            }),
        }
    }

    pub(crate) fn bad_request(error: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", error)
    }

    pub(crate) fn too_large(error: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", error)
    }

    pub(crate) fn not_found(error: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", error)
    }

    pub(crate) fn method_not_allowed(error: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", error)
    }

    pub(crate) fn conflict(error: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, "not_allowed", error)
    }

    pub(crate) fn unavailable(error: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", error)
    }

    pub(crate) fn unauthorized(why: &str, needed: Role) -> ApiError {
        let mut e = ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            format!(
                "{why}; this call needs a token with role {}",
                needed.as_str()
            ),
        );
        e.body.required_role = Some(api_role(needed));
        e
    }

    pub(crate) fn forbidden(caller: &Caller, needed: Role) -> ApiError {
        let mut e = ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "token `{}` has role {}; this call needs role {}",
                caller.name,
                caller.role.as_str(),
                needed.as_str()
            ),
        );
        e.body.required_role = Some(api_role(needed));
        e
    }
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> ApiError {
        let text = e.to_string();
        match e {
            ControlError::UnknownService { services, .. } => {
                let mut api = ApiError::new(StatusCode::NOT_FOUND, "unknown_service", text);
                api.body.services = Some(services);
                api
            }
            ControlError::UnknownVariant { .. }
            | ControlError::BadWeight { .. }
            | ControlError::BadEvent(_)
            | ControlError::TooLong { .. } => ApiError::bad_request(text),
            ControlError::NotAnExperiment { .. } => {
                ApiError::new(StatusCode::CONFLICT, "not_allowed", text)
            }
            ControlError::Command(CommandError::NotAllowed { allowed, .. }) => {
                let mut api = ApiError::new(StatusCode::CONFLICT, "not_allowed", text);
                api.body.allowed = Some(allowed.split(", ").map(str::to_string).collect());
                api
            }
            ControlError::Command(CommandError::NotForStrategy { .. }) => {
                ApiError::new(StatusCode::CONFLICT, "not_allowed", text)
            }
            ControlError::NoSuchRevision { .. } => ApiError::not_found(text),
            ControlError::Invalid(errors) => {
                let mut api =
                    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_config", text);
                api.body.errors = Some(errors.errors.iter().map(|e| e.to_string()).collect());
                api
            }
            ControlError::Write { .. } | ControlError::Read { .. } => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "write_failed", text)
            }
            // etcd away: the node serves on, and the command may simply be sent again.
            ControlError::Store(StoreError::Unavailable { .. }) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", text)
            }
            ControlError::Store(StoreError::Conflict { .. } | StoreError::NotLeader) => {
                ApiError::new(StatusCode::CONFLICT, "conflict", text)
            }
            ControlError::Store(_) | ControlError::CorruptState { .. } => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "store", text)
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}
