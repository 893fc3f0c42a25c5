//! The OpenAPI 3.1 document of the HTTP API, served at `GET /openapi.json`
//! and printed by `riskhost openapi`.
//!
//! Paths come from the handlers' `#[utoipa::path]` attributes and schemas
//! from the request/response types' `ToSchema` derives. `api::router`
//! registers handlers only through `utoipa_axum`'s `routes!`, which adds a
//! route and its document together, so a served route cannot be left out.
//! What types cannot say is added here: the bearer scheme, the error body
//! of the auth failures, and the `x-request-id` header every answer carries.

use std::collections::BTreeMap;

use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::{ParameterBuilder, ParameterIn};
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{
    ContentBuilder, OpenApi as Document, Ref, RefOr, Required, Response, ResponseBuilder, Schema,
};
use utoipa::{IntoResponses, Modify, OpenApi, PartialSchema, ToSchema};

use crate::request_log::REQUEST_ID_HEADER;

/// Name of the security scheme in `components.securitySchemes`.
pub(crate) const BEARER: &str = "bearer";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "riskhost",
        description = "Serves risk models shipped as sandboxed WebAssembly components. \
            Every error answer is `{\"error\": {\"code\", \"message\"}}`; every answer carries \
            `x-request-id` (the client's, when it sent a sane one). Routes marked with the \
            `bearer` scheme need an API key (`Authorization: Bearer <id>.<secret>`) with the \
            scope listed (`admin` implies `score`); the others are open.",
        license(name = "see the repository")
    ),
    components(schemas(crate::api::ErrorBody)),
    tags(
        (name = "scoring", description = "Scores: one portfolio, or many portfolios × models"),
        (name = "models", description = "Served models and their versions"),
        (name = "cache", description = "The memo of scores"),
        (name = "events", description = "Recorded scores (needs ClickHouse)"),
        (name = "backtests", description = "VaR backtests: coverage and independence tests, the Basel traffic light, an HTML report"),
        (name = "operations", description = "Probes, metrics and this document (open)"),
    )
)]
pub(crate) struct ApiDoc;

/// The document: the operations `api::documented_routes` registers, then
/// what they all share. Served at `/openapi.json`; `riskhost openapi`
/// prints it without a server.
pub fn document() -> Document {
    let mut document = crate::api::documented_routes(crate::api::HttpLimits::default(), 0)
        .split_for_parts()
        .1;
    // After the routes: a modifier of `ApiDoc` would run before they exist.
    Conventions.modify(&mut document);
    document
}

/// Adds what every operation shares: the bearer scheme, the optional
/// `x-request-id` request header, and that header on every answer.
struct Conventions;

impl Modify for Conventions {
    fn modify(&self, openapi: &mut Document) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("<key id>.<secret>")
                    .description(Some(
                        "An API key. Scopes: `score` (scoring and read-only model routes), \
                         `admin` (model and cache management; implies `score`).",
                    ))
                    .build(),
            ),
        );
        let string = || ObjectBuilder::new().schema_type(Type::String).build();
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
                &mut item.head,
                &mut item.options,
                &mut item.trace,
            ];
            for operation in operations.into_iter().flatten() {
                operation.parameters.get_or_insert_with(Vec::new).push(
                    ParameterBuilder::new()
                        .name(REQUEST_ID_HEADER)
                        .parameter_in(ParameterIn::Header)
                        .required(Required::False)
                        .description(Some(
                            "Your id for this request (1–128 visible ASCII characters); \
                             a fresh UUID is used otherwise. It is echoed, logged and \
                             stored with the score events.",
                        ))
                        .schema(Some(string()))
                        .build(),
                );
                for response in operation.responses.responses.values_mut() {
                    if let RefOr::T(response) = response {
                        response.headers.insert(
                            REQUEST_ID_HEADER.to_owned(),
                            HeaderBuilder::new()
                                .schema(string())
                                .description(Some("The request's id, as logged"))
                                .build(),
                        );
                    }
                }
            }
        }
    }
}

fn error_response(description: &str) -> Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorBody")))
                .build(),
        )
        .build()
}

/// The answers of a route behind an API key: 401, 403 and 429.
pub(crate) struct AuthErrors;

impl IntoResponses for AuthErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        let mut limited = error_response("Rate limit exceeded (`rate_limited`)");
        limited.headers.insert(
            "retry-after".to_owned(),
            HeaderBuilder::new()
                .schema(ObjectBuilder::new().schema_type(Type::Integer).build())
                .description(Some("Seconds to wait before retrying"))
                .build(),
        );
        let mut unauthenticated = error_response(
            "No key, or an unknown one (`unauthenticated`); carries `WWW-Authenticate: Bearer`",
        );
        unauthenticated.headers.insert(
            "www-authenticate".to_owned(),
            HeaderBuilder::new().schema(string_schema()).build(),
        );
        BTreeMap::from([
            ("401".to_owned(), unauthenticated.into()),
            (
                "403".to_owned(),
                error_response("The key lacks the route's scope (`forbidden`)").into(),
            ),
            ("429".to_owned(), limited.into()),
        ])
    }
}

fn string_schema() -> Schema {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .build()
        .into()
}

/// A model component's bytes (`PUT /v1/models/{name}`).
pub(crate) struct ComponentBytes;

impl PartialSchema for ComponentBytes {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary)))
            .description(Some("A WebAssembly component (`.wasm`)"))
            .into()
    }
}

impl ToSchema for ComponentBytes {}

/// Prometheus' text exposition format (`GET /metrics`).
pub(crate) struct MetricsText;

impl PartialSchema for MetricsText {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some("Prometheus text exposition format 0.0.4"))
            .into()
    }
}

impl ToSchema for MetricsText {}

/// An OpenAPI document (`GET /openapi.json`).
pub(crate) struct DocumentSchema;

impl PartialSchema for DocumentSchema {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .description(Some("An OpenAPI 3.1 document"))
            .into()
    }
}

impl ToSchema for DocumentSchema {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_is_openapi_3_with_the_bearer_scheme() {
        let doc = serde_json::to_value(document()).unwrap_or_default();
        assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
        assert_eq!(
            doc["components"]["securitySchemes"][BEARER]["scheme"],
            "bearer"
        );
        assert_eq!(
            doc["paths"]["/v1/models/{name}"]["put"]["security"][0][BEARER][0],
            "admin"
        );
        assert!(doc["paths"]["/openapi.json"]["get"]["security"].is_null());
    }
}
