//! The request as the logs and score events see it: the request-id middleware, the request
//! span and its completion log line, and `GET /v1/portfolios/{id}/scores`.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{MatchedPath, Query, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::api::{ApiError, AppState};
use riskhost_events::{HistoryEntry, HistoryError, HistoryQuery, with_request};

pub(crate) const REQUEST_ID_HEADER: &str = "x-request-id";

/// Longest accepted client request id; longer ones are replaced.
pub(crate) const MAX_REQUEST_ID: usize = 128;

/// The request's id, in the request's extensions (for the request span).
#[derive(Debug, Clone)]
pub(crate) struct RequestId(pub(crate) Arc<str>);

/// Uses the client's `x-request-id` when it is 1–128 visible ASCII
/// characters, else a fresh UUID; scopes it for the handlers and echoes it.
/// It is the outermost layer of the router, so every answer carries it.
pub(crate) async fn request_id(mut request: Request, next: Next) -> Response {
    let id: Arc<str> = request
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty() && v.len() <= MAX_REQUEST_ID && v.bytes().all(|b| b.is_ascii_graphic())
        })
        .map(Arc::from)
        .unwrap_or_else(|| Arc::from(uuid::Uuid::new_v4().to_string()));
    let header = HeaderValue::from_str(&id).ok();
    request.extensions_mut().insert(RequestId(id.clone()));
    let mut response = with_request(id, next.run(request)).await;
    if let Some(header) = header {
        response.headers_mut().insert(REQUEST_ID_HEADER, header);
    }
    response
}

/// The span of one HTTP request: every log line of the request is inside
/// it. `key_id` is recorded by authentication once the key is known.
pub(crate) fn request_span(request: &Request) -> tracing::Span {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str);
    let request_id = request
        .extensions()
        .get::<RequestId>()
        .map_or("", |id| &*id.0);
    // Probes and scrapes arrive every few seconds from every orchestrator
    // and Prometheus: their spans (and so their completion lines) are at
    // debug, so the default log shows the traffic that matters.
    if matches!(route, "/healthz" | "/readyz" | "/metrics") {
        return tracing::debug_span!(
            "request",
            request_id,
            method = %request.method(),
            route,
            key_id = tracing::field::Empty,
        );
    }
    tracing::info_span!(
        "request",
        request_id,
        method = %request.method(),
        route,
        key_id = tracing::field::Empty,
    )
}

/// Which answers get a `request finished` line (`--access-log`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AccessLog {
    /// Every answer.
    All,
    /// Answers with a 4xx or 5xx status. The default: a line per answer
    /// cost a memo hit 7–10 % of its throughput (BENCHMARKS.md), and at
    /// tens of thousands of requests a second it is a volume few operators
    /// ship; every request is still counted by route and status in the
    /// metrics, and every score is a score event.
    #[default]
    Errors,
    /// None.
    Off,
}

impl AccessLog {
    fn logs(self, status: StatusCode) -> bool {
        match self {
            AccessLog::All => true,
            AccessLog::Errors => status.is_client_error() || status.is_server_error(),
            AccessLog::Off => false,
        }
    }
}

/// The completion line of a request (the access log), inside its span,
/// when `policy` logs its status. Its own target, so
/// `RUST_LOG=info,riskhost::access=warn` also turns it off.
pub(crate) fn log_response(
    policy: AccessLog,
    response: &Response,
    latency: Duration,
    span: &tracing::Span,
) {
    if span.is_disabled() || !policy.logs(response.status()) {
        // A probe's debug-level span below the log level: no line either.
        return;
    }
    tracing::info!(
        target: "riskhost::access",
        status = response.status().as_u16(),
        latency_us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX),
        "request finished"
    );
}

