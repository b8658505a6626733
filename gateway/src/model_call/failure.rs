//! A failed model call as clients see it.

use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::ModelCallError;

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
    /// What a request gets when its computation's task panicked.
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; see the gateway logs",
        )
    }

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
            M::TimedOut(_) | M::Lost(_) | M::Stalled(_) => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
            // Nobody is left to tell; a 499-like code for the logs and metrics.
            M::Cancelled => (StatusCode::SERVICE_UNAVAILABLE, "cancelled"),
            M::Failed { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "model_failed"),
            M::InvalidReply(_) | M::Nats(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            M::AnswerTooLarge => (StatusCode::BAD_GATEWAY, "answer_too_large"),
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
