//! The OpenAPI document's frame: its title and description, the bearer scheme, a description
//! for every response that has none, and the open endpoints (`/metrics`, `/healthz`,
//! `/readyz`), which are served outside `/api/v1` but documented with it.

use graylane_api::ErrorBody;
use utoipa::OpenApi;
use utoipa::openapi::RefOr;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "graylane admin API",
        description = "Releases, configuration revisions and the audit log of one graylane environment. \
            Every path needs `Authorization: Bearer <token>`: role viewer for GET, operator for release \
            commands, admin for configuration changes."
    ),
    components(schemas(ErrorBody)),
    modifiers(&BearerAuth)
)]
pub(super) struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        openapi.security = Some(vec![utoipa::openapi::security::SecurityRequirement::new(
            "bearer",
            Vec::<String>::new(),
        )]);
    }
}

/// Gives every response without a description one: the operation's summary for a success,
/// what the status means in this API for an error (the error body says the rest).
pub(super) fn describe_responses(doc: &mut utoipa::openapi::OpenApi) {
    for item in doc.paths.paths.values_mut() {
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ];
        for op in operations.into_iter().flatten() {
            let summary = op.summary.clone().unwrap_or_default();
            for (status, response) in &mut op.responses.responses {
                if let RefOr::T(r) = response
                    && r.description.trim().is_empty()
                {
                    r.description = match status.as_str() {
                        "400" => "The request is not valid; `error` says what is wrong".to_string(),
                        "401" => "No token, or one that is not configured".to_string(),
                        "403" => {
                            "The token's role is too low; `required_role` names the one needed"
                                .to_string()
                        }
                        "404" => "Not found; `error` names what exists".to_string(),
                        "409" => {
                            "Not allowed now; `allowed` lists the commands that are".to_string()
                        }
                        "422" => {
                            "The configuration is invalid; `errors` lists every problem".to_string()
                        }
                        _ => summary.trim_end_matches('.').to_string(),
                    };
                }
            }
        }
    }
}

/// `/metrics`, `/healthz` and `/readyz`: served by the admin listener without a token, so
/// documented here with no security requirement.
pub(super) fn add_open_endpoints(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::path::{HttpMethod, OperationBuilder, PathItem};
    use utoipa::openapi::security::SecurityRequirement;
    use utoipa::openapi::{ContentBuilder, ObjectBuilder, ResponseBuilder, Type};
    let text = |content_type: &str, description: &str| {
        ResponseBuilder::new()
            .description(description)
            .content(
                content_type,
                ContentBuilder::new()
                    .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
                    .build(),
            )
            .build()
    };
    let plain = "text/plain; charset=utf-8";
    let open = |summary: &str, responses: Vec<(&str, utoipa::openapi::Response)>| {
        let mut op = OperationBuilder::new()
            .tag("probes")
            .summary(Some(summary))
            .security(SecurityRequirement::default());
        for (status, response) in responses {
            op = op.response(status, response);
        }
        PathItem::new(HttpMethod::Get, op.build())
    };
    let paths = &mut doc.paths.paths;
    paths.insert(
        "/metrics".to_string(),
        open(
            "Prometheus metrics of the proxy, the releases and the webhooks (no token)",
            vec![(
                "200",
                text(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    "The metrics in the OpenMetrics text format",
                ),
            )],
        ),
    );
    paths.insert(
        "/healthz".to_string(),
        open(
            "Liveness: the process is up (no token)",
            vec![("200", text(plain, "`ok`"))],
        ),
    );
    paths.insert(
        "/readyz".to_string(),
        open(
            "Readiness: the gateway accepts traffic (no token)",
            vec![
                ("200", text(plain, "`ready`")),
                (
                    "503",
                    text(plain, "`draining`: shutting down, send traffic elsewhere"),
                ),
            ],
        ),
    );
}
