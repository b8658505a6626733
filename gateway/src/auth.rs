//! Bearer tokens (RFC 6750): API tokens for predictions, an admin token for purges.
//!
//! With no token configured a route is open, as a gateway behind a private network
//! usually is. Tokens come from flags, environment variables or files (one token
//! a line, as Kubernetes mounts a secret), and an empty one is refused at
//! startup: it would let in any request that says `Authorization: Bearer `.
//!
//! A presented token is compared with every configured one through their SHA-256
//! digests, in constant time: the time taken depends on neither the tokens'
//! contents, nor their lengths, nor which one matched.

use std::path::Path;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::Response;
use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};

use crate::error::ApiError;

/// A token's SHA-256: what is kept and compared, never the token itself.
type TokenDigest = [u8; 32];

fn digest(token: &str) -> TokenDigest {
    Sha256::digest(token.as_bytes()).into()
}

/// The tokens the gateway accepts.
#[derive(Clone, Default)]
pub struct Tokens {
    /// Any of them may ask for predictions.
    api: Vec<TokenDigest>,
    /// May purge; an API token on a purge route is refused with 403.
    admin: Option<TokenDigest>,
    /// Whether `/metrics` and `/openapi.json` need a token too.
    protect_metrics: bool,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("api", &self.api.len())
            .field("admin", &self.admin.is_some())
            .field("protect_metrics", &self.protect_metrics)
            .finish()
    }
}

/// Why the configured tokens cannot be used; the gateway does not start.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error(
        "{setting} holds an empty token (a trailing comma, or an empty value?): it would accept `Authorization: Bearer ` with nothing after it"
    )]
    Empty { setting: &'static str },
    #[error(
        "{setting}: the token holds whitespace or a control character, which no client can send in a header"
    )]
    Unsendable { setting: &'static str },
    #[error("cannot read {setting} {path}: {source}")]
    File {
        setting: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("{setting} {path} holds no token")]
    EmptyFile { setting: &'static str, path: String },
    #[error("{setting} {path} holds {count} tokens; the admin token is one")]
    SeveralAdminTokens {
        setting: &'static str,
        path: String,
        count: usize,
    },
}

/// Where the tokens come from: each list as given (flags or environment) and the
/// files to read more from.
#[derive(Debug, Clone, Copy)]
pub struct TokenSources<'a> {
    pub api: &'a [String],
    pub api_file: Option<&'a Path>,
    pub admin: Option<&'a str>,
    pub admin_file: Option<&'a Path>,
    pub protect_metrics: bool,
}

impl Tokens {
    /// The tokens `sources` name, refusing empty ones and unreadable files.
    pub fn load(sources: TokenSources<'_>) -> Result<Self, TokenError> {
        let mut api = Vec::new();
        for token in sources.api {
            api.push(checked(token, "--api-token (GATEWAY_API_TOKENS)")?);
        }
        if let Some(path) = sources.api_file {
            let setting = "--api-token-file (GATEWAY_API_TOKENS_FILE)";
            let tokens = read_token_file(path, setting)?;
            api.extend(tokens);
        }
        let mut admin = match sources.admin {
            Some(token) => Some(checked(token, "--admin-token (GATEWAY_ADMIN_TOKEN)")?),
            None => None,
        };
        if let Some(path) = sources.admin_file {
            let setting = "--admin-token-file (GATEWAY_ADMIN_TOKEN_FILE)";
            let tokens = read_token_file(path, setting)?;
            if tokens.len() != 1 {
                return Err(TokenError::SeveralAdminTokens {
                    setting,
                    path: path.display().to_string(),
                    count: tokens.len(),
                });
            }
            admin = tokens.into_iter().next();
        }
        Ok(Self {
            api,
            admin,
            protect_metrics: sources.protect_metrics,
        })
    }

    /// Whether any API token is configured (else the prediction routes are open).
    pub fn requires_api_token(&self) -> bool {
        !self.api.is_empty()
    }
}

