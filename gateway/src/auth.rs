//! Bearer tokens (RFC 6750): API tokens for predictions, an admin token for purges.
//!
//! With no token configured a route is open, as a gateway behind a private network
//! usually is. Tokens are compared in constant time, every configured one each
//! time, so neither a token nor which one matched leaks through timing.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::Response;
use subtle::{Choice, ConstantTimeEq};

use crate::error::ApiError;

/// The tokens the gateway accepts.
#[derive(Clone, Default)]
pub struct Tokens {
    /// Any of them may ask for predictions.
    pub api: Vec<String>,
    /// May purge; an API token on a purge route is refused with 403.
    pub admin: Option<String>,
    /// Whether `/metrics` and `/openapi.json` need a token too.
    pub protect_metrics: bool,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the tokens themselves.
        f.debug_struct("Tokens")
            .field("api", &self.api.len())
            .field("admin", &self.admin.is_some())
            .field("protect_metrics", &self.protect_metrics)
            .finish()
    }
}

/// What a route gives access to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Predict,
    Metrics,
    Admin,
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

fn matches_any<'a>(presented: &str, tokens: impl IntoIterator<Item = &'a String>) -> bool {
    let mut matched = Choice::from(0);
    for token in tokens {
        matched |= presented.as_bytes().ct_eq(token.as_bytes());
    }
    matched.into()
}

impl Tokens {
    pub fn authorize(&self, access: Access, headers: &HeaderMap) -> Result<(), ApiError> {
        let needs_token = match access {
            Access::Predict => !self.api.is_empty(),
            Access::Metrics => {
                self.protect_metrics && (!self.api.is_empty() || self.admin.is_some())
            }
            Access::Admin => self.admin.is_some() || !self.api.is_empty(),
        };
        if !needs_token {
            return Ok(());
        }
        let presented = bearer(headers).ok_or(ApiError::Unauthorized(
            "this route needs a token: Authorization: Bearer <token>",
        ))?;
        let is_admin = matches_any(presented, self.admin.iter());
        let is_api = matches_any(presented, &self.api);
        match access {
            Access::Predict | Access::Metrics if is_api || is_admin => Ok(()),
            Access::Admin if is_admin => Ok(()),
            // Without an admin token, API tokens may purge.
            Access::Admin if is_api && self.admin.is_none() => Ok(()),
            Access::Admin if is_api => Err(ApiError::Forbidden(
                "this route needs the admin token, not an API token",
            )),
            _ => Err(ApiError::Unauthorized("the token is not valid")),
        }
    }
}

async fn guard(
    tokens: &Tokens,
    access: Access,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    tokens.authorize(access, request.headers())?;
    Ok(next.run(request).await)
}

/// Middleware of the prediction routes.
pub async fn require_api_token(
    State(tokens): State<Arc<Tokens>>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    guard(&tokens, Access::Predict, request, next).await
}

/// Middleware of `/metrics` and `/openapi.json`.
pub async fn require_metrics_token(
    State(tokens): State<Arc<Tokens>>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    guard(&tokens, Access::Metrics, request, next).await
}

/// Middleware of the purge routes.
pub async fn require_admin_token(
    State(tokens): State<Arc<Tokens>>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    guard(&tokens, Access::Admin, request, next).await
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn with_authorization(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        headers
    }

    fn tokens() -> Tokens {
        Tokens {
            api: vec!["api-one".into(), "api-two".into()],
            admin: Some("admin-s3cret".into()),
            protect_metrics: false,
        }
    }

    #[test]
    fn without_configured_tokens_everything_is_open() {
        let open = Tokens::default();
        for access in [Access::Predict, Access::Metrics, Access::Admin] {
            assert!(open.authorize(access, &HeaderMap::new()).is_ok());
        }
    }

    #[test]
    fn any_api_token_may_predict() {
        let tokens = tokens();
        for token in ["api-one", "api-two", "admin-s3cret"] {
            let headers = with_authorization(&format!("Bearer {token}"));
            assert!(
                tokens.authorize(Access::Predict, &headers).is_ok(),
                "{token}"
            );
        }
        for headers in [
            HeaderMap::new(),
            with_authorization("Bearer api-on"),
            with_authorization("Basic api-one"),
        ] {
            assert!(matches!(
                tokens.authorize(Access::Predict, &headers),
                Err(ApiError::Unauthorized(_))
            ));
        }
    }

    #[test]
    fn purges_need_the_admin_token_and_an_api_token_is_forbidden() {
        let tokens = tokens();
        assert!(
            tokens
                .authorize(Access::Admin, &with_authorization("Bearer admin-s3cret"))
                .is_ok()
        );
        assert!(matches!(
            tokens.authorize(Access::Admin, &with_authorization("Bearer api-one")),
            Err(ApiError::Forbidden(_))
        ));
        assert!(matches!(
            tokens.authorize(Access::Admin, &HeaderMap::new()),
            Err(ApiError::Unauthorized(_))
        ));
    }

    #[test]
    fn metrics_need_a_token_only_when_asked_to() {
        let mut tokens = tokens();
        assert!(tokens.authorize(Access::Metrics, &HeaderMap::new()).is_ok());
        tokens.protect_metrics = true;
        assert!(
            tokens
                .authorize(Access::Metrics, &HeaderMap::new())
                .is_err()
        );
        assert!(
            tokens
                .authorize(Access::Metrics, &with_authorization("Bearer api-two"))
                .is_ok()
        );
    }

    #[test]
    fn debug_output_hides_the_tokens() {
        assert!(!format!("{:?}", tokens()).contains("s3cret"));
    }
}
