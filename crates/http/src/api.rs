//! The HTTP API: routes, JSON error bodies and request metrics.
//!
//! Handlers only translate between HTTP and the scoring service; every
//! error leaves as `{"error": {"code": "...", "message": "..."}}` with a
//! status that says whose fault it was (4xx: the request; 5xx: the host or a
//! model; 503 with Retry-After: try again).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::{
    DefaultBodyLimit, FromRequest, FromRequestParts, MatchedPath, Path, Request, State,
};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use bytes::Bytes;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use serde_json::json;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;
use utoipa::ToSchema;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;

use riskhost_models::{LoadFailure, rfc3339};
use riskhost_scoring::{
    BatchError, BatchRequest, ErrorClass, ScoreError, ScoreRequest, ScoreResponse, ScoringService,
};

/// Shared by every handler.
pub struct AppState {
    pub scoring: Arc<ScoringService>,
    pub metrics: PrometheusHandle,
    /// Set when shutdown begins, so `/readyz` turns unready before draining.
    pub shutting_down: AtomicBool,
    /// Keys, scopes, anonymous scoring and per-caller rate limits.
    pub auth: riskhost_auth::Authenticator,
    /// This replica's deployments (its limits, e.g. the largest component).
    pub models: Arc<riskhost_models::ModelManager>,
    /// Pulls components from OCI registries (`PUT /v1/models/{name}` with
    /// `{"oci": …}`).
    pub oci: Arc<riskhost_oci::OciClient>,
    /// What the admin routes change models through: this replica
    /// (`--model-store local`) or the fleet's shared registry.
    pub catalog: Arc<dyn riskhost_models::ModelCatalog>,
    /// Finished backtests, readable again by the key that ran them.
    pub backtests: riskhost_backtest::BacktestStore,
    /// `--backtest-max-cells` and the portfolio bound of a backtest.
    pub backtest_limits: riskhost_scoring::BacktestLimits,
    /// Risk runs (`--runs`): planned here, scored by workers.
    pub runs: Arc<dyn riskhost_runs::Runs>,
    /// The largest JSON body of `POST /v1/runs` (bigger runs are uploaded
    /// as NDJSON, streamed).
    pub run_body_limit: usize,
}

/// HTTP settings.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    pub max_body_bytes: usize,
    /// Body limit of the batch route, which carries many portfolios.
    pub max_batch_body_bytes: usize,
    /// Global concurrency limit and request timeout of the `/v1` routes.
    pub requests: crate::limits::RequestLimits,
    /// Which answers get a `request finished` line.
    pub access_log: crate::request_log::AccessLog,
}

/// The command line's defaults (`--max-body-bytes`, `--max-batch-body-bytes`,
/// `--max-concurrent-requests`, `--request-timeout-ms`).
impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_body_bytes: 8 << 20,
            max_batch_body_bytes: 64 << 20,
            requests: crate::limits::RequestLimits::new(1024, std::time::Duration::from_secs(60)),
            access_log: crate::request_log::AccessLog::default(),
        }
    }
}