/// A token's digest, if the token is one a client can send.
fn checked(token: &str, setting: &'static str) -> Result<TokenDigest, TokenError> {
    if token.is_empty() {
        return Err(TokenError::Empty { setting });
    }
    if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(TokenError::Unsendable { setting });
    }
    Ok(digest(token))
}

/// The tokens of a file: one a line, surrounding whitespace and blank lines
/// ignored (a secret file usually ends with a newline).
fn read_token_file(path: &Path, setting: &'static str) -> Result<Vec<TokenDigest>, TokenError> {
    let text = std::fs::read_to_string(path).map_err(|source| TokenError::File {
        setting,
        path: path.display().to_string(),
        source,
    })?;
    let tokens = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .map(|token| checked(token, setting))
        .collect::<Result<Vec<_>, _>>()?;
    if tokens.is_empty() {
        return Err(TokenError::EmptyFile {
            setting,
            path: path.display().to_string(),
        });
    }
    Ok(tokens)
}

/// Who asked, as far as the tokens tell: the SHA-256 of the token presented
/// (never the token), or nobody on an open route. The OpenAI door partitions
/// its cache by it, so two tokens never share an answer.
#[derive(Debug, Clone, Copy, Default)]
pub struct Caller(Option<TokenDigest>);

impl Caller {
    /// The caller's partition of the cache: the token's digest, in hex (a
    /// digest's first 16 bytes: as unique, and shorter), or `open`.
    pub fn partition(&self) -> String {
        match self.0 {
            Some(digest) => hex::encode(&digest[..16]),
            None => "open".to_owned(),
        }
    }
}

/// What a route gives access to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Predict,
    Metrics,
    Admin,
}

/// The token of an `Authorization: Bearer <token>` header. The scheme is
/// matched without regard to case (RFC 9110, section 11.1); an empty token is
/// no token.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim_start().split_once(' ')?;
    let token = token.trim_matches(' ');
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

fn matches_any<'a>(
    presented: &TokenDigest,
    tokens: impl IntoIterator<Item = &'a TokenDigest>,
) -> bool {
    let mut matched = Choice::from(0);
    for token in tokens {
        matched |= presented.ct_eq(token);
    }
    matched.into()
}

