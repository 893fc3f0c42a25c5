//! Who may call what: API keys, their scopes, anonymous scoring, and the
//! per-caller rate limit.
//!
//! A caller sends `Authorization: Bearer <id>.<secret>`. The key is looked up
//! by id in a [`KeySource`] ([`keys::StaticKeys`] from configuration, or
//! [`postgres::PostgresKeys`] with a short cache), and the token's SHA-256 is
//! compared with the stored one in constant time; tokens themselves are never
//! stored or logged. Handlers take [`Scorer`] (scope `score`: scoring, reading
//! models and history) or [`Admin`] (scope `admin`, which implies `score`) as
//! their first argument. Without a valid key: 401 with `WWW-Authenticate`;
//! with a key whose scope is too narrow: 403; over the caller's rate: 429
//! with `Retry-After`. Anonymous callers may score only when
//! `--anonymous-scoring` is on, limited per client address.
//!
//! The key id of the caller (empty when anonymous) is kept in a task-local
//! for the request ([`current_key_id`]), so score events carry it, and is
//! recorded on the current span and in the log lines this module writes.

pub mod command;
pub mod keys;
pub mod postgres;

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};

use axum::extract::{ConnectInfo, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;

use crate::api::{ApiError, AppState};
use crate::limits::RateLimits;
pub use keys::{ApiKey, Scope};

/// Why a key could not be looked up (not: why it was refused).
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("the key store is unavailable: {0}")]
    Unavailable(String),
}

/// Where keys are looked up; one trait, an embedded and a database backend.
#[async_trait::async_trait]
pub trait KeySource: Send + Sync + 'static {
    /// The key with this id, if there is one that is not revoked.
    async fn get(&self, id: &str) -> Result<Option<Arc<ApiKey>>, KeyError>;
    /// For the start-up log line.
    fn describe(&self) -> String;
}

/// Decides every request to a protected route.
pub struct Authenticator {
    source: Arc<dyn KeySource>,
    anonymous_scoring: bool,
    rates: Arc<RateLimits>,
    /// Compared against when a key id is unknown, so an unknown id costs the
    /// same work as a wrong secret.
    decoy: ApiKey,
}

impl Authenticator {
    pub fn new(
        source: Arc<dyn KeySource>,
        anonymous_scoring: bool,
        rates: Arc<RateLimits>,
    ) -> Authenticator {
        Authenticator {
            source,
            anonymous_scoring,
            rates,
            decoy: ApiKey {
                id: String::new(),
                digest: [0; 32],
                scope: Scope::Score,
                rate: Default::default(),
            },
        }
    }

    pub fn anonymous_scoring(&self) -> bool {
        self.anonymous_scoring
    }

    pub fn source(&self) -> &dyn KeySource {
        self.source.as_ref()
    }

