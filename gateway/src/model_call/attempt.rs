//! One attempt of a model call: the request sent to the model's queue group over
//! NATS, and the messages that answer it followed until the reply comes, the
//! worker falls silent, or the call's deadline passes.

use std::time::Duration;

use async_nats::Message;
use bytes::Bytes;
use prediction_contract::headers::{error_codes, is_heartbeat};
use prediction_contract::time::{millis, unix_now_ms};
use prediction_contract::{ReplyMetadata, RequestMetadata, ServiceError};
use prediction_runtime::{nats_headers, traces};
use serde_json::value::RawValue;

use super::{ModelCall, ModelCallError};
use crate::nats::{Nats, Next, SendError};

/// How often a worker that supports heartbeats is asked to send one while it
/// holds a request.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(500);
/// How long without a message from a worker that sends heartbeats means it is
/// gone (or the request was lost on the way): four missed heartbeats.
pub const LOST_AFTER: Duration = Duration::from_millis(2_000);

/// A worker's answer.
#[derive(Debug, Clone)]
pub struct ModelReply {
    /// The prediction, checked to be valid JSON.
    pub prediction: Bytes,
    pub metadata: ReplyMetadata,
}

/// How an attempt listens for its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listening {
    /// Every worker of the model sends heartbeats: silence for [`LOST_AFTER`]
    /// means the worker is gone, and the attempt ends with
    /// [`ModelCallError::Lost`].
    ForHeartbeats,
    /// Some worker does not: the attempt waits until the deadline.
    UntilDeadline,
}

/// Sends `call` once and waits for its answer. With `avoid_backlog`, a worker
/// that would make the request wait behind others answers busy at once, for the
/// caller to try another. The worker is told the deadline, so it can skip a
/// request no one waits for any more.
pub async fn attempt(
    nats: &Nats,
    call: &ModelCall,
    avoid_backlog: bool,
    listening: Listening,
) -> Result<ModelReply, ModelCallError> {
    let metadata = RequestMetadata {
        request_id: &call.request_id,
        deadline_unix_ms: Some(unix_now_ms().saturating_add(millis(call.time_left()))),
        avoid_backlog,
        heartbeat_interval: (listening == Listening::ForHeartbeats).then_some(HEARTBEAT_INTERVAL),
    };
    let mut headers = nats_headers::written(|put| metadata.write(put));
    if traces::enabled() {
        // The worker's span continues the model call's.
        for (name, value) in traces::trace_headers(&tracing::Span::current()) {
            headers.insert(name.as_str(), value.as_str());
        }
    }
    let payload = Bytes::copy_from_slice(call.input.as_str().as_bytes());
    let mut replies =
        nats.request(&call.model, headers, payload)
            .await
            .map_err(|err| match err {
                SendError::TooLarge => ModelCallError::TooLarge,
                SendError::Publish(err) => ModelCallError::Nats(err),
            })?;
    loop {
        let left = call.time_left();
        let wait = match listening {
            Listening::ForHeartbeats => LOST_AFTER.min(left),
            Listening::UntilDeadline => left,
        };
        match replies.next_within(wait).await {
            Next::Message(message)
                if is_heartbeat(nats_headers::lookup(message.headers.as_ref())) => {}
            Next::Message(message) => return read_reply(call, message),
            Next::NoResponders => return Err(ModelCallError::NoWorker(call.model.clone())),
            Next::Silence if call.time_left().is_zero() => {
                return Err(ModelCallError::TimedOut(call.waited()));
            }
            Next::Silence => return Err(ModelCallError::Lost(wait)),
        }
    }
}

/// A reply as a prediction, or the error it carries.
fn read_reply(call: &ModelCall, reply: Message) -> Result<ModelReply, ModelCallError> {
    let header = nats_headers::lookup(reply.headers.as_ref());
    if let Some(error) = ServiceError::read(&header) {
        return Err(match error.code {
            error_codes::BAD_INPUT => ModelCallError::InputRejected(error.message),
            error_codes::BUSY => ModelCallError::Busy(error.message),
            error_codes::DEADLINE_EXCEEDED => ModelCallError::TimedOut(call.waited()),
            code => ModelCallError::Failed {
                code,
                message: error.message,
            },
        });
    }
    serde_json::from_slice::<&RawValue>(&reply.payload).map_err(ModelCallError::InvalidReply)?;
    let metadata = ReplyMetadata::read(header);
    Ok(ModelReply {
        metadata,
        prediction: reply.payload,
    })
}
