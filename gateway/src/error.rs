//! Every way a gateway request can fail, each with one HTTP status and a JSON body
//! `{"error":{"code","message"}}`.

use std::sync::Arc;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use prediction_contract::{ErrorBody, InvalidInput, InvalidModelName};
use serde::{Deserialize, Serialize};

use crate::model_call::ModelCallError;

/// A failed model call as clients see it. One call's failure is handed to every
/// request that waited for it, in this gateway or (over NATS) in another, so it
/// holds only what may be shown to a client; the cause is logged where it happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct PublicFailure {
    pub status: u16,
    pub code: String,
    pub message: String,
}

impl PublicFailure {
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self {
            status: status.as_u16(),
            code: code.to_owned(),
            message: message.into(),
        }
    }

    /// Whether the failure lies with the model side (and a stale answer is better
    /// than none), rather than with the input.
    pub fn is_server_side(&self) -> bool {
        self.status >= 500
    }
}

impl From<&ModelCallError> for PublicFailure {
    fn from(err: &ModelCallError) -> Self {
        use ModelCallError as M;
        let (status, code) = match err {
            M::InputRejected(_) => (StatusCode::UNPROCESSABLE_ENTITY, "input_rejected"),
            M::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
            M::NoWorker(_) => (StatusCode::SERVICE_UNAVAILABLE, "no_worker"),
            M::NotConnected => (StatusCode::SERVICE_UNAVAILABLE, "nats_unavailable"),
            M::Busy(_) => (StatusCode::SERVICE_UNAVAILABLE, "worker_busy"),
            M::Overloaded(_) => (StatusCode::SERVICE_UNAVAILABLE, "overloaded"),
            M::TimedOut(_) | M::Lost(_) => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
            M::Failed { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "model_failed"),
            M::InvalidReply(_) | M::Nats(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        let message = match err {
            M::Failed { .. } => "the model failed to compute this prediction".to_owned(),
            M::InvalidReply(_) | M::Nats(_) => {
                "internal error; see the gateway logs for this request id".to_owned()
            }
            other => other.to_string(),
        };
        Self::new(status, code, message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    InvalidModelName(#[from] InvalidModelName),
    #[error("{0}")]
    InvalidInput(#[from] InvalidInput),
    #[error("{0}")]
    InvalidQuery(String),
    #[error("the request body is larger than the limit of {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error(
        "the request body could not be read in full (it must arrive within the client timeout)"
    )]
    BodyUnreadable,
    #[error("{0}")]
    Upstream(Arc<PublicFailure>),
    #[error("no fresh prediction is cached for this input (Cache-Control: only-if-cached)")]
    NotCached,
    #[error("the cache is unavailable: {0}")]
    CacheUnavailable(String),
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("no route for {0}")]
    NotFound(String),
    #[error("method not allowed")]
    MethodNotAllowed,
}

impl ApiError {
    fn status_and_code(&self) -> (StatusCode, &str) {
        match self {
            Self::InvalidModelName(_) => (StatusCode::BAD_REQUEST, "invalid_model_name"),
            Self::InvalidInput(InvalidInput::Json(_)) => (StatusCode::BAD_REQUEST, "invalid_json"),
            Self::InvalidInput(_) => (StatusCode::BAD_REQUEST, "invalid_input"),
            Self::InvalidQuery(_) => (StatusCode::BAD_REQUEST, "invalid_query"),
            Self::BodyTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
            Self::BodyUnreadable => (StatusCode::BAD_REQUEST, "body_unreadable"),
            Self::Upstream(failure) => (
                StatusCode::from_u16(failure.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                failure.code.as_str(),
            ),
            Self::NotCached => (StatusCode::GATEWAY_TIMEOUT, "not_cached"),
            Self::CacheUnavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "cache_unavailable"),
            Self::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
        }
    }
}

impl From<ModelCallError> for ApiError {
    fn from(err: ModelCallError) -> Self {
        Self::Upstream(Arc::new(PublicFailure::from(&err)))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let mut response = (status, Json(ErrorBody::new(code, self.to_string()))).into_response();
        let headers = response.headers_mut();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            // Workers come and go; a short wait is worth a retry.
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        match status {
            StatusCode::UNAUTHORIZED => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(r#"Bearer realm="prediction-gateway""#),
                );
            }
            StatusCode::FORBIDDEN => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(
                        r#"Bearer realm="prediction-gateway", error="insufficient_scope""#,
                    ),
                );
            }
            _ => {}
        }
        response
    }
}
