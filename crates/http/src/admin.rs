//! The model-management routes: upload, list versions, roll back, delete.
//!
//! Changes need a key of scope `admin` ([`Admin`]); listing the versions of
//! a model needs scope `score` ([`Scorer`]), like `GET /v1/models`.
//!
//! Handlers only translate: every decision is in the [`ModelCatalog`] of
//! `AppState` (this replica's `ModelManager`, or the fleet's shared
//! registry with `--model-store postgres`). `GET /v1/fleet` shows what the
//! registry says and what each replica serves.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;

use crate::api::{ApiError, ApiPath, AppState, ErrorBody};
use crate::auth::{Admin, Scorer};
use riskhost_models::signing::{DetachedSignature, SIGNATURE_HEADER};
use riskhost_models::{ChangeBy, DeployError, Deployed, FleetView, VersionId, VersionsView};

/// The admin routes; uploads accept bodies up to the largest component
/// riskhost loads (`--max-component-mib`), whatever `--max-body-bytes` is.
pub(crate) fn routes(max_component_bytes: usize) -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(
            // Room for a maximal component; the engine enforces the limit
            // itself. (DELETE reads no body, so the limit is moot there.)
            routes!(upload, remove)
                .layer(DefaultBodyLimit::max(max_component_bytes.saturating_add(1))),
        )
        .routes(routes!(versions))
        .routes(routes!(rollback))
        .routes(routes!(fleet))
}

impl From<DeployError> for ApiError {
    fn from(error: DeployError) -> Self {
        let (status, code) = match &error {
            DeployError::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_model"),
            DeployError::Signature(e) => (StatusCode::UNPROCESSABLE_ENTITY, e.code()),
            DeployError::NameMismatch { .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, "model_name_mismatch")
            }
            DeployError::UnknownModel(_) | DeployError::NotLoaded(_) => {
                (StatusCode::NOT_FOUND, "unknown_model")
            }
            DeployError::UnknownVersion { .. } => (StatusCode::NOT_FOUND, "unknown_model_version"),
            DeployError::NoPrevious(_) => (StatusCode::CONFLICT, "no_previous_version"),
            DeployError::VersionRemoved { .. } => (StatusCode::CONFLICT, "version_removed"),
            DeployError::TargetChanged { .. } => (StatusCode::CONFLICT, "rollback_target_changed"),
            DeployError::Store(_) => (StatusCode::INTERNAL_SERVER_ERROR, "store_error"),
            DeployError::RegistryUnavailable(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "registry_unavailable")
            }
            DeployError::DigestMismatch { .. } => {
                (StatusCode::INTERNAL_SERVER_ERROR, "registry_corrupt")
            }
            DeployError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal_error"),
        };
        ApiError::new(status, code, error.to_string())
    }
}

/// `PUT /v1/models/{name}` from an OCI registry.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct OciSource {
    /// `REGISTRY/REPOSITORY@sha256:…`, or a tag, resolved to its digest
    /// once, now: the digest is what is recorded and served.
    #[schema(example = "ghcr.io/acme/var-historical:1.0.0")]
    oci: String,
}

/// An OCI registry's failure as an answer; the live version keeps serving.
fn oci_error(error: riskhost_oci::OciError) -> ApiError {
    use riskhost_oci::OciError;
    let status = match &error {
        OciError::NotFound(_) => StatusCode::NOT_FOUND,
        OciError::Unreachable { .. }
        | OciError::Unauthorized { .. }
        | OciError::Protocol { .. } => StatusCode::BAD_GATEWAY,
        OciError::InvalidReference { .. }
        | OciError::DigestMismatch { .. }
        | OciError::NotAComponent { .. }
        | OciError::TooLarge { .. } => StatusCode::UNPROCESSABLE_ENTITY,
    };
    ApiError::new(status, error.code(), error.to_string())
}

/// A JSON body that did not parse: 400 `malformed_json` when it is not
/// JSON, 422 `invalid_body` when it is the wrong JSON.
pub(crate) fn json_error(e: serde_json::Error) -> ApiError {
    if e.is_syntax() || e.is_eof() {
        ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", e.to_string())
    } else {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
            e.to_string(),
        )
    }
}

pub(crate) fn change_by(admin: &Admin) -> ChangeBy {
    ChangeBy {
        key_id: match admin.key_id() {
            "" => "anonymous".into(),
            id => id.into(),
        },
        origin: None,
    }
}

pub(crate) fn body_error(rejection: BytesRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!(
                "{}; components are limited by --max-component-mib",
                rejection.body_text()
            ),
        )
    } else {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "unreadable_body",
            rejection.body_text(),
        )
    }
}