/// Every route with its OpenAPI operation. Routes are added only through
/// `routes!`, which registers the handler and its `#[utoipa::path]`
/// together: a route cannot be served undocumented (`tests/it/openapi.rs`
/// checks the document against what the server answers).
pub(crate) fn documented_routes(
    limits: HttpLimits,
    max_component_bytes: usize,
) -> OpenApiRouter<Arc<AppState>> {
    use utoipa::OpenApi as _;
    // The `/v1` routes shed load over the global limit and time out; model
    // management only sheds (a deploy is not cut off half-way). Who may call
    // them is decided by each handler's `Scorer`/`Admin` argument.
    let v1 = OpenApiRouter::new()
        .routes(routes!(score))
        .routes(routes!(score_batch).layer(DefaultBodyLimit::max(limits.max_batch_body_bytes)))
        .routes(routes!(list_models))
        .routes(routes!(purge_cache))
        .routes(routes!(purge_model_cache))
        .routes(routes!(crate::request_log::score_history))
        .routes(routes!(crate::stats::portfolio_stats))
        .routes(routes!(crate::stats::model_stats));
    let models = crate::admin::routes(max_component_bytes).merge(crate::challenger::routes());
    OpenApiRouter::with_openapi(crate::openapi::ApiDoc::openapi())
        .merge(limits.requests.wrap(v1, true))
        .merge(limits.requests.wrap(crate::backtests::routes(), true))
        // Without the timeout: planning a run of every stored portfolio, or
        // reading an upload of a million, outlasts it; results stream.
        .merge(limits.requests.wrap(crate::runs::routes(), false))
        // Without the timeout too: a replay re-runs every score of a batch.
        .merge(limits.requests.wrap(crate::replay::routes(), false))
        .merge(limits.requests.wrap(models, false))
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics_text))
        .routes(routes!(openapi_json))
}

/// The server's router. Layers, innermost first: the default body limit,
/// panic → JSON 500, HTTP metrics, the request span and completion log
/// line, and outermost the request id, so every answer (fallbacks, 405,
/// 413, extractor rejections, panics) carries `x-request-id` and every log
/// line of the request is inside a span naming it.
pub fn router(state: Arc<AppState>, limits: HttpLimits) -> Router {
    let max_component_bytes = state.models.max_component_bytes();
    let access_log = limits.access_log;
    let (routes, document) =
        documented_routes(limits.clone(), max_component_bytes).split_for_parts();
    // Every route's error series exist from start-up, so a rate or an
    // increase over them counts a process's first error too.
    for route in document.paths.paths.keys() {
        for cause in ErrorCause::ALL {
            metrics::counter!("riskhost_http_errors_total", "route" => route.clone(), "cause" => cause.as_str())
                .increment(0);
        }
    }
    let documented_limits = crate::openapi::DocumentedLimits {
        scoring: state.scoring.settings(),
        backtest: state.backtest_limits,
    };
    let document =
        crate::openapi::served(document, &documented_limits, state.auth.anonymous_scoring());
    let document = ServedDocument(Bytes::from(
        serde_json::to_vec(&document).unwrap_or_default(),
    ));
    routes
        .layer(axum::Extension(document))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        .layer(CatchPanicLayer::custom(panicked))
        .layer(middleware::from_fn_with_state(
            Arc::new(HttpMeters::new()),
            track_http,
        ))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(crate::request_log::request_span)
                .on_response(move |response: &Response, latency, span: &tracing::Span| {
                    crate::request_log::log_response(access_log, response, latency, span)
                })
                .on_failure(()),
        )
        .layer(middleware::from_fn(crate::request_log::request_id))
        .with_state(state)
}

/// A batch answer as one JSON body, written into a buffer sized for it up
/// front: grown by doubling from axum's default, a 35 MB answer was copied
/// about twice over and a tenth of an all-hit batch's CPU went to `memmove`
/// and to the kernel zeroing the pages of the discarded buffers.
fn batch_json(response: &riskhost_scoring::BatchResponse) -> Response {
    // Per cell: the fixed fields (version, digest, unit, flags) and about
    // 48 bytes per breakdown entry; a low guess only costs a regrowth.
    let estimate: usize = response
        .results
        .iter()
        .map(|cell| match &cell.outcome {
            riskhost_scoring::CellOutcome::Score(score) => 240 + 48 * score.breakdown.len(),
            riskhost_scoring::CellOutcome::Error { .. } => 240,
        })
        .sum();
    let mut body = Vec::with_capacity(estimate + 256);
    match serde_json::to_writer(&mut body, response) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body,
        )
            .into_response(),
        Err(e) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            format!("the batch answer could not be encoded: {e}"),
        )
        .into_response(),
    }
}

