//! HTTP pieces of score events: the request-id middleware and
//! `GET /v1/portfolios/{id}/scores`.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use super::{HistoryEntry, HistoryError, HistoryQuery, with_request_id};
use crate::api::{ApiError, AppState};

pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Longest accepted client request id; longer ones are replaced.
const MAX_REQUEST_ID: usize = 128;

/// Uses the client's `x-request-id` when it is 1–128 visible ASCII
/// characters, else a fresh UUID; scopes it for the handlers and echoes it.
pub async fn request_id(request: Request, next: Next) -> Response {
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
    let mut response = with_request_id(id, next.run(request)).await;
    if let Some(header) = header {
        response.headers_mut().insert(REQUEST_ID_HEADER, header);
    }
    response
}

/// Query string of the history route.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryParams {
    pub model: Option<String>,
    /// `YYYY-MM-DD` (start of that day, UTC) or RFC 3339; inclusive.
    pub from: Option<String>,
    /// `YYYY-MM-DD` (the whole day is included) or RFC 3339 (exclusive).
    pub to: Option<String>,
    /// At most 10,000; 1,000 by default.
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize)]
pub struct HistoryResponse {
    pub portfolio_id: String,
    pub scores: Vec<HistoryEntry>,
}

const MAX_LIMIT: u32 = 10_000;

fn parse_bound(name: &str, text: &str, end_of_day: bool) -> Result<DateTime<Utc>, String> {
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

/// `GET /v1/portfolios/{id}/scores?model=&from=&to=&limit=`.
pub async fn score_history(
    _: crate::auth::Scorer,
    State(state): State<Arc<AppState>>,
    Path(portfolio_id): Path<String>,
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