/// Query string of the history route.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct HistoryParams {
    /// Only this model's scores.
    pub(crate) model: Option<String>,
    /// `YYYY-MM-DD` (start of that day, UTC) or RFC 3339; inclusive.
    #[param(schema_with = crate::openapi::date_or_date_time)]
    pub(crate) from: Option<String>,
    /// `YYYY-MM-DD` (the whole day is included) or RFC 3339 (exclusive).
    #[param(schema_with = crate::openapi::date_or_date_time)]
    pub(crate) to: Option<String>,
    /// At most 10,000; 1,000 by default.
    #[param(minimum = 1, maximum = 10000)]
    pub(crate) limit: Option<u32>,
}

/// A portfolio's recorded scores, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct HistoryResponse {
    pub(crate) portfolio_id: String,
    pub(crate) scores: Vec<HistoryEntry>,
}

const MAX_LIMIT: u32 = 10_000;

pub(crate) fn parse_bound(
    name: &str,
    text: &str,
    end_of_day: bool,
) -> Result<DateTime<Utc>, String> {
    if let Ok(date) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        let day = if end_of_day {
            date.succ_opt().unwrap_or(date)
        } else {
            date
        };
        return Ok(day.and_time(chrono::NaiveTime::MIN).and_utc());
    }
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            format!("`{name}` must be YYYY-MM-DD or an RFC 3339 timestamp, got {text:?}: {e}")
        })
}

fn invalid_query(message: String) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_query", message)
}

/// `GET /v1/portfolios/{id}/scores?model=&from=&to=&limit=`: the scores
/// recorded for a portfolio, oldest first.
#[utoipa::path(
    get,
    path = "/v1/portfolios/{id}/scores",
    tag = "events",
    security(("bearer" = ["score"])),
    params(("id" = String, Path, description = "The portfolio id the scores were recorded under"), HistoryParams),
    responses(
        (status = 200, description = "The recorded scores", body = HistoryResponse),
        (status = 400, description = "The id does not decode as UTF-8 (`invalid_path`)", body = crate::api::ErrorBody),
        (status = 404, description = "Score events are not recorded (`history_not_configured`)", body = crate::api::ErrorBody),
        (status = 422, description = "Invalid query (`invalid_query`)", body = crate::api::ErrorBody),
        (status = 503, description = "ClickHouse is unavailable (`data_unavailable`)", body = crate::api::ErrorBody,
            headers(("retry-after" = u32, description = "Seconds to wait before retrying"))),
        crate::openapi::AuthErrors,
    )
)]
pub(crate) async fn score_history(
    _: crate::auth::Scorer,
    State(state): State<Arc<AppState>>,
    crate::api::ApiPath(portfolio_id): crate::api::ApiPath<String>,
    params: Result<Query<HistoryParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<HistoryResponse>, ApiError> {
    let Query(params) = params.map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_query",
            e.body_text(),
        )
    })?;
    let from = params
        .from
        .as_deref()
        .map(|t| parse_bound("from", t, false))
        .transpose()
        .map_err(invalid_query)?;
    let to = params
        .to
        .as_deref()
        .map(|t| parse_bound("to", t, true))
        .transpose()
        .map_err(invalid_query)?;
    if let (Some(f), Some(t)) = (from, to)
        && f >= t
    {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_query",
            format!("`from` ({f}) must be before `to` ({t})"),
        ));
    }
    let limit = params.limit.unwrap_or(1000);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_query",
            format!("`limit` must be 1 to {MAX_LIMIT}, got {limit}"),
        ));
    }
    let query = HistoryQuery {
        portfolio_id: portfolio_id.clone(),
        model: params.model,
        from,
        to,
        limit,
    };
    match state.scoring.events().history(&query).await {
        Ok(scores) => Ok(Json(HistoryResponse {
            portfolio_id,
            scores,
        })),
        Err(e @ HistoryError::NotConfigured) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "history_not_configured",
            e.to_string(),
        )),
        Err(e @ HistoryError::Unavailable(_)) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "data_unavailable",
            e.to_string(),
        )
        .with_retry_after(5)),
    }
}