    /// Authenticates, checks the scope, then takes from the caller's bucket.
    async fn authorize(&self, parts: &Parts, needed: Scope) -> Result<Caller, ApiError> {
        let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
            if needed == Scope::Score && self.anonymous_scoring {
                let ip = client_ip(parts);
                self.rates.check_ip(ip).map_err(|wait| {
                    tracing::info!(key_id = "", client = %ip, "anonymous caller rate limited");
                    rate_limited(wait.secs())
                })?;
                return Ok(Caller::Anonymous(ip));
            }
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "this route needs an API key: send `Authorization: Bearer <id>.<secret>`",
            )
            .with_header(header::WWW_AUTHENTICATE, "Bearer"));
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim());
        let Some((token, id)) = token.and_then(|t| keys::token_id(t).map(|id| (t, id))) else {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "malformed Authorization header: expected `Authorization: Bearer <id>.<secret>`",
            )
            .with_header(header::WWW_AUTHENTICATE, "Bearer"));
        };
        let key = self.source.get(id).await.map_err(|e| {
            tracing::warn!(key_id = %id, "cannot look up an API key: {e}");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "auth_unavailable",
                e.to_string(),
            )
            .with_retry_after(5)
        })?;
        let verified = match &key {
            Some(key) => key.verifies(token),
            None => {
                let _ = self.decoy.verifies(token);
                false
            }
        };
        let Some(key) = key.filter(|_| verified) else {
            metrics::counter!("riskhost_auth_failures_total", "reason" => "invalid_key")
                .increment(1);
            tracing::info!(key_id = %id, "request with an unknown key or a wrong secret refused");
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_key",
                "the API key is unknown, revoked or wrong",
            )
            .with_header(header::WWW_AUTHENTICATE, "Bearer error=\"invalid_token\""));
        };
        if !key.scope.allows(needed) {
            metrics::counter!("riskhost_auth_failures_total", "reason" => "forbidden").increment(1);
            tracing::info!(key_id = %key.id, scope = key.scope.as_str(), needed = needed.as_str(), "request refused: scope too narrow");
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!(
                    "key `{}` has scope `{}`; this route needs `{}`",
                    key.id,
                    key.scope.as_str(),
                    needed.as_str()
                ),
            ));
        }
        self.rates.check_key(&key.id, key.rate).map_err(|wait| {
            metrics::counter!("riskhost_rate_limited_total").increment(1);
            tracing::info!(key_id = %key.id, "caller rate limited");
            rate_limited(wait.secs())
        })?;
        Ok(Caller::Key(Arc::from(key.id.as_str())))
    }
}

fn rate_limited(secs: u32) -> ApiError {
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        format!("too many requests from this caller; retry in {secs} s"),
    )
    .with_retry_after(secs)
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

/// Who is calling, once authorized.
#[derive(Debug, Clone)]
pub enum Caller {
    Key(Arc<str>),
    Anonymous(IpAddr),
}

impl Caller {
    /// The key id; empty for an anonymous caller.
    pub fn key_id(&self) -> &str {
        match self {
            Caller::Key(id) => id,
            Caller::Anonymous(_) => "",
        }
    }
}

tokio::task_local! {
    static KEY_ID: Arc<OnceLock<Arc<str>>>;
}

/// The key id of the request being served: empty when anonymous, outside
/// a request (CLI), or before authorization.
pub fn current_key_id() -> String {
    KEY_ID
        .try_with(|id| id.get().map(|id| id.to_string()).unwrap_or_default())
        .unwrap_or_default()
}

/// Middleware giving each request a slot for its key id (see [`current_key_id`]).
pub async fn key_id_scope(request: Request, next: Next) -> Response {
    KEY_ID
        .scope(Arc::new(OnceLock::new()), next.run(request))
        .await
}

fn remember(caller: &Caller) {
    if let Caller::Key(id) = caller {
        let _ = KEY_ID.try_with(|slot| slot.set(id.clone()));
        tracing::Span::current().record("key_id", &**id);
        tracing::debug!(key_id = %id, "authorized");
    }
}

/// Proof that the caller may use a `score` route (a key of scope `score` or
/// `admin`, or an anonymous caller under `--anonymous-scoring`).
pub struct Scorer(pub Caller);

/// Proof that the caller holds a key of scope `admin`.
pub struct Admin(pub Caller);

impl FromRequestParts<Arc<AppState>> for Scorer {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let caller = state.auth.authorize(parts, Scope::Score).await?;
        remember(&caller);
        Ok(Scorer(caller))
    }
}

impl FromRequestParts<Arc<AppState>> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let caller = state.auth.authorize(parts, Scope::Admin).await?;
        remember(&caller);
        Ok(Admin(caller))
    }
}