/// The answer to a handler that panicked (a bug): a JSON 500, logged.
fn panicked(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let message = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("a handler panicked");
    tracing::error!(panic = message, "handler panicked");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal_error",
        "the server failed while answering; the request id is in the logs",
    )
    .into_response()
}

/// The body of every error answer.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ErrorBody {
    pub(crate) error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ErrorDetail {
    /// Machine-readable, stable: e.g. `unknown_model`, `invalid_params`.
    #[schema(example = "unknown_model")]
    pub(crate) code: String,
    /// For humans; may change between releases.
    pub(crate) message: String,
}

/// Whose fault an error answer is: the `cause` label of
/// `riskhost_http_errors_total`. The paging alert counts `server` only, so
/// no request content can page anyone: a caller's mistakes are `caller`,
/// and a model failing on an input (its trap, internal error or deadline)
/// is `model`, the model owner's to fix (its own ticket alerts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorCause {
    /// The request: 4xx.
    Caller,
    /// A model's call or answer: 500 `model_*` and 504 `model_timeout`.
    Model,
    /// The host, its dependencies or its capacity: every other 5xx.
    Server,
}

impl ErrorCause {
    /// Every value, so the series exist at 0 from start-up.
    pub(crate) const ALL: [ErrorCause; 3] =
        [ErrorCause::Caller, ErrorCause::Model, ErrorCause::Server];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ErrorCause::Caller => "caller",
            ErrorCause::Model => "model",
            ErrorCause::Server => "server",
        }
    }

    /// The cause of an answer that did not say: by its status class.
    fn of_status(status: StatusCode) -> Option<ErrorCause> {
        if status.is_server_error() {
            Some(ErrorCause::Server)
        } else if status.is_client_error() {
            Some(ErrorCause::Caller)
        } else {
            None
        }
    }
}

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    cause: ErrorCause,
    retry_after_secs: Option<u32>,
    extra_header: Option<(header::HeaderName, HeaderValue)>,
}

impl ApiError {
    /// An answer whose cause is its status class (4xx the caller's, 5xx the
    /// server's); model failures come from `From<ScoreError>`.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            cause: ErrorCause::of_status(status).unwrap_or(ErrorCause::Server),
            retry_after_secs: None,
            extra_header: None,
        }
    }

    /// Asks the client to retry after `secs` (503s).
    pub(crate) fn with_retry_after(mut self, secs: u32) -> Self {
        self.retry_after_secs = Some(secs);
        self
    }

    /// Adds a header to the answer (e.g. `WWW-Authenticate`).
    pub(crate) fn with_header(mut self, name: header::HeaderName, value: &'static str) -> Self {
        self.extra_header = Some((name, HeaderValue::from_static(value)));
        self
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message,
            },
        });
        let mut response = (self.status, body).into_response();
        if let Some(secs) = self.retry_after_secs {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some((name, value)) = self.extra_header {
            response.headers_mut().insert(name, value);
        }
        // For `track_http`, which labels the error with it.
        response.extensions_mut().insert(self.cause);
        response
    }
}