impl Tokens {
    /// Whether `headers` give `access`, and to whom.
    pub fn authorize(&self, access: Access, headers: &HeaderMap) -> Result<Caller, ApiError> {
        let needs_token = match access {
            Access::Predict => !self.api.is_empty(),
            Access::Metrics => {
                self.protect_metrics && (!self.api.is_empty() || self.admin.is_some())
            }
            Access::Admin => self.admin.is_some() || !self.api.is_empty(),
        };
        if !needs_token {
            return Ok(Caller(None));
        }
        let presented = digest(bearer(headers).ok_or(ApiError::Unauthorized(
            "this route needs a token: Authorization: Bearer <token>",
        ))?);
        let is_admin = matches_any(&presented, self.admin.iter());
        let is_api = matches_any(&presented, &self.api);
        let caller = Caller(Some(presented));
        match access {
            Access::Predict | Access::Metrics if is_api || is_admin => Ok(caller),
            Access::Admin if is_admin => Ok(caller),
            // Without an admin token, API tokens may purge.
            Access::Admin if is_api && self.admin.is_none() => Ok(caller),
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
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let caller = tokens.authorize(access, request.headers())?;
    request.extensions_mut().insert(caller);
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

/// Middleware of the OpenAI API's routes: the prediction routes' tokens, a
/// refusal in OpenAI's error shape.
pub async fn require_api_token_openai(
    State(tokens): State<Arc<Tokens>>,
    request: Request,
    next: Next,
) -> Result<Response, crate::routes::openai::OpenAiError> {
    Ok(guard(&tokens, Access::Predict, request, next).await?)
}

/// Middleware of the Open Inference Protocol's routes: the prediction routes'
/// tokens, a refusal in the protocol's error shape.
pub async fn require_api_token_oip(
    State(tokens): State<Arc<Tokens>>,
    request: Request,
    next: Next,
) -> Result<Response, crate::routes::oip::OipError> {
    Ok(guard(&tokens, Access::Predict, request, next).await?)
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

    fn load(api: &[&str], admin: Option<&str>) -> Result<Tokens, TokenError> {
        let api: Vec<String> = api.iter().map(|t| (*t).to_owned()).collect();
        Tokens::load(TokenSources {
            api: &api,
            api_file: None,
            admin,
            admin_file: None,
            protect_metrics: false,
        })
    }

    fn tokens() -> Tokens {
        load(&["api-one", "api-two"], Some("admin-s3cret")).unwrap()
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
            with_authorization("Bearer api-one2"),
            with_authorization("Basic api-one"),
            with_authorization("Bearerapi-one"),
            with_authorization("Bearer "),
            with_authorization("Bearer"),
        ] {
            assert!(matches!(
                tokens.authorize(Access::Predict, &headers),
                Err(ApiError::Unauthorized(_))
            ));
        }
    }

    #[test]
    fn the_scheme_is_matched_without_regard_to_case() {
        let tokens = tokens();
        for value in ["bearer api-one", "BEARER api-one", "BeArEr   api-one"] {
            assert!(
                tokens
                    .authorize(Access::Predict, &with_authorization(value))
                    .is_ok(),
                "{value}"
            );
        }
    }

    #[test]
    fn empty_or_unsendable_tokens_are_refused_when_loaded() {
        assert!(matches!(
            load(&["tok1", ""], None),
            Err(TokenError::Empty { .. })
        ));
        assert!(matches!(load(&[], Some("")), Err(TokenError::Empty { .. })));
        assert!(matches!(
            load(&["a b"], None),
            Err(TokenError::Unsendable { .. })
        ));
        let message = load(&["tok1", ""], None).unwrap_err().to_string();
        assert!(message.contains("--api-token"), "{message}");
    }

    #[test]
    fn token_files_hold_one_token_a_line() {
        let dir = std::env::temp_dir().join(format!("gateway-tokens-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let api_file = dir.join("api");
        let admin_file = dir.join("admin");
        std::fs::write(&api_file, "from-file-1\n\n  from-file-2  \n").unwrap();
        std::fs::write(&admin_file, "admin-from-file\n").unwrap();
        let api = vec!["from-flag".to_owned()];
        let tokens = Tokens::load(TokenSources {
            api: &api,
            api_file: Some(&api_file),
            admin: None,
            admin_file: Some(&admin_file),
            protect_metrics: false,
        })
        .unwrap();
        for token in ["from-flag", "from-file-1", "from-file-2"] {
            let headers = with_authorization(&format!("Bearer {token}"));
            assert!(
                tokens.authorize(Access::Predict, &headers).is_ok(),
                "{token}"
            );
            assert!(matches!(
                tokens.authorize(Access::Admin, &headers),
                Err(ApiError::Forbidden(_))
            ));
        }
        let admin = with_authorization("Bearer admin-from-file");
        assert!(tokens.authorize(Access::Admin, &admin).is_ok());

        std::fs::write(&api_file, "\n \n").unwrap();
        let empty = Tokens::load(TokenSources {
            api: &[],
            api_file: Some(&api_file),
            admin: None,
            admin_file: None,
            protect_metrics: false,
        });
        assert!(matches!(empty, Err(TokenError::EmptyFile { .. })));
        let missing = Tokens::load(TokenSources {
            api: &[],
            api_file: Some(&dir.join("missing")),
            admin: None,
            admin_file: None,
            protect_metrics: false,
        });
        assert!(matches!(missing, Err(TokenError::File { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
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
