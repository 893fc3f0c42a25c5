//! `POST /v1/replay` (scope `admin`): a request's recorded scores computed
//! again and compared bit for bit (`docs/replay.md`).
//!
//! Handlers only translate: reading the events and re-running the jobs is
//! [`riskhost_scoring`]'s (`ScoringService::replay`). The route sheds load
//! but has no request timeout: a replay re-runs every score of a batch.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::{ApiError, ApiJson, AppState, ErrorBody};
use crate::auth::Admin;
use riskhost_scoring::{ReplayError, ReplayResponse};

/// The longest request id riskhost records (`x-request-id`).
const MAX_REQUEST_ID: usize = crate::request_log::MAX_REQUEST_ID;

/// The `/v1/replay` route.
pub(crate) fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new().routes(routes!(replay))
}

/// `POST /v1/replay`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ReplayRequest {
    /// The `x-request-id` of the request whose scores to replay.
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = "^[!-~]{1,128}$",
        example = "3f1c8a52-9a4e-4c1b-8d0e-7a1f2b3c4d5e"
    )]
    request_id: String,
}

impl From<ReplayError> for ApiError {
    fn from(error: ReplayError) -> Self {
        let status = match &error {
            ReplayError::Score(e) => return ApiError::from(e.clone()),
            // As the history route answers without ClickHouse.
            ReplayError::NotRecorded => StatusCode::NOT_FOUND,
            ReplayError::Unavailable(_) => {
                return ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    error.code(),
                    error.to_string(),
                )
                .with_retry_after(5);
            }
            ReplayError::UnknownRequest(_) => StatusCode::NOT_FOUND,
            ReplayError::TooLarge { .. } | ReplayError::NotReplayable { .. } => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ReplayError::SnapshotUnavailable { .. } => StatusCode::CONFLICT,
            ReplayError::VersionGone { .. } => StatusCode::GONE,
        };
        ApiError::new(status, error.code(), error.to_string())
    }
}

/// Re-runs every recorded score of a request with the version that
/// computed it (by digest, loaded from the model store even when no longer
/// active), its recorded parameters, positions, as-of date and seed, on its
/// recorded market-data snapshot, and compares each value bit for bit.
/// Nothing is memoized or recorded. Scores of `POST /v1/runs` are recorded
/// without a request id and cannot be replayed (`docs/replay.md`).
#[utoipa::path(
    post,
    path = "/v1/replay",
    tag = "events",
    request_body = ReplayRequest,
    security(("bearer" = ["admin"])),
    responses(
        (status = 200, description = "Each recorded score, replayed", body = ReplayResponse),
        (status = 400, description = "Malformed JSON or unreadable body (`malformed_json`, `unreadable_body`)", body = ErrorBody),
        (status = 404, description = "No recorded score has this request id (`unknown_request`), or score events are not stored (`replay_not_configured`: start with `--clickhouse-url`)", body = ErrorBody),
        (status = 409, description = "The recorded market-data snapshot can no longer be served: the data changed since (`snapshot_unavailable`, naming the recorded and the current snapshot and what changed)", body = ErrorBody),
        (status = 410, description = "The model version that computed a score was deleted with purge (`version_gone`)", body = ErrorBody),
        (status = 413, description = "Body over `--max-body-bytes` (`body_too_large`)", body = ErrorBody),
        (status = 415, description = "Not `application/json` (`unsupported_media_type`)", body = ErrorBody),
        (status = 422, description = "Invalid body or request id, a request recorded before replay existed, or more recorded scores than one replay re-runs (`invalid_body`, `invalid_request_id`, `not_replayable`, `replay_too_large`)", body = ErrorBody),
        (status = 500, description = "The host failed", body = ErrorBody),
        (status = 503, description = "ClickHouse is unavailable (`data_unavailable`), or a recorded version could not be loaded (`model_unavailable`)", body = ErrorBody,
            headers(("retry-after" = u32, description = "Seconds to wait before retrying"))),
        crate::openapi::AuthErrors,
    )
)]
async fn replay(
    _admin: Admin,
    State(state): State<Arc<AppState>>,
    ApiJson(request): ApiJson<ReplayRequest>,
) -> Result<Json<ReplayResponse>, ApiError> {
    let id = request.request_id;
    if id.is_empty() || id.len() > MAX_REQUEST_ID || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request_id",
            format!(
                "`request_id` must be 1 to {MAX_REQUEST_ID} visible ASCII characters, as `x-request-id` is"
            ),
        ));
    }
    Ok(Json(state.scoring.replay(&id).await?))
}