impl From<ScoreError> for ApiError {
    fn from(error: ScoreError) -> Self {
        let (status, retry_after_secs) = match error.class() {
            ErrorClass::InvalidRequest => (StatusCode::UNPROCESSABLE_ENTITY, None),
            ErrorClass::NotFound => (StatusCode::NOT_FOUND, None),
            ErrorClass::Overloaded => (StatusCode::SERVICE_UNAVAILABLE, Some(1)),
            ErrorClass::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, Some(5)),
            ErrorClass::Timeout => (StatusCode::GATEWAY_TIMEOUT, None),
            ErrorClass::ModelFailure | ErrorClass::Internal => {
                (StatusCode::INTERNAL_SERVER_ERROR, None)
            }
        };
        let cause = match error.class() {
            ErrorClass::InvalidRequest | ErrorClass::NotFound => ErrorCause::Caller,
            // The model's code failed on this input or ran past its own
            // deadline: any caller can provoke it, only its owner can fix it.
            ErrorClass::ModelFailure | ErrorClass::Timeout => ErrorCause::Model,
            ErrorClass::Overloaded | ErrorClass::Unavailable | ErrorClass::Internal => {
                ErrorCause::Server
            }
        };
        ApiError {
            status,
            code: error.code(),
            message: error.to_string(),
            cause,
            retry_after_secs,
            extra_header: None,
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let code = match &rejection {
            JsonRejection::JsonDataError(_) => "invalid_body",
            JsonRejection::JsonSyntaxError(_) => "malformed_json",
            JsonRejection::MissingJsonContentType(_) => "unsupported_media_type",
            JsonRejection::BytesRejection(_) => "body_too_large",
            _ => "invalid_body",
        };
        let status = match rejection.status() {
            // axum reports an over-long body as 413 inside the bytes rejection.
            s if s == StatusCode::PAYLOAD_TOO_LARGE => s,
            s if s == StatusCode::UNSUPPORTED_MEDIA_TYPE => s,
            s if s == StatusCode::BAD_REQUEST => s,
            _ => StatusCode::UNPROCESSABLE_ENTITY,
        };
        let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "body_too_large"
        } else {
            code
        };
        // A number beyond f64 (`1e999`, the JSON spelling of infinity) is
        // well-formed JSON with an unusable value: 422, like other bad values.
        let text = rejection.body_text();
        if code == "malformed_json" && text.contains("number out of range") {
            return ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_number", text);
        }
        ApiError::new(status, code, text)
    }
}

/// The request's media type, lower-cased and without parameters
/// (`application/json; charset=utf-8` → `application/json`).
pub(crate) fn media_type(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
}

/// `Json` whose rejections are JSON errors too. It reads the whole body
/// before judging the content type, so a rejected request leaves its
/// keep-alive connection usable for the client's next request.
pub(crate) struct ApiJson<T>(pub(crate) T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = media_type(request.headers()).is_some_and(|mime| {
            mime == "application/json"
                || (mime.starts_with("application/") && mime.ends_with("+json"))
        });
        let body = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "body_too_large",
                        rejection.body_text(),
                    )
                } else {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "unreadable_body",
                        rejection.body_text(),
                    )
                }
            })?;
        if !is_json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "expected a body with `Content-Type: application/json`",
            ));
        }
        // Plain serde_json for the body that parses, which is nearly every
        // body: axum's `Json` tracks the path of every field it visits, which
        // only its error text needs. A body that fails is parsed again
        // through it, so errors still name the field.
        if let Ok(value) = serde_json::from_slice::<T>(&body) {
            return Ok(ApiJson(value));
        }
        Json::<T>::from_bytes(&body)
            .map(|Json(v)| ApiJson(v))
            .map_err(ApiError::from)
    }
}

/// `Path` whose rejections are JSON errors too: a parameter that does not
/// decode (`%FF` is not UTF-8) or parse is a 400 `invalid_path`. Every route
/// with a path parameter takes it through this extractor.
pub(crate) struct ApiPath<T>(pub(crate) T);

impl<S, T> FromRequestParts<S> for ApiPath<T>
where
    T: serde::de::DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(v)| ApiPath(v))
            .map_err(|rejection| {
                // A route whose parameters do not fit its extractor is a bug (500).
                let (status, code) = if rejection.status().is_server_error() {
                    (StatusCode::INTERNAL_SERVER_ERROR, "internal_error")
                } else {
                    (StatusCode::BAD_REQUEST, "invalid_path")
                };
                ApiError::new(status, code, rejection.body_text())
            })
    }
}

