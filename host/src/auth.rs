//! Authentication of the admin API (model uploads, rollbacks, deletes,
//! cache purges): a bearer token from configuration.
//!
//! Handlers take [`Admin`] as an argument; a request without the header gets
//! 401, with a wrong token 403, and when no admin token is configured the
//! admin API is off (403 saying so). Tokens are compared in constant time
//! over their SHA-256 digests, so neither content nor length leaks.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::api::{ApiError, AppState};

/// The configured admin token, kept only as a digest.
#[derive(Clone)]
pub struct AdminToken {
    digest: Option<[u8; 32]>,
}

impl AdminToken {
    pub fn new(token: Option<&str>) -> Self {
        AdminToken {
            digest: token
                .filter(|t| !t.is_empty())
                .map(|t| Sha256::digest(t.as_bytes()).into()),
        }
    }

    pub fn is_configured(&self) -> bool {
        self.digest.is_some()
    }

    fn verify(&self, presented: &str) -> bool {
        match &self.digest {
            Some(expected) => {
                let presented: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
                expected.ct_eq(&presented).into()
            }
            None => false,
        }
    }
}

/// Proof that the request carries the admin token.
pub struct Admin;

impl FromRequestParts<Arc<AppState>> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        if !state.admin_token.is_configured() {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "admin_disabled",
                "the admin API is disabled: start riskhost with --admin-token (or RISKHOST_ADMIN_TOKEN)",
            ));
        }
        let presented = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        match presented {
            None => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "send the admin token as `Authorization: Bearer <token>`",
            )
            .with_header(header::WWW_AUTHENTICATE, "Bearer")),
            Some(token) if state.admin_token.verify(token) => Ok(Admin),
            Some(_) => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "the token is not the admin token",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_configured_token_verifies() {
        let token = AdminToken::new(Some("s3cret"));
        assert!(token.verify("s3cret"));
        assert!(!token.verify("s3cret "));
        assert!(!token.verify(""));
        let off = AdminToken::new(None);
        assert!(!off.is_configured() && !off.verify(""));
        assert!(!AdminToken::new(Some("")).is_configured());
    }
}
