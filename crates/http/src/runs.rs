//! The `/v1/runs` routes: submit a run (JSON, or an NDJSON upload read
//! line by line, never whole), follow it, read its results as NDJSON or
//! CSV, cancel it, list them.
//!
//! A run needs a key of scope `score`; only the key that submitted it reads
//! or cancels it (another caller gets 404, as for an id that never
//! existed). Handlers only translate: planning, pinning and scoring are
//! [`riskhost_runs`]'s.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::{ApiError, ApiPath, AppState, ErrorBody};
use crate::auth::Scorer;
use riskhost_runs::{RunError, RunRequest, RunView, Submission};
use riskhost_scoring::{PortfolioInput, ScoreError};

/// The longest line of an NDJSON upload: one portfolio of 10,000 positions
/// fits many times over.
const MAX_LINE_BYTES: usize = 16 << 20;

/// The `/v1/runs` routes.
pub(crate) fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(submit_run, list_runs))
        .routes(routes!(get_run, cancel_run))
        .routes(routes!(run_results))
}

impl From<RunError> for ApiError {
    fn from(error: RunError) -> Self {
        let (status, code) = match &error {
            RunError::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_run"),
            RunError::EmptySelection => (StatusCode::UNPROCESSABLE_ENTITY, "empty_selection"),
            RunError::TooManyPortfolios { .. } => {
                (StatusCode::PAYLOAD_TOO_LARGE, "too_many_portfolios")
            }
            RunError::BadPortfolio { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_body"),
            RunError::Model(e) => return ApiError::from(ScoreError::Resolve(e.clone())),
            RunError::UnknownRun(_) => (StatusCode::NOT_FOUND, "unknown_run"),
            RunError::Unavailable(_) => {
                return ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "runs_unavailable",
                    error.to_string(),
                )
                .with_retry_after(5);
            }
            RunError::Store(_) => (StatusCode::INTERNAL_SERVER_ERROR, "store_error"),
        };
        ApiError::new(status, code, error.to_string())
    }
}

/// Submits a run: `models` × the selected portfolios, as of one date, each
/// model pinned to its digest now. JSON with `portfolios` (`{"all": true}`,
/// `{"ids": […]}` or `{"inline": […]}`), or `application/x-ndjson`: the
/// same object without `portfolios` on the first line, then one portfolio
/// per line (streamed; up to `--run-max-portfolios`). Answers once every
/// portfolio is planned into chunks; workers score them from then on.
#[utoipa::path(
    post,
    path = "/v1/runs",
    tag = "runs",
    security(("bearer" = ["score"])),
    request_body(
        description = "The run; or `application/x-ndjson`: this object without `portfolios`, then one portfolio per line",
        content(
            (RunRequest = "application/json"),
            (String = "application/x-ndjson"),
        )
    ),
    responses(
        (status = 202, description = "Planned and queued: the run, with its `id` and `status_url`", body = RunView,
            headers(("location" = String, description = "The run's status URL"))),
        (status = 400, description = "Malformed JSON (`malformed_json`)", body = ErrorBody),
        (status = 404, description = "An unknown model or version (`unknown_model`, `unknown_model_version`)", body = ErrorBody),
        (status = 413, description = "More portfolios than `--run-max-portfolios` (`too_many_portfolios`), or a JSON body over `--max-batch-body-bytes` (`body_too_large`)", body = ErrorBody),
        (status = 415, description = "Neither JSON nor NDJSON (`unsupported_media_type`)", body = ErrorBody),
        (status = 422, description = "An invalid run or portfolio line, or a selection of no portfolio (`invalid_run`, `invalid_body`: a portfolio line that does not parse, is over 16 MiB, or an upload that broke off; `empty_selection`)", body = ErrorBody),
        (status = 500, description = "The run store failed (`store_error`)", body = ErrorBody),
        (status = 503, description = "Runs cannot be queued now (`runs_unavailable`, with `Retry-After`)", body = ErrorBody),
        crate::openapi::AuthErrors,
    )
)]
async fn submit_run(
    scorer: Scorer,
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let content_type =
        crate::api::media_type(&headers).unwrap_or_else(|| "application/json".to_owned());
    let (request, portfolios) = match content_type.as_str() {
        "application/json" => {
            let bytes = axum::body::to_bytes(body, state.run_body_limit)
                .await
                .map_err(|e| {
                    ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "body_too_large",
                        format!("the JSON body is over {} bytes; upload big runs as application/x-ndjson ({e})", state.run_body_limit),
                    )
                })?;
            let mut request: RunRequest = serde_json::from_slice(&bytes).map_err(|e| {
                // serde reports an enum given as anything but an object as a
                // syntax error; valid JSON of the wrong shape is a 422.
                if serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).is_ok() {
                    ApiError::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "invalid_run",
                        format!("{e}: a run is `{{\"models\": […], \"portfolios\": …}}`, where `portfolios` is `{{\"all\": true}}`, `{{\"ids\": […]}}` or `{{\"inline\": […]}}`"),
                    )
                } else {
                    crate::admin::json_error(e)
                }
            })?;
            let Some(selection) = request.portfolios.take() else {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_run",
                    "`portfolios`: give `{\"all\": true}`, `{\"ids\": […]}` or `{\"inline\": […]}`, or upload application/x-ndjson",
                ));
            };
            let portfolios = riskhost_runs::portfolio_stream(selection, &state.scoring).await?;
            (request, portfolios)
        }
        "application/x-ndjson" => {
            let mut lines = ndjson_lines(body);
            let first = lines.next().await.ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_run",
                    "the upload is empty: its first line is the run (`models`, `params`, `as_of`)",
                )
            })??;
            let request: RunRequest =
                serde_json::from_slice(&first.1).map_err(crate::admin::json_error)?;
            if request.portfolios.is_some() {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_run",
                    "an NDJSON upload gives its portfolios as lines, not as `portfolios` on the first line",
                ));
            }
            let portfolios = lines
                .map(|line| {
                    let (number, bytes) = line?;
                    serde_json::from_slice::<PortfolioInput>(&bytes).map_err(|e| {
                        RunError::BadPortfolio {
                            line: number,
                            message: e.to_string(),
                        }
                    })
                })
                .boxed();
            (request, portfolios)
        }
        other => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!("send application/json or application/x-ndjson, not `{other}`"),
            ));
        }
    };
    let run = state
        .runs
        .submit(Submission {
            key_id: scorer.key_id().to_owned(),
            request,
            portfolios,
        })
        .await?;
    let location = HeaderValue::from_str(&run.status_url)
        .unwrap_or_else(|_| HeaderValue::from_static("/v1/runs"));
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        Json(run),
    )
        .into_response())
}

