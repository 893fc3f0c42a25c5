//! The OpenAPI 3.1 document of the HTTP API, served at `GET /openapi.json`
//! and printed by `riskhost openapi`.
//!
//! Paths come from the handlers' `#[utoipa::path]` attributes and schemas
//! from the request/response types' `ToSchema` derives. `api::router`
//! registers handlers only through `utoipa_axum`'s `routes!`, which adds a
//! route and its document together, so a served route cannot be left out.
//! What types cannot say is added here: the bearer scheme, the error body
//! of the auth failures, the `x-request-id` header every answer carries, and
//! the bounds that follow the server's flags (how many models and portfolios
//! a batch may hold, how many positions a portfolio), so the served document
//! states the limits this server enforces.

use std::collections::BTreeMap;

use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::{ParameterBuilder, ParameterIn};
use utoipa::openapi::schema::{AnyOfBuilder, KnownFormat, ObjectBuilder, SchemaFormat, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{
    ContentBuilder, OpenApi as Document, Ref, RefOr, Required, Response, ResponseBuilder, Schema,
};
use utoipa::{IntoResponses, Modify, OpenApi, PartialSchema, ToSchema};

use riskhost_models::signing::SIGNATURE_HEADER;
use riskhost_scoring::{BacktestLimits, ScoringSettings};

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
        license(name = "Apache-2.0", identifier = "Apache-2.0")
    ),
    components(schemas(crate::api::ErrorBody)),
    tags(
        (name = "scoring", description = "Scores: one portfolio, or many portfolios × models"),
        (name = "models", description = "Served models and their versions"),
        (name = "cache", description = "The memo of scores"),
        (name = "events", description = "Recorded scores (needs ClickHouse)"),
        (name = "runs", description = "Risk runs: every portfolio × several models for one as-of date, scored by workers, results as NDJSON or CSV"),
        (name = "backtests", description = "VaR backtests: coverage and independence tests, the Basel traffic light, an HTML report"),
        (name = "operations", description = "Probes, metrics and this document (open)"),
    )
)]
pub(crate) struct ApiDoc;

/// The document under the default limits, as `riskhost openapi` prints it
/// without a server: the operations `api::documented_routes` registers,
/// then what they all share.
pub fn document() -> serde_json::Value {
    let routes = crate::api::documented_routes(crate::api::HttpLimits::default(), 0);
    let limits = DocumentedLimits {
        scoring: &ScoringSettings::default(),
        backtest: BacktestLimits::default(),
    };
    served(routes.split_for_parts().1, &limits, false)
}

/// The limits a server enforces that its document states.
pub(crate) struct DocumentedLimits<'a> {
    pub(crate) scoring: &'a ScoringSettings,
    pub(crate) backtest: BacktestLimits,
}

/// `document`, as served by a server under `limits`, which lets callers
/// without a key score when `anonymous_scoring`.
pub(crate) fn served(
    mut document: Document,
    limits: &DocumentedLimits<'_>,
    anonymous_scoring: bool,
) -> serde_json::Value {
    // After the routes: a modifier of `ApiDoc` would run before they exist.
    Conventions.modify(&mut document);
    let mut json = serde_json::to_value(document).unwrap_or_default();
    if let Some(schemas) = json["components"]["schemas"].as_object_mut() {
        flatten_untagged_outcomes(schemas);
    }
    let schemas = &mut json["components"]["schemas"];
    let batch = limits.scoring.batch;
    let portfolio = limits.scoring.portfolio_limits;
    bound_items(
        &mut schemas["BatchRequest"]["properties"]["models"],
        batch.max_models,
    );
    // A model named twice is refused (422), as an empty list is.
    schemas["BatchRequest"]["properties"]["models"]["uniqueItems"] = true.into();
    bound_items(
        &mut schemas["BatchRequest"]["properties"]["portfolios"],
        batch.max_portfolios,
    );
    bound_items(
        &mut schemas["PortfolioInput"]["properties"]["positions"],
        portfolio.max_positions,
    );
    bound_items(
        &mut schemas["BacktestRequest"]["properties"]["portfolios"],
        limits.backtest.max_portfolios,
    );
    // A run in JSON names its portfolios (only an NDJSON upload, whose
    // schema is prose, leaves them out), with at least one id or portfolio.
    bound_items(
        &mut schemas["RunRequest"]["properties"]["models"],
        batch.max_models,
    );
    schemas["RunRequest"]["properties"]["models"]["uniqueItems"] = true.into();
    schemas["RunRequest"]["properties"]["portfolios"] =
        serde_json::json!({"$ref": "#/components/schemas/Selection"});
    schemas["RunRequest"]["required"] = serde_json::json!(["models", "portfolios"]);
    if let Some(branches) = schemas["Selection"]["oneOf"].as_array_mut() {
        for branch in branches {
            branch["additionalProperties"] = false.into();
            if let Some(all) = branch["properties"].get_mut("all") {
                // `{"all": false}` selects nothing and is refused.
                all["const"] = true.into();
            }
            for list in ["ids", "inline"] {
                if let Some(items) = branch["properties"].get_mut(list) {
                    items["minItems"] = 1.into();
                }
            }
        }
    }
    let input = &mut schemas["PortfolioInput"];
    if let Some(id) = input["properties"]["id"].as_object_mut() {
        id.insert("minLength".into(), 1.into());
        id.insert("maxLength".into(), portfolio.max_id_bytes.into());
    }
    // Positions, or the id of a stored portfolio: an empty object is
    // refused. (`anyOf` of the two would say more, but makes
    // openapi-python-client drop every schema that holds a portfolio.)
    input["minProperties"] = 1.into();
    constrain_parameters(&mut json);
    if anonymous_scoring {
        make_scoring_key_optional(&mut json);
    }
    json
}