/// Scores one portfolio with one model.
#[utoipa::path(
    post,
    path = "/v1/score",
    tag = "scoring",
    request_body = ScoreRequest,
    security(("bearer" = ["score"])),
    responses(
        (status = 200, description = "The score", body = ScoreResponse),
        (status = 400, description = "Malformed JSON or unreadable body (`malformed_json`, `unreadable_body`)", body = ErrorBody),
        (status = 404, description = "Unknown model, version or stored portfolio (`unknown_model`, `unknown_model_version`, `unknown_portfolio`)", body = ErrorBody),
        (status = 413, description = "Body over `--max-body-bytes` (`body_too_large`)", body = ErrorBody),
        (status = 415, description = "Not `application/json` (`unsupported_media_type`)", body = ErrorBody),
        (status = 422, description = "Invalid request, parameters, portfolio or as-of date, or the model rejected the input (`invalid_body`, `invalid_params`, `invalid_portfolio`, `unknown_instrument`, `as_of_out_of_range`, `model_invalid_input`, `insufficient_data`)", body = ErrorBody),
        (status = 500, description = "The model failed (trap, internal error) or the host did", body = ErrorBody),
        (status = 503, description = "The model is overloaded or its version or the data source is unavailable; retry after `Retry-After` seconds", body = ErrorBody,
            headers(("retry-after" = u32, description = "Seconds to wait before retrying"))),
        (status = 504, description = "The model call hit its deadline (`timeout`)", body = ErrorBody),
        crate::openapi::AuthErrors,
    )
)]
async fn score(
    _: crate::auth::Scorer,
    State(state): State<Arc<AppState>>,
    ApiJson(request): ApiJson<ScoreRequest>,
) -> Result<Json<ScoreResponse>, ApiError> {
    Ok(Json(state.scoring.score(request).await?))
}

impl From<BatchError> for ApiError {
    fn from(error: BatchError) -> Self {
        let message = error.to_string();
        match error {
            BatchError::Score(e) => ApiError::from(e),
            BatchError::TooLarge { .. } => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "batch_too_large", message)
            }
            BatchError::Params { .. } | BatchError::UnusedParam(_) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_params", message)
            }
            BatchError::Empty(_) | BatchError::DuplicateModel(_) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_batch", message)
            }
        }
    }
}

/// Scores many portfolios with many models: JSON `{"as_of", "results": [...]}`,
/// or with `Accept: application/x-ndjson` one cell per line, streamed.
///
/// A failing cell carries its own `error`; the request fails as a whole only
/// when it is invalid as a whole.
#[utoipa::path(
    post,
    path = "/v1/score/batch",
    tag = "scoring",
    request_body = BatchRequest,
    security(("bearer" = ["score"])),
    params(
        ("accept" = Option<String>, Header, description = "`application/x-ndjson` streams one `BatchCell` per line instead of one JSON document"),
    ),
    responses(
        (status = 200, description = "One cell per (portfolio, model), portfolio-major. With `Accept: application/x-ndjson`, each line is one `BatchCell`.",
            content(
                (riskhost_scoring::BatchResponse = "application/json"),
                (riskhost_scoring::BatchCell = "application/x-ndjson"),
            )),
        (status = 400, description = "Malformed JSON or unreadable body", body = ErrorBody),
        (status = 404, description = "Unknown model or version (`unknown_model`, `unknown_model_version`)", body = ErrorBody),
        (status = 413, description = "Body over `--max-batch-body-bytes`, or too many portfolios or models (`body_too_large`, `batch_too_large`)", body = ErrorBody),
        (status = 415, description = "Not `application/json`", body = ErrorBody),
        (status = 422, description = "Invalid batch or parameters (`invalid_body`, `invalid_batch`, `invalid_params`)", body = ErrorBody),
        (status = 503, description = "Overloaded or unavailable; retry after `Retry-After` seconds", body = ErrorBody,
            headers(("retry-after" = u32, description = "Seconds to wait before retrying"))),
        crate::openapi::AuthErrors,
    )
)]
async fn score_batch(
    _: crate::auth::Scorer,
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    ApiJson(request): ApiJson<BatchRequest>,
) -> Result<Response, ApiError> {
    let wants_ndjson = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/x-ndjson"));
    let response = state.scoring.score_batch(request).await?;
    if !wants_ndjson {
        return Ok(batch_json(&response));
    }
    let lines = futures::stream::iter(response.results.into_iter().map(|cell| {
        let mut line = serde_json::to_vec(&cell).unwrap_or_else(|e| {
            serde_json::to_vec(
                &json!({"error": {"code": "internal_error", "message": e.to_string()}}),
            )
            .unwrap_or_default()
        });
        line.push(b'\n');
        Ok::<_, std::convert::Infallible>(Bytes::from(line))
    }));
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-ndjson"),
        )],
        Body::from_stream(lines),
    )
        .into_response())
}