/// `PUT /v1/models/{name}` with the component bytes: 201 once the version
/// is validated, stored and live; 200 if it already was the active version.
/// Its signature, when it has one, is the base64 of its `.sig` file in the
/// `x-riskhost-signature` header (required with `--require-signatures`).
#[utoipa::path(
    put,
    path = "/v1/models/{name}",
    tag = "models",
    security(("bearer" = ["admin"])),
    params(
        ("name" = String, Path, description = "The model's name; must equal the name its `info()` gives"),
        ("x-riskhost-signature" = Option<String>, Header, description = "Base64 of the model's detached `.sig` file (`riskhost model sign`); required with `--require-signatures`"),
    ),
    request_body(
        description = "The component's bytes (`application/octet-stream`; `application/wasm` is accepted as well), or where to pull it from: `{\"oci\": \"REGISTRY/REPO@sha256:…\"}` (a tag is resolved to its digest once; the artifact's signature comes along)",
        content(
            // `application/wasm` stays out of the document: openapi-python-client
            // refuses an operation that lists a media type it does not know.
            (crate::openapi::ComponentBytes = "application/octet-stream"),
            (OciSource = "application/json"),
        )
    ),
    responses(
        (status = 201, description = "Validated, stored and now active", body = Deployed),
        (status = 200, description = "Already the active version", body = Deployed),
        (status = 400, description = "Unreadable body or path, or malformed JSON (`unreadable_body`, `invalid_path`, `malformed_json`)", body = ErrorBody),
        (status = 404, description = "The OCI reference names nothing in its registry (`oci_not_found`)", body = ErrorBody),
        (status = 413, description = "Larger than `--max-component-mib` (`body_too_large`)", body = ErrorBody),
        (status = 502, description = "The OCI registry is unreachable, refused the credentials or answered outside the protocol (`oci_unreachable`, `oci_unauthorized`, `oci_protocol_error`)", body = ErrorBody),
        (status = 409, description = "The model was purged while the version was being deployed; nothing changed (`version_removed`)", body = ErrorBody),
        (status = 415, description = "Not `application/wasm` or `application/octet-stream`", body = ErrorBody),
        (status = 422, description = "A path that is no model name (`invalid_model_name`); not a valid model, its name differs, or its signature is missing, invalid or from an untrusted publisher (`invalid_model`, `model_name_mismatch`, `signature_missing`, `signature_invalid`, `untrusted_publisher`); from a registry: a bad reference, a layer whose digest does not match, an artifact that is not a component, or one over `--max-component-mib` (`invalid_oci_reference`, `invalid_body`, `oci_digest_mismatch`, `oci_not_a_component`, `oci_artifact_too_large`)", body = ErrorBody),
        (status = 500, description = "The store failed (`store_error`), or this replica could not serve what the registry now holds (`internal_error`)", body = ErrorBody),
        (status = 503, description = "With `--model-store postgres`: the shared model registry is unavailable (`registry_unavailable`); nothing changed", body = ErrorBody),
        crate::openapi::AuthErrors,
    )
)]
async fn upload(
    admin: Admin,
    State(state): State<Arc<AppState>>,
    ApiPath(name): ApiPath<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Deployed>), ApiError> {
    let content_type = crate::api::media_type(&headers);
    // Before anything is read or pulled: a name no model can have is the
    // caller's error, whatever the body (an OCI pull would otherwise run
    // first, and fail with the registry's error instead).
    riskhost_engine::ModelName::parse(&name).map_err(|invalid| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_model_name",
            invalid.to_string(),
        )
    })?;
    let from_registry = content_type.as_deref() == Some("application/json");
    if let Some(ct) = content_type.as_deref()
        && !from_registry
        && ct != "application/wasm"
        && ct != "application/octet-stream"
    {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "send the component as `application/wasm` (or `application/octet-stream`), or `application/json` `{{\"oci\": \"REGISTRY/REPO@sha256:…\"}}`, not `{ct}`"
            ),
        ));
    }
    let mut signature = headers
        .get(SIGNATURE_HEADER)
        .map(|value| DetachedSignature::from_header(value.as_bytes()))
        .transpose()
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.code(), e.to_string()))?;
    let body = body.map_err(body_error)?;
    let mut by = change_by(&admin);
    let bytes = if from_registry {
        let source: OciSource = serde_json::from_slice(&body).map_err(json_error)?;
        let pulled = state.oci.pull(&source.oci).await.map_err(oci_error)?;
        // The signature pushed with the artifact, unless the caller sent one.
        signature = signature.or(pulled.signature);
        by.origin = Some(format!("oci:{}", pulled.reference));
        pulled.bytes
    } else {
        Vec::from(body)
    };
    let deployed = state.catalog.upload(&name, bytes, signature, &by).await?;
    let status = if deployed.changed {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(deployed)))
}

/// `GET /v1/models/{name}/versions`: every stored version, which is active,
/// and the history of activations.
#[utoipa::path(
    get,
    path = "/v1/models/{name}/versions",
    tag = "models",
    security(("bearer" = ["score"])),
    params(("name" = String, Path, description = "The model's name")),
    responses(
        (status = 200, description = "The model's versions", body = VersionsView),
        (status = 400, description = "The name does not decode as UTF-8 (`invalid_path`)", body = ErrorBody),
        (status = 404, description = "No such model (`unknown_model`)", body = ErrorBody),
        (status = 503, description = "With `--model-store postgres`: the shared model registry is unavailable (`registry_unavailable`); nothing changed", body = ErrorBody),
        crate::openapi::AuthErrors,
    )
)]
async fn versions(
    _: Scorer,
    State(state): State<Arc<AppState>>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<VersionsView>, ApiError> {
    Ok(Json(state.catalog.versions(&name).await?))
}

/// The body of a rollback; empty or `null` means `{}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct RollbackRequest {
    /// `sha256:…` or a semver; absent: the previously active version.
    to: Option<String>,
}