/// The non-empty lines of an NDJSON body with their 1-based numbers, read
/// as the body arrives; a line over [`MAX_LINE_BYTES`] is an error.
fn ndjson_lines(body: Body) -> BoxStream<'static, Result<(u64, Vec<u8>), RunError>> {
    struct Reader {
        chunks: axum::body::BodyDataStream,
        buffer: Vec<u8>,
        number: u64,
        done: bool,
    }
    let reader = Reader {
        chunks: body.into_data_stream(),
        buffer: Vec::new(),
        number: 0,
        done: false,
    };
    futures::stream::unfold(reader, |mut reader| async move {
        loop {
            if let Some(end) = reader.buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = reader.buffer.drain(..=end).collect();
                reader.number += 1;
                let line = line.trim_ascii().to_vec();
                if line.is_empty() {
                    continue;
                }
                return Some((Ok((reader.number, line)), reader));
            }
            if reader.buffer.len() > MAX_LINE_BYTES {
                reader.buffer.clear();
                reader.done = true;
                let error = RunError::BadPortfolio {
                    line: reader.number + 1,
                    message: format!("longer than {MAX_LINE_BYTES} bytes"),
                };
                return Some((Err(error), reader));
            }
            if reader.done {
                let rest = std::mem::take(&mut reader.buffer);
                let rest = rest.trim_ascii();
                if rest.is_empty() {
                    return None;
                }
                reader.number += 1;
                let line = rest.to_vec();
                return Some((Ok((reader.number, line)), reader));
            }
            match reader.chunks.next().await {
                Some(Ok(bytes)) => reader.buffer.extend_from_slice(&bytes),
                Some(Err(e)) => {
                    reader.done = true;
                    reader.buffer.clear();
                    let error = RunError::BadPortfolio {
                        line: reader.number + 1,
                        message: format!("the upload broke off: {e}"),
                    };
                    return Some((Err(error), reader));
                }
                None => reader.done = true,
            }
        }
    })
    .boxed()
}

