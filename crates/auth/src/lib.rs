//! riskhost-auth: who may call what. API keys, their scopes, the sources
//! keys are looked up in, anonymous scoring and per-caller rate limits.
//!
//! A caller sends `Authorization: Bearer <id>.<secret>`. The key is looked up
//! by id in a [`KeySource`] ([`StaticKeys`] from configuration, or
//! [`PostgresKeys`] with a short cache), and the token's SHA-256 is
//! compared with the stored one in constant time; tokens themselves are never
//! stored or logged. [`Authenticator::authorize`] answers with the [`Caller`]
//! or an [`AuthError`] saying why not; the HTTP layer turns that into a
//! status (401 with `WWW-Authenticate`, 403, 429 with `Retry-After`, 503).
//! Anonymous callers may score only when `--anonymous-scoring` is on,
//! limited per client address.
//!
//! - `keys.rs`: the token format ([`generate_token`], [`token_id`],
//!   [`token_digest`]), scopes, key specs and files, [`StaticKeys`].
//! - `postgres.rs`: [`PostgresKeys`], and the insert, revoke and list of
//!   `riskhost key` ([`insert_key`], [`revoke_key`], [`list_keys`]).
//! - `rate.rs`: [`RateLimits`], the per-key and per-address buckets (this
//!   replica's `governor` buckets, and the fall-back of the shared ones)
//!   and the per-address budget of failed authentications.
//! - `shared_rate.rs`: [`SharedRate`], the fleet-wide buckets: a GCRA in
//!   Redis, one `EVALSHA` per decision, behind a timeout and a circuit
//!   breaker.
//!
//! The crate's API is what this file defines and re-exports.
//!
//! May not: know about HTTP (no axum, no status codes, no headers beyond the
//! `Authorization` value it is handed), or log or store a token.

mod keys;
mod postgres;
mod rate;
mod shared_rate;

use std::net::IpAddr;
use std::sync::Arc;

pub use self::keys::{
    ADMIN_TOKEN_ID, ApiKey, RateOverride, Scope, StaticKeys, digest as token_digest,
    generate_token, key_spec, load_keys_file, parse_key_spec, spec_from_toml, token_id,
};
pub use self::postgres::{
    PostgresKeys, insert as insert_key, list as list_keys, revoke as revoke_key,
};
pub use self::rate::{RateLimits, RateSettings};
pub use self::shared_rate::{SharedRate, SharedRateSettings, SharedRateSetupError};

/// Why a request is refused. Each variant's message is the answer's text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No usable `Authorization` header (401).
    #[error("{0}")]
    Unauthenticated(&'static str),
    /// An unknown, revoked or wrong key (401).
    #[error("the API key is unknown, revoked or wrong")]
    InvalidKey,
    /// A key whose scope does not cover the route (403).
    #[error("key `{key_id}` has scope `{}`; this route needs `{}`", .scope.as_str(), .needed.as_str())]
    Forbidden {
        key_id: String,
        scope: Scope,
        needed: Scope,
    },
    /// Over the caller's rate (429).
    #[error("too many requests from this caller; retry in {retry_after_secs} s")]
    RateLimited { retry_after_secs: u32 },
    /// Too many failed authentications from this address (429); refused
    /// before the key is looked up.
    #[error("too many failed authentications from this address; retry in {retry_after_secs} s")]
    TooManyFailures { retry_after_secs: u32 },
    /// The key store cannot answer (503).
    #[error("{0}")]
    Unavailable(String),
}

impl AuthError {
    /// The stable, machine-readable code of the answer.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Unauthenticated(_) => "unauthenticated",
            AuthError::InvalidKey => "invalid_key",
            AuthError::Forbidden { .. } => "forbidden",
            AuthError::RateLimited { .. } => "rate_limited",
            AuthError::TooManyFailures { .. } => "too_many_auth_failures",
            AuthError::Unavailable(_) => "auth_unavailable",
        }
    }
}

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

    /// Authenticates the `Authorization` header's value (`None` when the
    /// request has none), checks the scope, then takes from the caller's
    /// bucket. `client` is the connection's peer address (anonymous callers'
    /// buckets are per address).
    pub async fn authorize(
        &self,
        authorization: Option<&[u8]>,
        client: IpAddr,
        needed: Scope,
    ) -> Result<Caller, AuthError> {
        let Some(value) = authorization else {
            if needed == Scope::Score && self.anonymous_scoring {
                self.rates.check_ip(client).await.map_err(|wait| {
                    tracing::info!(key_id = "", client = %client, "anonymous caller rate limited");
                    AuthError::RateLimited {
                        retry_after_secs: wait.secs(),
                    }
                })?;
                return Ok(Caller::Anonymous(client));
            }
            return Err(AuthError::Unauthenticated(
                "this route needs an API key: send `Authorization: Bearer <id>.<secret>`",
            ));
        };
        self.rates.check_failures(client).map_err(|wait| {
            metrics::counter!("riskhost_auth_failures_total", "reason" => "throttled").increment(1);
            AuthError::TooManyFailures {
                retry_after_secs: wait.secs(),
            }
        })?;
        let token = std::str::from_utf8(value)
            .ok()
            .filter(|v| v.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b)))
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim());
        let Some((token, id)) = token.and_then(|t| keys::token_id(t).map(|id| (t, id))) else {
            self.rates.record_failure(client);
            return Err(AuthError::Unauthenticated(
                "malformed Authorization header: expected `Authorization: Bearer <id>.<secret>`",
            ));
        };
        let key = self.source.get(id).await.map_err(|e| {
            tracing::warn!(key_id = %id, "cannot look up an API key: {e}");
            AuthError::Unavailable(e.to_string())
        })?;
        let verified = match &key {
            Some(key) => key.verifies(token),
            None => {
                let _ = self.decoy.verifies(token);
                false
            }
        };
        let Some(key) = key.filter(|_| verified) else {
            self.rates.record_failure(client);
            metrics::counter!("riskhost_auth_failures_total", "reason" => "invalid_key")
                .increment(1);
            tracing::info!(key_id = %id, "request with an unknown key or a wrong secret refused");
            return Err(AuthError::InvalidKey);
        };
        if !key.scope.allows(needed) {
            metrics::counter!("riskhost_auth_failures_total", "reason" => "forbidden").increment(1);
            tracing::info!(key_id = %key.id, scope = key.scope.as_str(), needed = needed.as_str(), "request refused: scope too narrow");
            return Err(AuthError::Forbidden {
                key_id: key.id.clone(),
                scope: key.scope,
                needed,
            });
        }
        self.rates
            .check_key(&key.id, key.rate)
            .await
            .map_err(|wait| {
                metrics::counter!("riskhost_rate_limited_total").increment(1);
                tracing::info!(key_id = %key.id, "caller rate limited");
                AuthError::RateLimited {
                    retry_after_secs: wait.secs(),
                }
            })?;
        Ok(Caller::Key(Arc::from(key.id.as_str())))
    }
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