/// The key settings of `serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct AuthArgs {
    /// Bearer token of an admin key with id `admin` (shorthand for one
    /// `--api-key`): send it as `Authorization: Bearer <token>`. A token
    /// with a `.` must start with `admin.`.
    #[arg(long, env = "RISKHOST_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// An API key, stored as its token's hash:
    /// `ID:sha256=HEX,scopes=score|admin[,rate_per_minute=N][,burst=N]`
    /// (`riskhost key new` prints one). Repeat the flag; the variable
    /// separates keys with `;`. A configuration file's `[[api_keys]]`
    /// tables land here.
    #[arg(
        long = "api-key",
        env = "RISKHOST_API_KEYS",
        value_delimiter = ';',
        hide_env_values = true
    )]
    pub api_keys: Vec<String>,
    /// A TOML file of `[[api_keys]]` tables (id, sha256, scopes,
    /// rate_per_minute, burst), e.g. a mounted secret.
    #[arg(long, env = "RISKHOST_API_KEYS_FILE")]
    pub api_keys_file: Option<std::path::PathBuf>,
    /// Where keys are looked up: `config` (the flags above) or `postgres`
    /// (the `api_keys` table in --postgres-schema, plus the flags above).
    #[arg(
        long,
        env = "RISKHOST_KEYS_SOURCE",
        value_enum,
        default_value = "config"
    )]
    pub keys_source: KeysSourceKind,
    /// How long a key read from PostgreSQL is trusted, in ms: a revocation
    /// takes effect within it.
    #[arg(long, env = "RISKHOST_KEYS_CACHE_TTL_MS", default_value_t = 5000)]
    pub keys_cache_ttl_ms: u64,
    /// Let callers without a key use the `score` routes (scoring, models,
    /// history), rate limited per client address. For local runs only.
    #[arg(long, env = "RISKHOST_ANONYMOUS_SCORING", num_args = 0..=1,
          default_value_t = false, default_missing_value = "true",
          action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    pub anonymous_scoring: bool,
    /// Requests per minute of each key without its own rate, and of each
    /// anonymous client address; 0 turns rate limits off.
    #[arg(long, env = "RISKHOST_RATE_LIMIT_PER_MINUTE", default_value_t = 1000)]
    pub rate_limit_per_minute: u32,
    /// Requests a caller may send at once after being idle.
    #[arg(long, env = "RISKHOST_RATE_LIMIT_BURST", default_value_t = 100)]
    pub rate_limit_burst: u32,
}

/// Where `serve` looks keys up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KeysSourceKind {
    Config,
    Postgres,
}

impl AuthArgs {
    /// The keys given in configuration (flags, variables, files).
    pub fn configured_keys(&self) -> Result<Vec<ApiKey>, String> {
        let mut keys = Vec::new();
        if let Some(token) = self.admin_token.as_deref().filter(|t| !t.is_empty()) {
            if keys::token_id(token) != Some(keys::ADMIN_TOKEN_ID) {
                return Err(
                    "--admin-token must be a token without `.` or one starting with `admin.`, made of visible ASCII"
                        .into(),
                );
            }
            keys.push(ApiKey {
                id: keys::ADMIN_TOKEN_ID.to_owned(),
                digest: keys::digest(token),
                scope: Scope::Admin,
                rate: Default::default(),
            });
        }
        for spec in self.api_keys.iter().filter(|s| !s.trim().is_empty()) {
            keys.push(keys::parse_key_spec(spec)?);
        }
        if let Some(path) = &self.api_keys_file {
            keys.extend(keys::load_keys_file(path)?);
        }
        Ok(keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        auth: AuthArgs,
    }

    #[test]
    fn the_admin_token_is_the_admin_key() {
        let t = T::parse_from(["t", "--admin-token", "s3cret"]);
        let keys = t.auth.configured_keys().unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].id, "admin");
        assert!(keys[0].verifies("s3cret") && !keys[0].verifies("s3cret "));
        assert!(!t.auth.anonymous_scoring);
        let t = T::parse_from(["t", "--admin-token", "ops.s3cret"]);
        assert!(t.auth.configured_keys().is_err());
        let t = T::parse_from(["t", "--anonymous-scoring"]);
        assert!(t.auth.anonymous_scoring);
        let t = T::parse_from(["t", "--anonymous-scoring=false"]);
        assert!(!t.auth.anonymous_scoring);
    }
}