/// Under `--anonymous-scoring` a key is optional on the routes of scope
/// `score`: their security requirement gains the empty alternative `{}`.
/// A wrong key is still refused (401).
fn make_scoring_key_optional(json: &mut serde_json::Value) {
    let needs_score = serde_json::json!([{ BEARER: ["score"] }]);
    for operation in json_operations_mut(json) {
        if operation["security"] == needs_score {
            operation["security"] = serde_json::json!([{}, { BEARER: ["score"] }]);
        }
    }
}

/// States the rules of parameters that every route shares: a path
/// parameter called `name` or `model` is always a model name, and a
/// signature header is never empty.
fn constrain_parameters(json: &mut serde_json::Value) {
    for operation in json_operations_mut(json) {
        unwrap_optional_body(operation);
        let Some(parameters) = operation
            .get_mut("parameters")
            .and_then(serde_json::Value::as_array_mut)
        else {
            continue;
        };
        for parameter in parameters {
            let location = parameter["in"].as_str().unwrap_or_default().to_owned();
            let name = parameter["name"].as_str().unwrap_or_default().to_owned();
            let schema = &mut parameter["schema"];
            match (location.as_str(), name.as_str()) {
                ("path", "name" | "model") => {
                    schema["pattern"] = MODEL_NAME_PATTERN.into();
                    schema["maxLength"] = riskhost_engine::MAX_MODEL_NAME_BYTES.into();
                }
                ("header", SIGNATURE_HEADER) => {
                    schema["minLength"] = 1.into();
                    schema["format"] = "byte".into();
                }
                _ => {}
            }
        }
    }
}

/// An optional request body (`Option<T>` in `request_body`) is documented
/// as `required: false` with `oneOf: [null, T]`; openapi-python-client
/// then sends its "unset" marker as JSON and fails before the request.
/// Optional already says the body may be left out, so its schema is `T`.
/// (The server still takes a JSON `null` as no body.)
fn unwrap_optional_body(operation: &mut serde_json::Value) {
    // `get_mut`, not indexing: indexing a missing key would insert `null`.
    let Some(body) = operation.get_mut("requestBody") else {
        return;
    };
    if body.get("required") == Some(&serde_json::Value::Bool(true)) {
        return;
    }
    let Some(contents) = body
        .get_mut("content")
        .and_then(serde_json::Value::as_object_mut)
    else {
        return;
    };
    for content in contents.values_mut() {
        let schema = &mut content["schema"];
        let inner = match schema["oneOf"].as_array() {
            Some(branches) if branches.len() == 2 => branches
                .iter()
                .find(|branch| branch["type"] != "null")
                .cloned(),
            _ => None,
        };
        if let Some(inner) = inner {
            *schema = inner;
        }
    }
}

