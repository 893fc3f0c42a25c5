//! The backtest routes: run one, read it again, read its HTML report.
//!
//! A backtest needs a key of scope `score` ([`Scorer`]); it is kept in the
//! in-memory [`riskhost_backtest::BacktestStore`] under the key that ran it,
//! and only that key reads it back (another caller gets 404, as for an id
//! that never existed). Handlers only translate: the scoring is
//! [`riskhost_scoring`]'s (`ScoringService::backtest`), the statistics and the page are
//! [`riskhost_backtest`]'s.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::{ApiError, ApiJson, ApiPath, AppState, ErrorBody};
use crate::auth::Scorer;
use riskhost_backtest::Backtest;
use riskhost_scoring::{BacktestError, BacktestRequest};

/// The `/v1/backtests` routes.
pub(crate) fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(run_backtest))
        .routes(routes!(get_backtest))
        .routes(routes!(backtest_report))
}

impl From<BacktestError> for ApiError {
    fn from(error: BacktestError) -> Self {
        let code = match &error {
            BacktestError::Invalid { .. } => "invalid_backtest",
            BacktestError::NotBacktestable(_) => "not_backtestable",
            BacktestError::Params { .. } => "invalid_params",
            BacktestError::Overloaded(_) => {
                return ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "overloaded",
                    error.to_string(),
                )
                .with_retry_after(1);
            }
            BacktestError::Score(e) => return ApiError::from(e.clone()),
        };
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, error.to_string())
    }
}

fn report_url(id: &str) -> String {
    format!("/v1/backtests/{id}/report.html")
}

/// Backtests a VaR model over a range of days: its score as of each trading
/// day t (horizon one day, through the normal scoring path: memoized,
/// metered, events marked `backtest`) against the P&L of the unchanged
/// positions from t to the next trading day, with Kupiec's,
/// Christoffersen's and the Basel traffic-light tests per portfolio.
#[utoipa::path(
    post,
    path = "/v1/backtests",
    tag = "backtests",
    request_body = BacktestRequest,
    security(("bearer" = ["score"])),
    responses(
        (status = 201, description = "The backtest; it is kept in memory, readable at `Location` by the same key", body = Backtest,
            headers(("location" = String, description = "`/v1/backtests/{id}`"))),
        (status = 400, description = "Malformed JSON or unreadable body", body = ErrorBody),
        (status = 404, description = "Unknown model or version (`unknown_model`, `unknown_model_version`)", body = ErrorBody),
        (status = 413, description = "Body over `--max-body-bytes`", body = ErrorBody),
        (status = 415, description = "Not `application/json`", body = ErrorBody),
        (status = 422, description = "A field does not fit the data or the limits, the model is not a VaR in money, or its parameters are invalid (`invalid_backtest`, `not_backtestable`, `invalid_params`, `invalid_body`)", body = ErrorBody),
        (status = 503, description = "Overloaded or unavailable; retry after `Retry-After` seconds", body = ErrorBody,
            headers(("retry-after" = u32, description = "Seconds to wait before retrying"))),
        crate::openapi::AuthErrors,
    )
)]
async fn run_backtest(
    scorer: Scorer,
    State(state): State<Arc<AppState>>,
    ApiJson(request): ApiJson<BacktestRequest>,
) -> Result<Response, ApiError> {
    let id = format!("bt-{}", uuid::Uuid::new_v4().simple());
    let mut backtest = state
        .scoring
        .backtest(request, state.backtest_limits, id)
        .await?;
    backtest.report_url = Some(report_url(&backtest.id));
    let backtest = Arc::new(backtest);
    state.backtests.insert(scorer.key_id(), backtest.clone());
    let location =
        HeaderValue::from_str(&format!("/v1/backtests/{}", backtest.id)).map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                e.to_string(),
            )
        })?;
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(backtest.as_ref()),
    )
        .into_response())
}

/// The backtest `id` if the caller's key ran it and it is still kept.
fn stored(state: &AppState, caller: &Scorer, id: &str) -> Option<Arc<Backtest>> {
    state.backtests.get(id, caller.key_id())
}

fn unknown_backtest(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "unknown_backtest",
        format!(
            "no backtest `{}` run by this key is kept (backtests are kept in memory, the oldest evicted first past `--backtest-store-mib`)",
            riskhost_events::bounded_field(id)
        ),
    )
}

/// A backtest this key ran, as `POST /v1/backtests` answered it.
#[utoipa::path(
    get,
    path = "/v1/backtests/{id}",
    tag = "backtests",
    security(("bearer" = ["score"])),
    params(("id" = String, Path, description = "The backtest's id")),
    responses(
        (status = 200, description = "The backtest", body = Backtest),
        (status = 400, description = "Undecodable path (`invalid_path`)", body = ErrorBody),
        (status = 404, description = "No such backtest kept for this key (`unknown_backtest`)", body = ErrorBody),
        crate::openapi::AuthErrors,
    )
)]
async fn get_backtest(
    scorer: Scorer,
    State(state): State<Arc<AppState>>,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let backtest = stored(&state, &scorer, &id).ok_or_else(|| unknown_backtest(&id))?;
    // Serialized from the stored copy: a backtest can hold megabytes of days.
    Ok(Json(backtest.as_ref()).into_response())
}

/// The backtest's report: one self-contained HTML page (inline CSS and SVG,
/// no script): per portfolio the verdict in words, the daily P&L bars
/// against the −VaR line with exceptions marked, and the test table.
#[utoipa::path(
    get,
    path = "/v1/backtests/{id}/report.html",
    tag = "backtests",
    security(("bearer" = ["score"])),
    params(("id" = String, Path, description = "The backtest's id")),
    responses(
        (status = 200, description = "The report", content_type = "text/html", body = String),
        (status = 400, description = "Undecodable path (`invalid_path`)", body = ErrorBody),
        (status = 404, description = "No such backtest kept for this key (`unknown_backtest`)", body = ErrorBody),
        crate::openapi::AuthErrors,
    )
)]
async fn backtest_report(
    scorer: Scorer,
    State(state): State<Arc<AppState>>,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let backtest = stored(&state, &scorer, &id).ok_or_else(|| unknown_backtest(&id))?;
    let page = riskhost_backtest::report_html(&backtest);
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        )],
        page,
    )
        .into_response())
}
