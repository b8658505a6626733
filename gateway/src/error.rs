//! Every way a gateway request can fail, each with one HTTP status and a JSON body
//! `{"error":{"code","message"}}`.

use std::sync::Arc;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use prediction_contract::{ErrorBody, InvalidInput, InvalidModelName};

use crate::input::InputError;
use crate::model_call::PublicFailure;
use crate::prediction::PredictionError;

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
    /// The HTTP status it answers with.
    pub fn status(&self) -> StatusCode {
        self.status_and_code().0
    }

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

impl From<PredictionError> for ApiError {
    fn from(err: PredictionError) -> Self {
        match err {
            PredictionError::Input(InputError::Json(invalid)) => Self::InvalidInput(invalid),
            PredictionError::Input(InputError::Query(message)) => Self::InvalidQuery(message),
            PredictionError::NotCached => Self::NotCached,
            PredictionError::Failed(failure) => Self::Upstream(failure),
        }
    }
}

impl From<InputError> for ApiError {
    fn from(err: InputError) -> Self {
        PredictionError::Input(err).into()
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
