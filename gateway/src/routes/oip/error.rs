//! Errors as the Open Inference Protocol answers them: `{"error": "<message>"}`
//! with a 4xx or 5xx status (400 for what is wrong with a request, naming the
//! tensor at fault; 404 for a model or version not served; 429 and 503 with
//! `Retry-After`).

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::error::ApiError;

#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct OipError {
    pub status: StatusCode,
    pub message: String,
}

impl OipError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            message: message.into(),
        }
    }
}

impl From<ApiError> for OipError {
    fn from(err: ApiError) -> Self {
        let status = match &err {
            // The protocol's clients read a missing model as 404.
            ApiError::Upstream(failure) if failure.code == "no_worker" => StatusCode::NOT_FOUND,
            ApiError::Upstream(failure) if failure.code == "overloaded" => {
                StatusCode::TOO_MANY_REQUESTS
            }
            _ => err.status(),
        };
        Self {
            status,
            message: err.to_string(),
        }
    }
}

impl IntoResponse for OipError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(json!({ "error": self.message }))).into_response();
        if matches!(
            self.status,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        ) {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(r#"Bearer realm="prediction-gateway""#),
            );
        }
        response
    }
}
