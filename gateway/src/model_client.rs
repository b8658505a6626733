//! Asking a model's workers for a prediction over NATS.

use std::time::Duration;

use async_nats::connection::State;
use async_nats::{HeaderMap, RequestErrorKind};
use bytes::Bytes;
use prediction_contract::headers::{self, error_codes};
use prediction_contract::subjects::predict_subject;
use prediction_contract::{CanonicalInput, ModelName, ReplyMetadata, ServiceError};
use serde_json::value::RawValue;

use crate::cache::unix_now_ms;

/// A worker's answer.
#[derive(Debug, Clone)]
pub struct ModelReply {
    /// The prediction, checked to be valid JSON.
    pub prediction: Bytes,
    pub metadata: ReplyMetadata,
}

/// Why a model call produced no prediction.
#[derive(Debug, thiserror::Error)]
pub enum ModelCallError {
    #[error("the gateway is not connected to NATS")]
    NotConnected,
    #[error("no worker serves model \"{0}\"")]
    NoWorker(ModelName),
    #[error("no worker answered within {0:?}")]
    TimedOut(Duration),
    #[error("the input is too large to send to a worker")]
    TooLarge,
    #[error("{0}")]
    InputRejected(String),
    #[error("the workers are busy: {0}")]
    Busy(String),
    #[error("the model failed (code {code}): {message}")]
    Failed { code: u16, message: String },
    #[error("the worker's reply is not JSON")]
    InvalidReply(#[source] serde_json::Error),
    #[error("the NATS request failed")]
    Nats(#[source] async_nats::RequestError),
}

/// Sends prediction requests to the queue group serving each model.
#[derive(Debug, Clone)]
pub struct ModelClient {
    nats: async_nats::Client,
}

impl ModelClient {
    pub fn new(nats: async_nats::Client) -> Self {
        Self { nats }
    }

    pub fn nats(&self) -> &async_nats::Client {
        &self.nats
    }

    pub fn is_connected(&self) -> bool {
        self.nats.connection_state() == State::Connected
    }

    /// Asks one worker of `model` for the prediction of `input`, waiting at most
    /// `timeout`; the worker is told the deadline so it can skip a request no one
    /// waits for any more. With `avoid_backlog`, a worker that would make the
    /// request wait behind others answers busy at once, for the caller to try
    /// another.
    pub async fn predict(
        &self,
        model: &ModelName,
        input: &CanonicalInput,
        request_id: &str,
        timeout: Duration,
        avoid_backlog: bool,
    ) -> Result<ModelReply, ModelCallError> {
        // While disconnected async-nats would buffer the request until the timeout;
        // failing at once lets the client retry elsewhere.
        if !self.is_connected() {
            return Err(ModelCallError::NotConnected);
        }
        let mut request_headers = HeaderMap::new();
        request_headers.insert(headers::REQUEST_ID, request_id);
        let deadline_ms = unix_now_ms() + u64::try_from(timeout.as_millis()).unwrap_or(0);
        request_headers.insert(headers::DEADLINE_UNIX_MS, deadline_ms.to_string().as_str());
        if avoid_backlog {
            request_headers.insert(headers::AVOID_BACKLOG, "1");
        }
        let request = async_nats::Request::new()
            .payload(Bytes::copy_from_slice(input.as_str().as_bytes()))
            .headers(request_headers)
            .timeout(Some(timeout));

        let reply = self
            .nats
            .send_request(predict_subject(model), request)
            .await
            .map_err(|err| match err.kind() {
                RequestErrorKind::NoResponders => ModelCallError::NoWorker(model.clone()),
                RequestErrorKind::TimedOut => ModelCallError::TimedOut(timeout),
                RequestErrorKind::MaxPayloadExceeded => ModelCallError::TooLarge,
                _ => ModelCallError::Nats(err),
            })?;

        if let Some(error) = ServiceError::from_headers(reply.headers.as_ref()) {
            return Err(match error.code {
                error_codes::BAD_INPUT => ModelCallError::InputRejected(error.message),
                error_codes::BUSY => ModelCallError::Busy(error.message),
                error_codes::DEADLINE_EXCEEDED => ModelCallError::TimedOut(timeout),
                code => ModelCallError::Failed {
                    code,
                    message: error.message,
                },
            });
        }
        serde_json::from_slice::<&RawValue>(&reply.payload)
            .map_err(ModelCallError::InvalidReply)?;
        Ok(ModelReply {
            metadata: ReplyMetadata::from_headers(reply.headers.as_ref()),
            prediction: reply.payload,
        })
    }
}