/// `riskhost_engine::ModelName`'s rule as a regular expression (its length
/// bound is `maxLength`).
const MODEL_NAME_PATTERN: &str = "^[a-z][a-z0-9]*(-[a-z0-9]+)*$";

/// A query bound that is a date (`YYYY-MM-DD`) or an RFC 3339 date-time,
/// in the years ClickHouse's `DateTime` holds (1970 to 2105; a bound
/// outside is refused with 422 `invalid_range`).
pub(crate) fn date_or_date_time() -> Schema {
    let string = |format| {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(format)))
            .pattern(Some("^(19[7-9][0-9]|20[0-9][0-9]|210[0-5])-"))
    };
    AnyOfBuilder::new()
        .item(string(KnownFormat::Date))
        .item(string(KnownFormat::DateTime))
        .build()
        .into()
}

/// Rewrites what serde's `flatten` of an untagged enum derives, `allOf` of
/// a `oneOf` and an object, as one object: the struct's own properties
/// (required as before) and every alternative's properties (optional).
/// Client generators cannot read the `allOf` form: openapi-python-client
/// drops the schema, and openapi-generator requires every alternative's
/// fields at once. The JSON is unchanged: exactly one alternative's fields
/// are present, which the description states.
fn flatten_untagged_outcomes(schemas: &mut serde_json::Map<String, serde_json::Value>) {
    use serde_json::Value;
    let resolve = |schemas: &serde_json::Map<String, Value>, schema: &Value| -> Value {
        match schema["$ref"].as_str() {
            Some(reference) => reference
                .rsplit('/')
                .next()
                .and_then(|name| schemas.get(name))
                .cloned()
                .unwrap_or_default(),
            None => schema.clone(),
        }
    };
    let names: Vec<String> = schemas.keys().cloned().collect();
    for name in names {
        let Some(parts) = schemas[&name]["allOf"].as_array().cloned() else {
            continue;
        };
        let mut properties = serde_json::Map::new();
        let mut required = Vec::new();
        let mut alternatives = Vec::new();
        for part in &parts {
            let part = resolve(schemas, part);
            match part["oneOf"].as_array() {
                Some(branches) => {
                    for branch in branches {
                        let branch = resolve(schemas, branch);
                        let fields = branch["required"].as_array().cloned().unwrap_or_default();
                        alternatives.push(
                            fields
                                .iter()
                                .filter_map(Value::as_str)
                                .map(|f| format!("`{f}`"))
                                .collect::<Vec<_>>()
                                .join(", "),
                        );
                        if let Some(own) = branch["properties"].as_object() {
                            properties.extend(own.clone());
                        }
                    }
                }
                None => {
                    if let Some(own) = part["properties"].as_object() {
                        properties.extend(own.clone());
                    }
                    required.extend(part["required"].as_array().cloned().unwrap_or_default());
                }
            }
        }
        let description = format!(
            "{} Exactly one set of these fields is present: {}.",
            schemas[&name]["description"].as_str().unwrap_or_default(),
            alternatives.join("; or ")
        );
        schemas.insert(
            name,
            serde_json::json!({
                "type": "object",
                "description": description.trim_start(),
                "properties": properties,
                "required": required,
            }),
        );
    }
}

