//! The challenger routes (scope `admin`): set, read and stop a model's
//! challenger, and promote it on evidence.
//!
//! Handlers only translate: sampling, shadow scoring and the evidence are
//! `riskhost_scoring`'s (`challenger.rs`); promotion is the catalog's
//! rollback to the challenger's digest, so it goes through the normal
//! deploy path (signatures, audit log, the fleet's registry).

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::admin::{body_error, change_by, json_error};
use crate::api::{ApiError, ApiPath, AppState, ErrorBody, ErrorCause, ErrorDetail};
use crate::auth::Admin;
use riskhost_models::{ChallengerSetting, Deployed};
use riskhost_scoring::{ChallengerError, ChallengerView, ScoreError, Tolerance};

pub(crate) fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(set_challenger, get_challenger, stop_challenger))
        .routes(routes!(promote))
}

impl From<ChallengerError> for ApiError {
    fn from(error: ChallengerError) -> Self {
        match error {
            ChallengerError::Resolve(e) => ApiError::from(ScoreError::Resolve(e)),
            ChallengerError::Invalid(message) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_challenger",
                message,
            ),
            is_active @ ChallengerError::IsActive { .. } => ApiError::new(
                StatusCode::CONFLICT,
                "challenger_is_active",
                is_active.to_string(),
            ),
        }
    }
}

fn no_challenger(name: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no_challenger",
        format!("{name} has no challenger: set one with PUT /v1/models/{name}/challenger"),
    )
}

/// `PUT /v1/models/{name}/challenger`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ChallengerRequest {
    /// A stored version of the model other than the active one: `1.2.0`
    /// or `sha256:…`.
    version: String,
    /// The fraction of the model's live cells the challenger also scores,
    /// in (0, 1]; 1 by default.
    #[serde(default = "full_sample")]
    #[schema(exclusive_minimum = 0.0, maximum = 1.0)]
    sample: f64,
    /// A cell diverges when |challenger − champion| > abs + rel·|champion|;
    /// both 1e-9 by default.
    #[serde(default)]
    tolerance: Option<Tolerance>,
}

fn full_sample() -> f64 {
    1.0
}

/// Sets the model's challenger: from now on a sample of its live single and
/// batch cells is also scored by that version, off the request path, and
/// compared. Replaces an earlier challenger and its evidence.
#[utoipa::path(
    put,
    path = "/v1/models/{name}/challenger",
    tag = "models",
    security(("bearer" = ["admin"])),
    params(("name" = String, Path, description = "The model's name")),
    request_body = ChallengerRequest,
    responses(
        (status = 200, description = "The challenger, with no evidence yet", body = ChallengerView),
        (status = 400, description = "Malformed JSON (`malformed_json`)", body = ErrorBody),
        (status = 404, description = "No such model or stored version (`unknown_model`, `unknown_model_version`)", body = ErrorBody),
        (status = 409, description = "The version named is the active one (`challenger_is_active`)", body = ErrorBody),
        (status = 422, description = "A sample outside (0, 1], a negative tolerance, or an invalid body (`invalid_challenger`, `invalid_body`)", body = ErrorBody),
        (status = 503, description = "With `--model-store postgres`: the shared model registry is unavailable (`registry_unavailable`); nothing changed", body = ErrorBody),
        crate::openapi::AuthErrors,
    )
)]
async fn set_challenger(
    admin: Admin,
    State(state): State<Arc<AppState>>,
    ApiPath(name): ApiPath<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<ChallengerView>, ApiError> {
    let body = body.map_err(body_error)?;
    let request: ChallengerRequest = serde_json::from_slice(&body).map_err(json_error)?;
    let tolerance = request.tolerance.unwrap_or_default();
    // Validated and set here first; then every replica follows.
    let view = state
        .scoring
        .set_challenger(&name, &request.version, request.sample, tolerance)
        .await?;
    let setting = ChallengerSetting {
        digest: view.digest.clone(),
        sample: view.sample,
        tolerance_abs: tolerance.abs,
        tolerance_rel: tolerance.rel,
    };
    if let Err(error) = state
        .catalog
        .share_challenger(&name, Some(setting), &change_by(&admin))
        .await
    {
        state.scoring.clear_challenger(&name);
        return Err(error.into());
    }
    Ok(Json(view))
}

/// The model's challenger and the evidence so far: cells compared and
/// diverged, mean and max differences, error asymmetry, the worst cells.
#[utoipa::path(
    get,
    path = "/v1/models/{name}/challenger",
    tag = "models",
    security(("bearer" = ["admin"])),
    params(("name" = String, Path, description = "The model's name")),
    responses(
        (status = 200, description = "The challenger and its evidence", body = ChallengerView),
        (status = 404, description = "The model has no challenger (`no_challenger`)", body = ErrorBody),
        crate::openapi::AuthErrors,
    )
)]
async fn get_challenger(
    _admin: Admin,
    State(state): State<Arc<AppState>>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<ChallengerView>, ApiError> {
    state
        .scoring
        .challenger(&name)
        .map(Json)
        .ok_or_else(|| no_challenger(&name))
}

/// Stops the model's challenger; answers its final evidence.
#[utoipa::path(
    delete,
    path = "/v1/models/{name}/challenger",
    tag = "models",
    security(("bearer" = ["admin"])),
    params(("name" = String, Path, description = "The model's name")),
    responses(
        (status = 200, description = "Stopped; its final evidence", body = ChallengerView),
        (status = 404, description = "The model has no challenger (`no_challenger`)", body = ErrorBody),
        (status = 503, description = "With `--model-store postgres`: the shared model registry is unavailable (`registry_unavailable`); stopped on this replica only", body = ErrorBody),
        crate::openapi::AuthErrors,
    )
)]
async fn stop_challenger(
    admin: Admin,
    State(state): State<Arc<AppState>>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<ChallengerView>, ApiError> {
    let stopped = state
        .scoring
        .clear_challenger(&name)
        .ok_or_else(|| no_challenger(&name))?;
    state
        .catalog
        .share_challenger(&name, None, &change_by(&admin))
        .await?;
    Ok(Json(stopped))
}

/// The bar a promotion must clear; empty or `null` means none.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct PromoteRequest {
    /// Refuse unless every compared cell's relative difference is at most
    /// this, at least one cell was compared, and the challenger failed no
    /// cell the champion scored.
    #[schema(minimum = 0.0)]
    require_max_rel: Option<f64>,
    /// Refuse unless at least this many cells were compared.
    require_compared: Option<u64>,
}