/// `POST /v1/models/{name}/rollback`, body empty or `{"to": "…"}`: makes a
/// stored version active again (by default the previous one).
#[utoipa::path(
    post,
    path = "/v1/models/{name}/rollback",
    tag = "models",
    security(("bearer" = ["admin"])),
    params(("name" = String, Path, description = "The model's name")),
    request_body(content = Option<RollbackRequest>, content_type = "application/json",
        description = "Optional; empty means the previously active version"),
    responses(
        (status = 200, description = "Rolled back", body = Deployed),
        (status = 400, description = "Malformed JSON, or a name that does not decode as UTF-8 (`malformed_json`, `invalid_path`)", body = ErrorBody),
        (status = 404, description = "No such model or version (`unknown_model`, `unknown_model_version`)", body = ErrorBody),
        (status = 409, description = "No previous version (`no_previous_version`), or a concurrent change made the rollback moot: the target was purged (`version_removed`) or is no longer the version `to` or \"previous\" names (`rollback_target_changed`); nothing changed", body = ErrorBody),
        (status = 422, description = "Invalid body, or with `--require-signatures` the target version's signature is missing, invalid or untrusted (`invalid_body`, `signature_missing`, `signature_invalid`, `untrusted_publisher`)", body = ErrorBody),
        (status = 503, description = "With `--model-store postgres`: the shared model registry is unavailable (`registry_unavailable`); nothing changed", body = ErrorBody),
        crate::openapi::AuthErrors,
    )
)]
async fn rollback(
    admin: Admin,
    State(state): State<Arc<AppState>>,
    ApiPath(name): ApiPath<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Deployed>, ApiError> {
    let body = body.map_err(body_error)?;
    // An empty body and JSON `null` both mean "no options": generated
    // clients send `null` for an optional body left unset.
    let request = if body.iter().all(u8::is_ascii_whitespace) {
        RollbackRequest { to: None }
    } else {
        serde_json::from_slice::<Option<RollbackRequest>>(&body)
            .map_err(json_error)?
            .unwrap_or(RollbackRequest { to: None })
    };
    Ok(Json(
        state
            .catalog
            .rollback(&name, request.to.as_deref(), &change_by(&admin))
            .await?,
    ))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct RemoveQuery {
    /// Also delete every stored version and compiled artifact.
    #[serde(default)]
    purge: bool,
}

/// What `DELETE /v1/models/{name}` did.
#[derive(Debug, Serialize, ToSchema)]
struct Removed {
    name: String,
    /// The version that was active, if one was.
    unloaded: Option<VersionId>,
    purged: bool,
}

/// `DELETE /v1/models/{name}[?purge=true]`: stops serving the model.
#[utoipa::path(
    delete,
    path = "/v1/models/{name}",
    tag = "models",
    security(("bearer" = ["admin"])),
    params(("name" = String, Path, description = "The model's name"), RemoveQuery),
    responses(
        (status = 200, description = "Unloaded (and purged if asked)", body = Removed),
        (status = 400, description = "The name does not decode as UTF-8 (`invalid_path`)", body = ErrorBody),
        (status = 404, description = "No such model (`unknown_model`)", body = ErrorBody),
        (status = 422, description = "Invalid query (`invalid_query`)", body = ErrorBody),
        (status = 503, description = "With `--model-store postgres`: the shared model registry is unavailable (`registry_unavailable`); nothing changed", body = ErrorBody),
        crate::openapi::AuthErrors,
    )
)]
async fn remove(
    admin: Admin,
    State(state): State<Arc<AppState>>,
    ApiPath(name): ApiPath<String>,
    query: Result<Query<RemoveQuery>, QueryRejection>,
) -> Result<Json<Removed>, ApiError> {
    let Query(query) = query.map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_query",
            e.body_text(),
        )
    })?;
    let unloaded = state
        .catalog
        .remove(&name, query.purge, &change_by(&admin))
        .await?;
    Ok(Json(Removed {
        name,
        unloaded,
        purged: query.purge,
    }))
}

/// `GET /v1/fleet`: the registry's active pointers and, per replica, its
/// last heartbeat and what it serves, so an operator can watch a change
/// converge. With `--model-store local` it is a fleet of one.
#[utoipa::path(
    get,
    path = "/v1/fleet",
    tag = "models",
    security(("bearer" = ["score"])),
    responses(
        (status = 200, description = "The fleet; `registry_available` is false (and `models` null) while the registry cannot be read, and the answering replica is then listed alone, stale", body = FleetView),
        crate::openapi::AuthErrors,
    )
)]
async fn fleet(_: Scorer, State(state): State<Arc<AppState>>) -> Json<FleetView> {
    Json(state.catalog.fleet().await)
}
