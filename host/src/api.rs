//! The HTTP API: routes, JSON error bodies and request metrics.
//!
//! Handlers only translate between HTTP and the scoring service; every
//! error leaves as `{"error": {"code": "...", "message": "..."}}` with a
//! status that says whose fault it was (4xx: the request; 5xx: the host or a
//! model; 503 with Retry-After: try again).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, MatchedPath, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use bytes::Bytes;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use serde_json::json;

use crate::registry::{LoadFailure, rfc3339};
use crate::scoring::batch::{BatchError, BatchRequest};
use crate::scoring::{ErrorClass, ScoreError, ScoreRequest, ScoreResponse, ScoringService};

/// Shared by every handler.
pub struct AppState {
    pub scoring: ScoringService,
    pub metrics: PrometheusHandle,
    /// Set when shutdown begins, so `/readyz` turns unready before draining.
    pub shutting_down: AtomicBool,
    /// Keys, scopes, anonymous scoring and per-caller rate limits.
    pub auth: crate::auth::Authenticator,
    /// Deploys, rolls back and removes model versions (the admin routes).
    pub models: Arc<crate::deploy::ModelManager>,
}

/// HTTP settings.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    pub max_body_bytes: usize,
    /// Body limit of the batch route, which carries many portfolios.
    pub max_batch_body_bytes: usize,
    /// Global concurrency limit and request timeout of the `/v1` routes.
    pub requests: crate::limits::RequestLimits,
}

pub fn router(state: Arc<AppState>, limits: HttpLimits) -> Router {
    let max_component_bytes = state.models.max_component_bytes();
    // The `/v1` routes shed load over the global limit and time out; model
    // management only sheds (a deploy is not cut off half-way). Who may call
    // them is decided by each handler's `Scorer`/`Admin` argument.
    let v1 = Router::new()
        .route("/v1/score", post(score))
        .route(
            "/v1/score/batch",
            post(score_batch).layer(DefaultBodyLimit::max(limits.max_batch_body_bytes)),
        )
        .route("/v1/models", get(list_models))
        .route("/v1/cache", delete(purge_cache))
        .route("/v1/cache/{model}", delete(purge_model_cache))
        .route(
            "/v1/portfolios/{id}/scores",
            get(crate::events::http::score_history),
        );
    let v1 = limits.requests.wrap(v1, true).merge(
        limits
            .requests
            .wrap(crate::admin::routes(max_component_bytes), false),
    );
    v1.route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        .layer(middleware::from_fn(crate::auth::key_id_scope))
        .layer(middleware::from_fn(track_http))
        .layer(middleware::from_fn(crate::events::http::request_id))
        .with_state(state)
}

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after_secs: Option<u32>,
    extra_header: Option<(header::HeaderName, HeaderValue)>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after_secs: None,
            extra_header: None,
        }
    }

    /// Asks the client to retry after `secs` (503s).
    pub fn with_retry_after(mut self, secs: u32) -> Self {
        self.retry_after_secs = Some(secs);
        self
    }

    /// Adds a header to the answer (e.g. `WWW-Authenticate`).
    pub fn with_header(mut self, name: header::HeaderName, value: &'static str) -> Self {
        self.extra_header = Some((name, HeaderValue::from_static(value)));
        self
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(json!({ "error": { "code": self.code, "message": self.message } }));
        let mut response = (self.status, body).into_response();
        if let Some(secs) = self.retry_after_secs {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some((name, value)) = self.extra_header {
            response.headers_mut().insert(name, value);
        }
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
        ApiError {
            status,
            code: error.code(),
            message: error.to_string(),
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

/// `Json` whose rejections are JSON errors too. It reads the whole body
/// before judging the content type, so a rejected request leaves its
/// keep-alive connection usable for the client's next request.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|mime| {
                let mime = mime.trim();
                mime.eq_ignore_ascii_case("application/json")
                    || (mime.starts_with("application/") && mime.ends_with("+json"))
            })
            .unwrap_or(false);
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
        Json::<T>::from_bytes(&body)
            .map(|Json(v)| ApiJson(v))
            .map_err(ApiError::from)
    }
}

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

/// `POST /v1/score/batch`: JSON `{"as_of", "results": [...]}`, or with
/// `Accept: application/x-ndjson` one cell per line, streamed.
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
        return Ok(Json(response).into_response());
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

#[derive(Serialize)]
struct ModelView {
    name: String,
    version: String,
    digest: String,
    size_bytes: usize,
    source: String,
    #[serde(serialize_with = "rfc3339")]
    loaded_at: std::time::SystemTime,
    status: &'static str,
    info: crate::engine::ModelDescription,
    limits: LimitsView,
}

/// The limits a model's calls run under, defaults and overrides resolved.
#[derive(Serialize)]
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
    fn of(entry: &crate::registry::ModelEntry) -> LimitsView {
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

#[derive(Serialize)]
struct ModelsView {
    models: Vec<ModelView>,
    /// Components that failed to load, with the reason.
    failures: Vec<LoadFailure>,
}

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

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let registry = state.scoring.registry();
    let shutting_down = state.shutting_down.load(Ordering::Acquire);
    let loaded = registry.initial_load_done();
    let ready = loaded && !shutting_down;
    let body = Json(json!({
        "ready": ready,
        "models_loaded": registry.active().len(),
        "load_failures": registry.failures().len(),
        "reason": if shutting_down { "shutting down" } else if !loaded { "loading models" } else { "" },
    }));
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, body).into_response()
}

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

/// Counts requests by route, method and status, and times them by route.
async fn track_http(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = request.method().to_string();
    let started = Instant::now();
    let in_flight = metrics::gauge!("riskhost_http_requests_in_flight");
    in_flight.increment(1.0);
    let response = next.run(request).await;
    in_flight.decrement(1.0);
    let status = response.status().as_u16().to_string();
    metrics::counter!("riskhost_http_requests_total", "route" => route.clone(), "method" => method, "status" => status)
        .increment(1);
    metrics::histogram!("riskhost_http_request_duration_seconds", "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

/// `DELETE /v1/cache`: drops every memoized outcome (admin).
async fn purge_cache(
    _admin: crate::auth::Admin,
    State(state): State<Arc<AppState>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    purge(&state, None).await
}

/// `DELETE /v1/cache/{model}`: drops one model's memoized outcomes, every
/// version of it (admin). A model that is not loaded may still have entries
/// in the shared tier, so any well-formed name is accepted.
async fn purge_model_cache(
    _admin: crate::auth::Admin,
    State(state): State<Arc<AppState>>,
    Path(model): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if !crate::cache::is_model_name(&model) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_model_name",
            format!(
                "`{}` is not a model name: lower-kebab-case ASCII (a-z, 0-9, '-'), starting with a letter, at most 64 bytes",
                model.chars().take(64).collect::<String>().escape_debug()
            ),
        ));
    }
    purge(&state, Some(&model)).await
}

async fn purge(state: &AppState, model: Option<&str>) -> Result<Json<serde_json::Value>, ApiError> {
    match state.scoring.cache().purge(model).await {
        Ok(report) => {
            tracing::info!(
                model = model.unwrap_or("*"),
                purged_l1 = report.purged_l1,
                purged_l2 = ?report.purged_l2,
                "memo purged"
            );
            Ok(Json(json!({
                "model": model,
                "purged_l1": report.purged_l1,
                "purged_l2": report.purged_l2,
            })))
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