/// What a promotion did.
#[derive(Debug, Serialize, ToSchema)]
struct Promoted {
    /// The challenger, now the active version.
    deployed: Deployed,
    /// The evidence it was promoted on.
    evidence: ChallengerView,
}

/// A refused promotion: the error and the evidence that fell short.
#[derive(Debug, Serialize, ToSchema)]
struct PromotionRefused {
    error: ErrorDetail,
    evidence: ChallengerView,
}

/// Makes the challenger the active version through the normal deploy path
/// (signature policy, audit log, every replica with the shared registry),
/// and stops challenging. With a bar, refuses (409) when the evidence
/// does not meet it.
#[utoipa::path(
    post,
    path = "/v1/models/{name}/promote",
    tag = "models",
    security(("bearer" = ["admin"])),
    params(("name" = String, Path, description = "The model's name")),
    request_body(content = Option<PromoteRequest>, content_type = "application/json",
        description = "Optional; empty means promote whatever the evidence"),
    responses(
        (status = 200, description = "Promoted", body = Promoted),
        (status = 400, description = "Malformed JSON (`malformed_json`)", body = ErrorBody),
        (status = 404, description = "The model has no challenger (`no_challenger`)", body = ErrorBody),
        (status = 409, description = "The evidence does not meet the bar (`promotion_refused`), with the evidence; or the challenger's version was purged meanwhile (`version_removed`)", body = PromotionRefused),
        (status = 422, description = "Invalid body, or with `--require-signatures` the challenger's signature is missing, invalid or untrusted (`invalid_body`, `signature_missing`, `signature_invalid`, `untrusted_publisher`)", body = ErrorBody),
        (status = 503, description = "With `--model-store postgres`: the shared model registry is unavailable (`registry_unavailable`)", body = ErrorBody),
        crate::openapi::AuthErrors,
    )
)]
async fn promote(
    admin: Admin,
    State(state): State<Arc<AppState>>,
    ApiPath(name): ApiPath<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(body_error)?;
    let bar = if body.iter().all(u8::is_ascii_whitespace) {
        PromoteRequest::default()
    } else {
        serde_json::from_slice::<Option<PromoteRequest>>(&body)
            .map_err(json_error)?
            .unwrap_or_default()
    };
    let evidence = state
        .scoring
        .challenger(&name)
        .ok_or_else(|| no_challenger(&name))?;
    if let Some(shortfall) = shortfall(&bar, &evidence) {
        let refused = PromotionRefused {
            error: ErrorDetail {
                code: "promotion_refused".into(),
                message: format!("{name}'s challenger {}: {shortfall}", evidence.version),
            },
            evidence,
        };
        let mut response = (StatusCode::CONFLICT, Json(refused)).into_response();
        // Counted as the caller's, like every 4xx (`track_http`).
        response.extensions_mut().insert(ErrorCause::Caller);
        return Ok(response);
    }
    let deployed = state
        .catalog
        .rollback(&name, Some(&evidence.digest), &change_by(&admin))
        .await?;
    let evidence = state.scoring.clear_challenger(&name).unwrap_or(evidence);
    state
        .catalog
        .share_challenger(&name, None, &change_by(&admin))
        .await?;
    tracing::info!(model = %name, digest = %evidence.digest, compared = evidence.compared, diverged = evidence.diverged, "challenger promoted");
    Ok(Json(Promoted { deployed, evidence }).into_response())
}

/// What the evidence lacks for `bar`, if anything.
fn shortfall(bar: &PromoteRequest, evidence: &ChallengerView) -> Option<String> {
    if let Some(min) = bar.require_compared
        && evidence.compared < min
    {
        return Some(format!(
            "{} cells compared, {min} required",
            evidence.compared
        ));
    }
    if let Some(max_rel) = bar.require_max_rel {
        if evidence.compared == 0 {
            return Some("no cell compared yet".into());
        }
        if evidence.max_rel_diff > max_rel {
            return Some(format!(
                "max relative difference {:e} over the {max_rel:e} required ({} of {} cells diverged)",
                evidence.max_rel_diff, evidence.diverged, evidence.compared
            ));
        }
        let failed: u64 = evidence.errors.challenger_only.values().sum();
        if failed > 0 {
            return Some(format!(
                "the challenger failed {failed} cells the champion scored"
            ));
        }
    }
    None
}
