//! Every way a gateway request can fail, each with one HTTP status and a JSON body
//! `{"error":{"code","message"}}`.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use prediction_contract::{ErrorBody, InvalidInput, InvalidModelName};

use crate::model_client::ModelCallError;

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
    #[error("the request body could not be read")]
    BodyUnreadable,
    #[error("{0}")]
    ModelCall(#[from] ModelCallError),
    #[error("no route for {0}")]
    NotFound(String),
    #[error("method not allowed")]
    MethodNotAllowed,
}

impl ApiError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        use ModelCallError as M;
        match self {
            Self::InvalidModelName(_) => (StatusCode::BAD_REQUEST, "invalid_model_name"),
            Self::InvalidInput(InvalidInput::Json(_)) => (StatusCode::BAD_REQUEST, "invalid_json"),
            Self::InvalidInput(_) => (StatusCode::BAD_REQUEST, "invalid_input"),
            Self::InvalidQuery(_) => (StatusCode::BAD_REQUEST, "invalid_query"),
            Self::BodyTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
            Self::BodyUnreadable => (StatusCode::BAD_REQUEST, "body_unreadable"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            Self::ModelCall(call) => match call {
                M::InputRejected(_) => (StatusCode::UNPROCESSABLE_ENTITY, "input_rejected"),
                M::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
                M::NoWorker(_) => (StatusCode::SERVICE_UNAVAILABLE, "no_worker"),
                M::NotConnected => (StatusCode::SERVICE_UNAVAILABLE, "nats_unavailable"),
                M::Busy(_) => (StatusCode::SERVICE_UNAVAILABLE, "worker_busy"),
                M::TimedOut(_) => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
                M::Failed { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "model_failed"),
                M::InvalidReply(_) | M::Nats(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            },
        }
    }

    /// What the client is told. Internal causes stay in the logs.
    fn public_message(&self) -> String {
        match self {
            Self::ModelCall(ModelCallError::Failed { .. }) => {
                "the model failed to compute this prediction".to_owned()
            }
            Self::ModelCall(ModelCallError::InvalidReply(_) | ModelCallError::Nats(_)) => {
                "internal error; see the gateway logs for this request id".to_owned()
            }
            other => other.to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if status.is_server_error() {
            tracing::error!(error = %self, cause = ?std::error::Error::source(&self), code, "request failed");
        }
        let mut response =
            (status, Json(ErrorBody::new(code, self.public_message()))).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            // Workers come and go; a short wait is worth a retry.
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}