/// A served model.
#[derive(Serialize, ToSchema)]
struct ModelView {
    name: String,
    version: String,
    digest: String,
    size_bytes: usize,
    source: String,
    #[serde(serialize_with = "rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    loaded_at: std::time::SystemTime,
    /// Always `active`.
    #[schema(value_type = String)]
    status: &'static str,
    info: riskhost_engine::ModelDescription,
    limits: LimitsView,
}

/// The limits a model's calls run under, defaults and overrides resolved.
#[derive(Serialize, ToSchema)]
struct LimitsView {
    memory_bytes: usize,
    deadline_ms: u128,
    deadline_per_job_us: u128,
    deadline_cap_ms: u128,
    #[serde(skip_serializing_if = "Option::is_none")]
    fuel_base: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fuel_per_job: Option<u64>,
    max_concurrent: usize,
    max_queued: usize,
}

impl LimitsView {
    fn of(entry: &riskhost_models::ModelEntry) -> LimitsView {
        let limits = &entry.model.limits;
        let bulkhead = entry.bulkhead.limits();
        LimitsView {
            memory_bytes: limits.memory_bytes,
            deadline_ms: limits.deadline_base.as_millis(),
            deadline_per_job_us: limits.deadline_per_job.as_micros(),
            deadline_cap_ms: limits.deadline_cap.as_millis(),
            fuel_base: limits.fuel.map(|f| f.base),
            fuel_per_job: limits.fuel.map(|f| f.per_job),
            max_concurrent: bulkhead.max_concurrent,
            max_queued: bulkhead.max_queued,
        }
    }
}

/// `GET /v1/models`.
#[derive(Serialize, ToSchema)]
struct ModelsView {
    models: Vec<ModelView>,
    /// Components that failed to load, with the reason.
    failures: Vec<LoadFailure>,
}

/// The active version of every served model, and components that failed to load.
#[utoipa::path(
    get,
    path = "/v1/models",
    tag = "models",
    security(("bearer" = ["score"])),
    responses(
        (status = 200, description = "Served models", body = ModelsView),
        crate::openapi::AuthErrors,
    )
)]
async fn list_models(
    _: crate::auth::Scorer,
    State(state): State<Arc<AppState>>,
) -> Json<impl Serialize> {
    let registry = state.scoring.registry();
    let models = registry
        .active()
        .values()
        .map(|entry| ModelView {
            name: entry.model.name().to_owned(),
            version: entry.model.version().to_owned(),
            digest: entry.model.digest.clone(),
            size_bytes: entry.model.size_bytes,
            source: entry.source.clone(),
            loaded_at: entry.loaded_at,
            status: "active",
            info: entry.model.description.clone(),
            limits: LimitsView::of(entry),
        })
        .collect();
    Json(ModelsView {
        models,
        failures: registry.failures(),
    })
}

/// `GET /healthz`.
#[derive(Serialize, ToSchema)]
struct Health {
    /// Always `ok`.
    #[schema(value_type = String, example = "ok")]
    status: &'static str,
}

/// `GET /readyz`.
#[derive(Serialize, ToSchema)]
struct Readiness {
    ready: bool,
    models_loaded: usize,
    load_failures: usize,
    /// Why not ready: `loading models`, `shutting down`; empty when ready.
    #[schema(value_type = String)]
    reason: &'static str,
}

