//! The score-statistics routes, `GET /v1/portfolios/{id}/stats` and
//! `GET /v1/models/{name}/stats`: aggregates per day or hour read from the
//! tables ClickHouse keeps of the score events (`riskhost_events`'s
//! `analytics.rs`). Here only the query string is checked and translated.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::api::{ApiError, ApiPath, AppState};
use crate::request_log::parse_bound;
use riskhost_events::{Bucket, HistoryError, StatsBucket, StatsQuery, StatsSubject};

/// The most buckets one answer may span.
pub(crate) const MAX_BUCKETS: i64 = 1_000;

/// Buckets in the default range (`from` omitted): 30 days or 30 hours.
const DEFAULT_BUCKETS: i64 = 30;

/// Query string of the portfolio statistics route.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct PortfolioStatsParams {
    /// Only this model's scores (else one series per model).
    pub(crate) model: Option<String>,
    /// `YYYY-MM-DD` or RFC 3339, rounded down to its bucket; inclusive. By
    /// default 30 buckets before `to`.
    #[param(schema_with = crate::openapi::date_or_date_time)]
    pub(crate) from: Option<String>,
    /// `YYYY-MM-DD` (the whole day is included) or RFC 3339, rounded up to
    /// a bucket's end; exclusive. By default the end of the current bucket.
    #[param(schema_with = crate::openapi::date_or_date_time)]
    pub(crate) to: Option<String>,
    /// `day` (default) or `hour`.
    #[param(inline, value_type = Option<Bucket>)]
    pub(crate) bucket: Option<String>,
}

/// Query string of the model statistics route.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct ModelStatsParams {
    /// Only this version (the semver `info()` reports; else one series per
    /// version).
    pub(crate) version: Option<String>,
    /// As for the portfolio statistics.
    #[param(schema_with = crate::openapi::date_or_date_time)]
    pub(crate) from: Option<String>,
    /// As for the portfolio statistics.
    #[param(schema_with = crate::openapi::date_or_date_time)]
    pub(crate) to: Option<String>,
    /// `day` (default) or `hour`.
    #[param(inline, value_type = Option<Bucket>)]
    pub(crate) bucket: Option<String>,
}

/// A portfolio's statistics, oldest bucket first; buckets without events
/// are absent.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct PortfolioStatsResponse {
    pub(crate) portfolio_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) model: Option<String>,
    pub(crate) bucket: Bucket,
    pub(crate) from: DateTime<Utc>,
    pub(crate) to: DateTime<Utc>,
    pub(crate) buckets: Vec<StatsBucket>,
}

/// A model's statistics across portfolios, oldest bucket first; buckets
/// without events are absent.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ModelStatsResponse {
    pub(crate) model: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) version: Option<String>,
    pub(crate) bucket: Bucket,
    pub(crate) from: DateTime<Utc>,
    pub(crate) to: DateTime<Utc>,
    pub(crate) buckets: Vec<StatsBucket>,
}

/// A refused query string: its code and message, answered as a 422.
#[derive(Debug)]
struct Refused(&'static str, String);

impl From<Refused> for ApiError {
    fn from(Refused(code, message): Refused) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }
}

fn unprocessable(code: &'static str, message: String) -> Refused {
    Refused(code, message)
}

/// The bucket and the aligned range of a query string, or why not.
fn range(
    from: Option<&str>,
    to: Option<&str>,
    bucket: Option<&str>,
    now: DateTime<Utc>,
) -> Result<(Bucket, DateTime<Utc>, DateTime<Utc>), Refused> {
    let bucket: Bucket = bucket
        .unwrap_or("day")
        .parse()
        .map_err(|e| unprocessable("unknown_bucket", e))?;
    let to = to
        .map(|t| parse_bound("to", t, true))
        .transpose()
        .map_err(|e| unprocessable("invalid_range", e))?
        .unwrap_or(now);
    let to = bucket.ceil(to);
    let from = match from {
        Some(f) => bucket
            .floor(parse_bound("from", f, false).map_err(|e| unprocessable("invalid_range", e))?),
        None => to - chrono::Duration::seconds(DEFAULT_BUCKETS * bucket.seconds()),
    };
    if from >= to {
        return Err(unprocessable(
            "invalid_range",
            format!("`from` ({from}) must be before `to` ({to})"),
        ));
    }
    if from.timestamp() < 0 || to.timestamp() > i64::from(u32::MAX) {
        return Err(unprocessable(
            "invalid_range",
            "the range must lie between 1970 and 2106".into(),
        ));
    }
    let n = (to - from).num_seconds() / bucket.seconds();
    if n > MAX_BUCKETS {
        return Err(unprocessable(
            "too_many_buckets",
            format!("the range spans {n} buckets; at most {MAX_BUCKETS} are answered"),
        ));
    }
    Ok((bucket, from, to))
}

fn query_error(e: axum::extract::rejection::QueryRejection) -> ApiError {
    unprocessable("invalid_query", e.body_text()).into()
}