/// A run's progress: status, pinned digests, chunks and cells.
#[utoipa::path(
    get,
    path = "/v1/runs/{id}",
    tag = "runs",
    security(("bearer" = ["score"])),
    params(("id" = String, Path, description = "The run's id")),
    responses(
        (status = 200, description = "The run", body = RunView),
        (status = 404, description = "No run of this key has this id (`unknown_run`)", body = ErrorBody),
        crate::openapi::AuthErrors,
    )
)]
async fn get_run(
    scorer: Scorer,
    State(state): State<Arc<AppState>>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<RunView>, ApiError> {
    Ok(Json(
        state
            .runs
            .status(scorer.key_id(), &id)
            .await?
            .with_rate(chrono::Utc::now()),
    ))
}

/// Cancels a run: no chunk of it starts after this answers (one being
/// scored finishes); its results so far stay readable.
#[utoipa::path(
    delete,
    path = "/v1/runs/{id}",
    tag = "runs",
    security(("bearer" = ["score"])),
    params(("id" = String, Path, description = "The run's id")),
    responses(
        (status = 200, description = "The run, cancelled (or as it was, if it had finished)", body = RunView),
        (status = 404, description = "No run of this key has this id (`unknown_run`)", body = ErrorBody),
        crate::openapi::AuthErrors,
    )
)]
async fn cancel_run(
    scorer: Scorer,
    State(state): State<Arc<AppState>>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<RunView>, ApiError> {
    Ok(Json(
        state
            .runs
            .cancel(scorer.key_id(), &id)
            .await?
            .with_rate(chrono::Utc::now()),
    ))
}

/// This key's runs.
#[derive(Debug, Serialize, ToSchema)]
struct RunList {
    runs: Vec<RunView>,
}

/// The runs this key submitted, newest first.
#[utoipa::path(
    get,
    path = "/v1/runs",
    tag = "runs",
    security(("bearer" = ["score"])),
    responses(
        (status = 200, description = "The runs", body = RunList),
        crate::openapi::AuthErrors,
    )
)]
async fn list_runs(
    scorer: Scorer,
    State(state): State<Arc<AppState>>,
) -> Result<Json<RunList>, ApiError> {
    Ok(Json(RunList {
        runs: {
            let now = chrono::Utc::now();
            let runs = state.runs.list(scorer.key_id()).await?;
            runs.into_iter().map(|run| run.with_rate(now)).collect()
        },
    }))
}

/// The format of a run's results.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ResultsQuery {
    /// `ndjson` (default) or `csv`; `Accept: text/csv` also asks for CSV.
    #[param(inline, value_type = Option<ResultsFormat>)]
    format: Option<String>,
}

/// `format` values.
#[derive(ToSchema)]
#[allow(dead_code)] // only its schema is used
#[schema(rename_all = "lowercase")]
enum ResultsFormat {
    Ndjson,
    Csv,
}

/// A run's results so far, streamed in chunk order: one line per
/// (portfolio, model) cell, the batch API's cell plus `run_id`, or CSV.
#[utoipa::path(
    get,
    path = "/v1/runs/{id}/results",
    tag = "runs",
    security(("bearer" = ["score"])),
    params(("id" = String, Path, description = "The run's id"), ResultsQuery),
    responses(
        (status = 200, description = "The cells scored so far (`x-riskhost-run-status` says whether more will come)",
            content((String = "application/x-ndjson"), (String = "text/csv"))),
        (status = 404, description = "No run of this key has this id (`unknown_run`)", body = ErrorBody),
        (status = 422, description = "An unknown `format`, or a query that does not parse (`invalid_query`)", body = ErrorBody),
        crate::openapi::AuthErrors,
    )
)]
async fn run_results(
    scorer: Scorer,
    State(state): State<Arc<AppState>>,
    ApiPath(id): ApiPath<String>,
    query: Result<Query<ResultsQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_query",
            e.body_text(),
        )
    })?;
    let accepts_csv = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/csv"));
    let csv = match query.format.as_deref() {
        None => accepts_csv,
        Some("ndjson") => false,
        Some("csv") => true,
        Some(other) => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_query",
                format!("unknown format `{other}`: use ndjson or csv"),
            ));
        }
    };
    let run = state.runs.status(scorer.key_id(), &id).await?;
    let lines = state.runs.results(scorer.key_id(), &id).await?;
    let (lines, content_type) = if csv {
        (riskhost_runs::csv_results(lines), "text/csv; charset=utf-8")
    } else {
        (lines, "application/x-ndjson")
    };
    let body = Body::from_stream(
        lines.map(|chunk| chunk.map_err(|e| std::io::Error::other(e.to_string()))),
    );
    Ok((
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (
                header::HeaderName::from_static("x-riskhost-run-status"),
                HeaderValue::from_static(run.status.as_str()),
            ),
        ],
        body,
    )
        .into_response())
}