/// Liveness: answers as soon as the process serves HTTP.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    responses((status = 200, description = "Alive", body = Health))
)]
async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// Readiness: models restored and the plugins directory scanned, and not
/// shutting down.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "Loading models or shutting down", body = Readiness),
    )
)]
async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let registry = state.scoring.registry();
    let shutting_down = state.shutting_down.load(Ordering::Acquire);
    let loaded = registry.initial_load_done();
    let ready = loaded && !shutting_down;
    let body = Json(Readiness {
        ready,
        models_loaded: registry.active().len(),
        load_failures: registry.failures().len(),
        reason: if shutting_down {
            "shutting down"
        } else if !loaded {
            "loading models"
        } else {
            ""
        },
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, body).into_response()
}

/// Prometheus metrics (`riskhost_*`).
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses((status = 200, description = "Metrics in the text exposition format",
        content((crate::openapi::MetricsText = "text/plain; version=0.0.4; charset=utf-8"))))
)]
async fn metrics_text(State(state): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// This API's OpenAPI 3.1 document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    responses((status = 200, description = "The OpenAPI document",
        content((crate::openapi::DocumentSchema = "application/json"))))
)]
async fn openapi_json(axum::Extension(document): axum::Extension<ServedDocument>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        document.0,
    )
        .into_response()
}

/// The document this server serves, encoded once: it states the limits of
/// this server's flags.
#[derive(Clone)]
struct ServedDocument(Bytes);

async fn not_found(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no route for {} {}", request.method(), request.uri().path()),
    )
}

async fn method_not_allowed(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!(
            "{} is not allowed on {}",
            request.method(),
            request.uri().path()
        ),
    )
}

/// The `method` label: one of a fixed set, whatever the client sent (an
/// extension method is any token, of any length: each would be a series).
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// The HTTP metrics' handles. Each answer's labels come from bounded sets
/// (the route template, `unmatched` when none matched; the method,
/// `method_label`; the status code), so their handles are looked up once
/// per combination and kept: building three labels and searching the
/// recorder's registry on every request was a few per cent of a memo hit.
struct HttpMeters {
    in_flight: metrics::Gauge,
    answers: std::sync::RwLock<AnswersByMethodAndStatus>,
}