async fn answer(state: &AppState, query: &StatsQuery) -> Result<Vec<StatsBucket>, ApiError> {
    match state.scoring.events().stats(query).await {
        Ok(buckets) => Ok(buckets.as_ref().clone()),
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

/// `GET /v1/portfolios/{id}/stats?model=&from=&to=&bucket=day|hour`.
#[utoipa::path(
    get,
    path = "/v1/portfolios/{id}/stats",
    tag = "events",
    security(("bearer" = ["score"])),
    params(("id" = String, Path, description = "The portfolio id the scores were recorded under"), PortfolioStatsParams),
    responses(
        (status = 200, description = "Per bucket and model: counts, errors by code, cache-hit share, min/max/mean and p50/p95/p99 of the values", body = PortfolioStatsResponse),
        (status = 400, description = "The id does not decode as UTF-8 (`invalid_path`)", body = crate::api::ErrorBody),
        (status = 404, description = "Score events are not recorded (`history_not_configured`)", body = crate::api::ErrorBody),
        (status = 422, description = "`invalid_query`, `invalid_range`, `unknown_bucket` or `too_many_buckets` (more than 1,000)", body = crate::api::ErrorBody),
        (status = 503, description = "ClickHouse is unavailable (`data_unavailable`)", body = crate::api::ErrorBody,
            headers(("retry-after" = u32, description = "Seconds to wait before retrying"))),
        crate::openapi::AuthErrors,
    )
)]
pub(crate) async fn portfolio_stats(
    _: crate::auth::Scorer,
    State(state): State<Arc<AppState>>,
    ApiPath(portfolio_id): ApiPath<String>,
    params: Result<Query<PortfolioStatsParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<PortfolioStatsResponse>, ApiError> {
    let Query(p) = params.map_err(query_error)?;
    let (bucket, from, to) = range(
        p.from.as_deref(),
        p.to.as_deref(),
        p.bucket.as_deref(),
        Utc::now(),
    )?;
    let query = StatsQuery {
        subject: StatsSubject::Portfolio {
            id: portfolio_id.clone(),
            model: p.model.clone(),
        },
        bucket,
        from,
        to,
    };
    let buckets = answer(&state, &query).await?;
    Ok(Json(PortfolioStatsResponse {
        portfolio_id,
        model: p.model,
        bucket,
        from,
        to,
        buckets,
    }))
}

/// `GET /v1/models/{name}/stats?version=&from=&to=&bucket=day|hour`.
#[utoipa::path(
    get,
    path = "/v1/models/{name}/stats",
    tag = "events",
    security(("bearer" = ["score"])),
    params(("name" = String, Path, description = "The model's name"), ModelStatsParams),
    responses(
        (status = 200, description = "Per bucket and version, across portfolios: counts, errors by code, cache-hit share, min/max/mean and p50/p95/p99 of the values", body = ModelStatsResponse),
        (status = 400, description = "The name does not decode as UTF-8 (`invalid_path`)", body = crate::api::ErrorBody),
        (status = 404, description = "Score events are not recorded (`history_not_configured`)", body = crate::api::ErrorBody),
        (status = 422, description = "`invalid_query`, `invalid_range`, `unknown_bucket` or `too_many_buckets` (more than 1,000)", body = crate::api::ErrorBody),
        (status = 503, description = "ClickHouse is unavailable (`data_unavailable`)", body = crate::api::ErrorBody,
            headers(("retry-after" = u32, description = "Seconds to wait before retrying"))),
        crate::openapi::AuthErrors,
    )
)]
pub(crate) async fn model_stats(
    _: crate::auth::Scorer,
    State(state): State<Arc<AppState>>,
    ApiPath(model): ApiPath<String>,
    params: Result<Query<ModelStatsParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<ModelStatsResponse>, ApiError> {
    let Query(p) = params.map_err(query_error)?;
    let (bucket, from, to) = range(
        p.from.as_deref(),
        p.to.as_deref(),
        p.bucket.as_deref(),
        Utc::now(),
    )?;
    let query = StatsQuery {
        subject: StatsSubject::Model {
            name: model.clone(),
            version: p.version.clone(),
        },
        bucket,
        from,
        to,
    };
    let buckets = answer(&state, &query).await?;
    Ok(Json(ModelStatsResponse {
        model,
        version: p.version,
        bucket,
        from,
        to,
        buckets,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-12-07T06:30:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn code(r: Result<(Bucket, DateTime<Utc>, DateTime<Utc>), Refused>) -> &'static str {
        r.err().map_or("ok", |e| e.0)
    }

    #[test]
    fn ranges_align_and_are_bounded() {
        let (b, from, to) = range(Some("2026-12-01"), Some("2026-12-06"), None, now()).unwrap();
        assert_eq!(b, Bucket::Day);
        assert_eq!((to - from).num_days(), 6, "the `to` day is included");
        let (_, from, to) = range(None, None, Some("hour"), now()).unwrap();
        assert_eq!(to.to_rfc3339(), "2026-12-07T07:00:00+00:00");
        assert_eq!((to - from).num_hours(), 30);
        assert_eq!(
            code(range(None, None, Some("week"), now())),
            "unknown_bucket"
        );
        assert_eq!(
            code(range(Some("2026-12-06"), Some("2026-12-01"), None, now())),
            "invalid_range"
        );
        assert_eq!(
            code(range(Some("yesterday"), None, None, now())),
            "invalid_range"
        );
        assert_eq!(
            code(range(Some("2020-01-01"), None, None, now())),
            "too_many_buckets"
        );
        assert_eq!(
            code(range(Some("2026-01-01"), None, Some("hour"), now())),
            "too_many_buckets"
        );
    }
}
