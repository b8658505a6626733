//! One request to a model's workers over NATS: the protocol's side of a model
//! call (the policy around it, retries and admission, is [`crate::model_call`]'s).

use prediction_contract::traces;
use std::time::{Duration, Instant};

use async_nats::RequestErrorKind;
use async_nats::connection::State;
use bytes::Bytes;
use prediction_contract::headers::error_codes;
use prediction_contract::subjects::predict_subject;
use prediction_contract::time::{millis, unix_now_ms};
use prediction_contract::{
    CanonicalInput, ModelName, ReplyMetadata, RequestMetadata, ServiceError,
};
use serde_json::value::RawValue;

/// One model call: what is asked, for which request, and until when. Made once
/// per computation and carried through every attempt.
#[derive(Debug, Clone)]
pub struct ModelCall {
    pub model: ModelName,
    pub input: CanonicalInput,
    /// The HTTP request's id, for the worker's log.
    pub request_id: String,
    /// When the client stops waiting.
    pub deadline: Instant,
}

impl ModelCall {
    /// A call that may take `timeout` from now.
    pub fn new(
        model: ModelName,
        input: CanonicalInput,
        request_id: String,
        timeout: Duration,
    ) -> Self {
        Self {
            model,
            input,
            request_id,
            deadline: Instant::now() + timeout,
        }
    }

    /// Time left before the deadline.
    pub fn time_left(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }
}

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
    #[error("the gateway already has {0} model calls in flight; try again shortly")]
    Overloaded(usize),
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

/// How long a model call that finds NATS disconnected waits for the connection
/// to come back (to another server of the cluster, usually within
/// milliseconds) before it fails with 503 `nats_unavailable`; never past the
/// call's deadline, and not at all when no other server is known.
pub const NATS_RECONNECT_WAIT: Duration = Duration::from_secs(2);
/// How often a waiting call looks at the connection.
const RECONNECT_POLL: Duration = Duration::from_millis(10);

/// Sends prediction requests to the queue group serving each model.
#[derive(Debug, Clone)]
pub struct ModelClient {
    nats: async_nats::Client,
    /// How many servers the gateway was given (`--nats-url`).
    configured_servers: usize,
}

impl ModelClient {
    pub fn new(nats: async_nats::Client, configured_servers: usize) -> Self {
        Self {
            nats,
            configured_servers,
        }
    }

    pub fn is_connected(&self) -> bool {
        self.nats.connection_state() == State::Connected
    }

    /// Whether the connection is up, or comes back within [`NATS_RECONNECT_WAIT`]
    /// (and `left`). Only worth waiting for while another server is known: one
    /// configured, or one the server told of (a cluster's `connect_urls`).
    pub async fn connected_within(&self, left: Duration) -> bool {
        if self.is_connected() {
            return true;
        }
        let others_known =
            self.configured_servers > 1 || !self.nats.server_info().connect_urls.is_empty();
        if !others_known {
            return false;
        }
        let give_up = Instant::now() + NATS_RECONNECT_WAIT.min(left);
        while Instant::now() < give_up {
            tokio::time::sleep(RECONNECT_POLL).await;
            if self.is_connected() {
                return true;
            }
        }
        false
    }

    /// Asks one worker of the call's model for its prediction, waiting at most
    /// until the call's deadline; the worker is told the deadline so it can skip a
    /// request no one waits for any more. With `avoid_backlog`, a worker that would
    /// make the request wait behind others answers busy at once, for the caller to
    /// try another.
    pub async fn predict(
        &self,
        call: &ModelCall,
        avoid_backlog: bool,
    ) -> Result<ModelReply, ModelCallError> {
        let model = &call.model;
        let timeout = call.time_left();
        // While disconnected async-nats would buffer the request until the
        // timeout; failing within a short bound lets the client retry elsewhere.
        if !self.connected_within(timeout).await {
            return Err(ModelCallError::NotConnected);
        }
        let metadata = RequestMetadata {
            request_id: &call.request_id,
            deadline_unix_ms: Some(unix_now_ms().saturating_add(millis(timeout))),
            avoid_backlog,
        };
        let mut headers = metadata.to_headers();
        if traces::enabled() {
            // The worker's span continues the model call's.
            for (name, value) in traces::trace_headers(&tracing::Span::current()) {
                headers.insert(name.as_str(), value.as_str());
            }
        }
        let request = async_nats::Request::new()
            .payload(Bytes::copy_from_slice(call.input.as_str().as_bytes()))
            .headers(headers)
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