/// By (method, status), then by route: a route is found by `&str`.
type AnswersByMethodAndStatus = HashMap<(&'static str, u16), HashMap<Box<str>, AnswerMeters>>;

struct AnswerMeters {
    requests: metrics::Counter,
    duration: metrics::Histogram,
}

impl HttpMeters {
    /// Handles of the recorder installed now: build after it.
    fn new() -> Self {
        HttpMeters {
            in_flight: metrics::gauge!("riskhost_http_requests_in_flight"),
            answers: std::sync::RwLock::new(HashMap::new()),
        }
    }

    fn record(&self, route: &str, method: &'static str, status: StatusCode, seconds: f64) {
        let key = (method, status.as_u16());
        if let Ok(answers) = self.answers.read()
            && let Some(meters) = answers.get(&key).and_then(|routes| routes.get(route))
        {
            meters.requests.increment(1);
            meters.duration.record(seconds);
            return;
        }
        let labels = [
            ("route", route.to_owned()),
            ("method", method.to_owned()),
            ("status", status.as_u16().to_string()),
        ];
        let meters = AnswerMeters {
            requests: metrics::counter!("riskhost_http_requests_total", &labels),
            duration: metrics::histogram!("riskhost_http_request_duration_seconds", &labels),
        };
        meters.requests.increment(1);
        meters.duration.record(seconds);
        if let Ok(mut answers) = self.answers.write() {
            answers.entry(key).or_default().insert(route.into(), meters);
        }
    }
}

/// Counts and times requests by route, method and status (`HttpMeters`),
/// and error answers by route and [`ErrorCause`].
async fn track_http(
    State(meters): State<Arc<HttpMeters>>,
    request: Request,
    next: Next,
) -> Response {
    let route = request.extensions().get::<MatchedPath>().cloned();
    let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    let method = method_label(request.method());
    let started = Instant::now();
    meters.in_flight.increment(1.0);
    let response = next.run(request).await;
    meters.in_flight.decrement(1.0);
    let cause = response
        .extensions()
        .get::<ErrorCause>()
        .copied()
        .or_else(|| ErrorCause::of_status(response.status()));
    if let Some(cause) = cause {
        metrics::counter!("riskhost_http_errors_total", "route" => route.to_owned(), "cause" => cause.as_str())
            .increment(1);
    }
    meters.record(
        route,
        method,
        response.status(),
        started.elapsed().as_secs_f64(),
    );
    response
}

/// What a purge dropped.
#[derive(Serialize, ToSchema)]
struct Purged {
    /// The model purged; null for the whole memo.
    model: Option<String>,
    /// In-process entries dropped.
    purged_l1: u64,
    /// Redis keys dropped; null without a Redis tier.
    purged_l2: Option<u64>,
}

/// `DELETE /v1/cache`: drops every memoized outcome (admin).
#[utoipa::path(
    delete,
    path = "/v1/cache",
    tag = "cache",
    security(("bearer" = ["admin"])),
    responses(
        (status = 200, description = "Purged", body = Purged),
        (status = 503, description = "The shared tier could not be purged (`cache_unavailable`)", body = ErrorBody,
            headers(("retry-after" = u32, description = "Seconds to wait before retrying"))),
        crate::openapi::AuthErrors,
    )
)]
async fn purge_cache(
    _admin: crate::auth::Admin,
    State(state): State<Arc<AppState>>,
) -> Result<Json<Purged>, ApiError> {
    purge(&state, None).await
}

/// `DELETE /v1/cache/{model}`: drops one model's memoized outcomes, every
/// version of it (admin). A model that is not loaded may still have entries
/// in the shared tier, so any well-formed name is accepted.
#[utoipa::path(
    delete,
    path = "/v1/cache/{model}",
    tag = "cache",
    security(("bearer" = ["admin"])),
    params(("model" = String, Path, description = "A model name (lower-kebab-case)")),
    responses(
        (status = 200, description = "Purged", body = Purged),
        (status = 400, description = "The name does not decode as UTF-8 (`invalid_path`)", body = ErrorBody),
        (status = 422, description = "Not a model name (`invalid_model_name`)", body = ErrorBody),
        (status = 503, description = "The shared tier could not be purged (`cache_unavailable`)", body = ErrorBody,
            headers(("retry-after" = u32, description = "Seconds to wait before retrying"))),
        crate::openapi::AuthErrors,
    )
)]
async fn purge_model_cache(
    _admin: crate::auth::Admin,
    State(state): State<Arc<AppState>>,
    ApiPath(model): ApiPath<String>,
) -> Result<Json<Purged>, ApiError> {
    let model = riskhost_engine::ModelName::parse(&model).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_model_name",
            e.to_string(),
        )
    })?;
    purge(&state, Some(&model)).await
}

async fn purge(state: &AppState, model: Option<&str>) -> Result<Json<Purged>, ApiError> {
    match state.scoring.cache().purge(model).await {
        Ok(report) => {
            tracing::info!(
                model = model.unwrap_or("*"),
                purged_l1 = report.purged_l1,
                purged_l2 = ?report.purged_l2,
                "memo purged"
            );
            Ok(Json(Purged {
                model: model.map(str::to_owned),
                purged_l1: report.purged_l1,
                purged_l2: report.purged_l2,
            }))
        }
        Err(error) => {
            tracing::warn!(model = model.unwrap_or("*"), %error, "memo purge incomplete");
            let mut answer = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "cache_unavailable",
                error.to_string(),
            );
            answer.retry_after_secs = Some(5);
            Err(answer)
        }
    }
}
