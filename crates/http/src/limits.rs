//! The global concurrency limit and request timeout of the `/v1` routes:
//! tower layers that shed load (503) instead of queueing without bound, and
//! answer 504 past the timeout. The open routes (`/healthz`, `/readyz`,
//! `/metrics`) are outside them, so probes and scrapes answer under load.

use std::sync::Arc;
use std::time::Duration;

use axum::error_handling::HandleErrorLayer;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tower::limit::GlobalConcurrencyLimitLayer;
use tower::{BoxError, ServiceBuilder};

use crate::api::ApiError;

/// The global concurrency limit and request timeout of the `/v1` routes.
#[derive(Debug, Clone)]
pub struct RequestLimits {
    /// One semaphore shared by every route (a per-route limit would multiply it).
    semaphore: Arc<tokio::sync::Semaphore>,
    max_concurrent: usize,
    pub timeout: Duration,
}

impl RequestLimits {
    pub fn new(max_concurrent: usize, timeout: Duration) -> RequestLimits {
        let max_concurrent = max_concurrent.max(1);
        RequestLimits {
            semaphore: Arc::new(tokio::sync::Semaphore::new(max_concurrent)),
            max_concurrent,
            timeout,
        }
    }

    pub fn max_concurrent(&self) -> usize {
        self.max_concurrent
    }

    /// `router` behind load shedding over the global limit and, when
    /// `with_timeout`, the request timeout. Model uploads go without the
    /// timeout: a deploy is not cut off half-way (the engine bounds
    /// compilation itself).
    /// Its answers (503 `overloaded`, 504 `request_timeout`) are added to
    /// every operation of `router`'s document.
    pub(crate) fn wrap<S>(
        &self,
        mut router: utoipa_axum::router::OpenApiRouter<S>,
        with_timeout: bool,
    ) -> utoipa_axum::router::OpenApiRouter<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        crate::openapi::document_limit_answers(router.get_openapi_mut(), with_timeout);
        let timeout = self.timeout;
        let on_error =
            move |error: BoxError| async move { overloaded_or_timed_out(error, timeout) };
        let shed = ServiceBuilder::new()
            .layer(HandleErrorLayer::new(on_error))
            .load_shed()
            .layer(GlobalConcurrencyLimitLayer::with_semaphore(
                self.semaphore.clone(),
            ));
        if with_timeout {
            router.layer(shed.timeout(timeout))
        } else {
            router.layer(shed)
        }
    }
}

fn overloaded_or_timed_out(error: BoxError, timeout: Duration) -> Response {
    if error.is::<tower::load_shed::error::Overloaded>() {
        metrics::counter!("riskhost_http_shed_total").increment(1);
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "too many requests in flight (--max-concurrent-requests); retry shortly",
        )
        .with_retry_after(1)
        .into_response();
    }
    if error.is::<tower::timeout::error::Elapsed>() {
        metrics::counter!("riskhost_http_timeouts_total").increment(1);
        return ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "request_timeout",
            format!(
                "the request took longer than {} ms (--request-timeout-ms)",
                timeout.as_millis()
            ),
        )
        .into_response();
    }
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal_error",
        error.to_string(),
    )
    .into_response()
}