/// States that an array property holds 1 to `max` items (an empty one is
/// refused with 422, a longer one with 413).
fn bound_items(property: &mut serde_json::Value, max: usize) {
    if let Some(property) = property.as_object_mut() {
        property.insert("minItems".into(), 1.into());
        property.insert("maxItems".into(), max.into());
    }
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
        for operation in operations_mut(openapi) {
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

/// Adds the answers of the global limits (`limits.rs`) to every operation
/// of `openapi`: 503 `overloaded` past `--max-concurrent-requests` and,
/// `with_timeout`, 504 `request_timeout` past `--request-timeout-ms`. An
/// operation that documents a 503 or 504 of its own keeps it, with these
/// codes added to its description.
pub(crate) fn document_limit_answers(openapi: &mut Document, with_timeout: bool) {
    let mut answers = vec![(
        "503",
        "too many requests in flight (`overloaded`, with `Retry-After`)",
    )];
    if with_timeout {
        answers.push((
            "504",
            "the request outlived `--request-timeout-ms` (`request_timeout`)",
        ));
    }
    for operation in operations_mut(openapi) {
        for (status, text) in &answers {
            let responses = &mut operation.responses.responses;
            match responses.get_mut(*status) {
                Some(RefOr::T(response)) => {
                    response.description = format!("{}; or {text}", response.description);
                }
                Some(RefOr::Ref(_)) => {}
                None => {
                    let mut response = error_response(&capitalised(text));
                    if *status == "503" {
                        response
                            .headers
                            .insert("retry-after".to_owned(), retry_after());
                    }
                    responses.insert((*status).to_owned(), response.into());
                }
            }
        }
    }
}

/// Every operation of `openapi`.
fn operations_mut(
    openapi: &mut Document,
) -> impl Iterator<Item = &mut utoipa::openapi::path::Operation> {
    openapi.paths.paths.values_mut().flat_map(|item| {
        [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
            &mut item.head,
            &mut item.options,
            &mut item.trace,
        ]
        .into_iter()
        .flatten()
    })
}

/// Every operation of a document already encoded as JSON.
fn json_operations_mut(
    json: &mut serde_json::Value,
) -> impl Iterator<Item = &mut serde_json::Value> {
    json.get_mut("paths")
        .and_then(serde_json::Value::as_object_mut)
        .into_iter()
        .flat_map(|paths| paths.values_mut())
        .filter_map(serde_json::Value::as_object_mut)
        .flat_map(|item| item.values_mut())
}

fn capitalised(text: &str) -> String {
    let mut chars = text.chars();
    chars
        .next()
        .map(|first| first.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

fn retry_after() -> utoipa::openapi::header::Header {
    HeaderBuilder::new()
        .schema(ObjectBuilder::new().schema_type(Type::Integer).build())
        .description(Some("Seconds to wait before retrying"))
        .build()
}

/// The answers of a route behind an API key: 401, 403 and 429.
pub(crate) struct AuthErrors;

impl IntoResponses for AuthErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        let mut limited = error_response("Rate limit exceeded (`rate_limited`)");
        limited
            .headers
            .insert("retry-after".to_owned(), retry_after());
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
        let doc = document();
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

    /// What generators and schemathesis tripped on: a batch cell as an
    /// `allOf` of a `oneOf`, a nullable optional body, a license without an
    /// identifier, and bounds the server enforces but did not state.
    #[test]
    fn the_document_states_what_generators_and_fuzzers_need() {
        let doc = document();
        assert_eq!(doc["info"]["license"]["identifier"], "Apache-2.0");
        let schemas = &doc["components"]["schemas"];
        for name in ["BatchCell", "PortfolioBacktest"] {
            assert!(
                schemas[name]["allOf"].is_null(),
                "{name}: {}",
                schemas[name]
            );
            assert_eq!(schemas[name]["type"], "object", "{name}");
        }
        let cell = &schemas["BatchCell"];
        assert!(cell["properties"]["value"].is_object() && cell["properties"]["error"].is_object());
        assert_eq!(
            cell["required"],
            serde_json::json!(["portfolio_index", "model"])
        );
        let models = &schemas["BatchRequest"]["properties"]["models"];
        assert_eq!(
            (models["minItems"].as_u64(), models["maxItems"].as_u64()),
            (Some(1), Some(16))
        );
        assert_eq!(models["uniqueItems"], true);
        assert_eq!(
            schemas["PortfolioInput"]["properties"]["positions"]["minItems"],
            1
        );
        let rollback = &doc["paths"]["/v1/models/{name}/rollback"]["post"]["requestBody"];
        assert_eq!(
            rollback["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/RollbackRequest"
        );
        let upload = &doc["paths"]["/v1/models/{name}"]["put"];
        let name = upload["parameters"]
            .as_array()
            .and_then(|p| p.iter().find(|p| p["name"] == "name"))
            .cloned()
            .unwrap_or_default();
        assert_eq!(name["schema"]["pattern"], MODEL_NAME_PATTERN);
        assert!(upload["requestBody"]["content"]["application/wasm"].is_null());
        let batch = &doc["paths"]["/v1/score/batch"]["post"]["responses"];
        assert!(
            batch["504"]["description"]
                .as_str()
                .is_some_and(|d| d.contains("request_timeout"))
        );
        assert!(
            upload["responses"]["504"].is_null(),
            "uploads have no request timeout"
        );
    }
}
