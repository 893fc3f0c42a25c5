//! The `Scorer` and `Admin` extractors every `/v1` handler takes first: they
//! hand the request's `Authorization` value and peer address to
//! [`riskhost_auth::Authenticator`], record the caller's key id for the
//! request (span, score events), and turn an [`AuthError`] into its answer.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use riskhost_auth::{AuthError, Caller, Scope};

use crate::api::{ApiError, AppState};

/// Proof that the caller may use a `score` route (a key of scope `score` or
/// `admin`, or an anonymous caller under `--anonymous-scoring`). Only this
/// module can make one (the private field); the caller's key id is
/// recorded here, and the backtest routes read it to keep a backtest for
/// the key that ran it ([`Scorer::key_id`]).
pub(crate) struct Scorer(Caller);

impl Scorer {
    /// The caller's key id; empty for an anonymous caller.
    pub(crate) fn key_id(&self) -> &str {
        self.0.key_id()
    }
}

/// Proof that the caller holds a key of scope `admin`; made only here.
/// Its key id goes into the model registry's audit log ([`Admin::key_id`]).
pub(crate) struct Admin(Caller);

impl Admin {
    /// The caller's key id.
    pub(crate) fn key_id(&self) -> &str {
        self.0.key_id()
    }
}

impl FromRequestParts<Arc<AppState>> for Scorer {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        authorize(parts, state, Scope::Score).await.map(Scorer)
    }
}

impl FromRequestParts<Arc<AppState>> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        authorize(parts, state, Scope::Admin).await.map(Admin)
    }
}

async fn authorize(parts: &Parts, state: &AppState, needed: Scope) -> Result<Caller, ApiError> {
    let authorization = parts
        .headers
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    let caller = state
        .auth
        .authorize(authorization, client_ip(parts), needed)
        .await?;
    if let Caller::Key(id) = &caller {
        riskhost_events::record_key_id(id.clone());
        tracing::Span::current().record("key_id", &**id);
        tracing::debug!(key_id = %id, "authorized");
    }
    Ok(caller)
}

/// The client's address as the connection saw it (no proxy headers: they
/// are the client's to forge).
fn client_ip(parts: &Parts) -> IpAddr {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip())
        .unwrap_or(IpAddr::from([0, 0, 0, 0]))
}

impl From<AuthError> for ApiError {
    fn from(error: AuthError) -> Self {
        let message = error.to_string();
        let code = error.code();
        match error {
            AuthError::Unauthenticated(_) => ApiError::new(StatusCode::UNAUTHORIZED, code, message)
                .with_header(header::WWW_AUTHENTICATE, "Bearer"),
            AuthError::InvalidKey => ApiError::new(StatusCode::UNAUTHORIZED, code, message)
                .with_header(header::WWW_AUTHENTICATE, "Bearer error=\"invalid_token\""),
            AuthError::Forbidden { .. } => ApiError::new(StatusCode::FORBIDDEN, code, message),
            AuthError::RateLimited { retry_after_secs }
            | AuthError::TooManyFailures { retry_after_secs } => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, code, message)
                    .with_retry_after(retry_after_secs)
            }
            AuthError::Unavailable(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, message).with_retry_after(5)
            }
        }
    }
}
