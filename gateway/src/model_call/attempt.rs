//! One attempt of a model call: the request sent to the model's queue group over
//! NATS, and the messages that answer it followed until the reply comes, the
//! worker falls silent, or the call's deadline passes.

use std::time::{Duration, Instant};

use async_nats::Message;
use bytes::Bytes;

use prediction_contract::headers::{ReplyKind, WORKER_ID, error_codes};
use prediction_contract::openai;
use prediction_contract::tensors::INFERENCE_HEADER_CONTENT_LENGTH;
use prediction_contract::time::{millis, unix_now_ms};
use prediction_contract::{ReplyMetadata, RequestMetadata, ServiceError};
use prediction_runtime::{nats_headers, traces};
use serde_json::value::RawValue;

use super::{LiveCall, MAX_GENERATION_BYTES, ModelCall, ModelCallError};
use crate::nats::{Nats, Next, Replies, SendError};

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
        stream: call.live.as_ref().is_some_and(|live| live.api.streams()),
        api: call.live.as_ref().map(|live| live.api),
    };
    let mut headers = nats_headers::written(|put| metadata.write(put));
    if let Some(length) = call.input.tensor_header_length() {
        headers.insert(INFERENCE_HEADER_CONTENT_LENGTH, length.to_string().as_str());
    }
    if traces::enabled() {
        // The worker's span continues the model call's.
        for (name, value) in traces::trace_headers(&tracing::Span::current()) {
            headers.insert(name.as_str(), value.as_str());
        }
    }
    let payload = call.input.payload();
    let mut replies =
        nats.request(&call.model, headers, payload)
            .await
            .map_err(|err| match err {
                SendError::TooLarge => ModelCallError::TooLarge,
                SendError::Publish(err) => ModelCallError::Nats(err),
            })?;
    if let Some(live) = &call.live
        && live.api.streams()
    {
        return follow_stream(nats, call, live, replies, listening).await;
    }
    loop {
        let left = call.time_left();
        let wait = match listening {
            Listening::ForHeartbeats => LOST_AFTER.min(left),
            Listening::UntilDeadline => left,
        };
        match replies.next_within(wait).await {
            Next::Message(message) => {
                match ReplyKind::read(nats_headers::lookup(message.headers.as_ref())) {
                    ReplyKind::Heartbeat => {}
                    _ => return read_reply(call, message),
                }
            }
            Next::NoResponders => return Err(ModelCallError::NoWorker(call.model.clone())),
            Next::Silence if call.time_left().is_zero() => {
                return Err(ModelCallError::TimedOut(call.waited()));
            }
            Next::Silence => return Err(ModelCallError::Lost(wait)),
        }
    }
}

/// Follows a streamed answer: each chunk goes to the generation as it comes
/// and is kept for the entry; the end message ends it. Silence before the
/// first chunk is what it is for a whole answer (a worker gone: `Lost`, sent
/// again); once a chunk came, the answer cannot be asked again without
/// repeating it, so a worker that falls silent, or a model that stops
/// producing within its bounds, fails the stream. Everyone leaving the
/// generation cancels it, on the worker too.
async fn follow_stream(
    nats: &Nats,
    call: &ModelCall,
    live: &LiveCall,
    mut replies: Replies,
    listening: Listening,
) -> Result<ModelReply, ModelCallError> {
    let bounds = call.view.bounds();
    let began = Instant::now();
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut last_chunk = began;
    let mut worker_id: Option<String> = None;
    let mut produced = 0;
    loop {
        let left = call.time_left();
        let silence = match listening {
            Listening::ForHeartbeats => LOST_AFTER,
            Listening::UntilDeadline => left,
        };
        // Until the first chunk, or the next: the model's bound.
        let production = match (bounds, chunks.is_empty()) {
            (Some(bounds), true) => bounds.first_chunk.saturating_sub(began.elapsed()),
            (Some(bounds), false) => bounds.between_chunks.saturating_sub(last_chunk.elapsed()),
            (None, _) => left,
        };
        let wait = silence.min(production).min(left);
        let next = tokio::select! {
            biased;
            () = live.generation.cancelled() => {
                if let Some(worker_id) = &worker_id {
                    nats.cancel(worker_id, replies.subject()).await;
                }
                return Err(ModelCallError::Cancelled);
            }
            next = replies.next_within(wait) => next,
        };
        let message = match next {
            Next::Message(message) => message,
            Next::NoResponders => return Err(ModelCallError::NoWorker(call.model.clone())),
            Next::Silence if call.time_left().is_zero() => {
                return Err(ModelCallError::TimedOut(call.waited()));
            }
            Next::Silence if wait == production => {
                let what = if chunks.is_empty() {
                    "no first chunk within its bound"
                } else {
                    "no chunk within its bound since the last"
                };
                return Err(ModelCallError::Stalled(what.into()));
            }
            Next::Silence if chunks.is_empty() => return Err(ModelCallError::Lost(wait)),
            Next::Silence => {
                return Err(ModelCallError::Stalled(
                    "its worker fell silent mid-answer".into(),
                ));
            }
        };
        let header = nats_headers::lookup(message.headers.as_ref());
        if let Some(id) = header(WORKER_ID) {
            worker_id.get_or_insert_with(|| id.to_owned());
        }
        match ReplyKind::read(&header) {
            ReplyKind::Heartbeat => {}
            ReplyKind::Chunk => {
                serde_json::from_slice::<&RawValue>(&message.payload)
                    .map_err(ModelCallError::InvalidReply)?;
                produced += message.payload.len();
                if produced > MAX_GENERATION_BYTES {
                    if let Some(worker_id) = &worker_id {
                        nats.cancel(worker_id, replies.subject()).await;
                    }
                    return Err(ModelCallError::AnswerTooLarge);
                }
                live.generation.push(message.payload.clone());
                chunks.push(message.payload.clone());
                last_chunk = Instant::now();
            }
            ReplyKind::End => {
                if let Some(error) = ServiceError::read(&header) {
                    return Err(service_error(call, error));
                }
                return Ok(ModelReply {
                    metadata: ReplyMetadata::read(header),
                    prediction: stored(live.api, &chunks),
                });
            }
            // A worker that answered whole after all (it does not stream):
            // its answer, as the chunks that would have built it.
            ReplyKind::Reply => {
                let whole = read_reply(call, message.clone())?;
                let answer: serde_json::Value = serde_json::from_slice(&whole.prediction)
                    .map_err(ModelCallError::InvalidReply)?;
                for chunk in openai::chunks_of(&answer) {
                    let chunk = Bytes::from(chunk.to_string());
                    live.generation.push(chunk.clone());
                    chunks.push(chunk);
                }
                return Ok(ModelReply {
                    metadata: whole.metadata,
                    prediction: stored(live.api, &chunks),
                });
            }
        }
    }
}

/// A streamed answer's entry: its chunks, their counts and the complete
/// answer (see `openai::stored_answer`).
fn stored(api: openai::Api, chunks: &[Bytes]) -> Bytes {
    let chunks: Vec<serde_json::Value> = chunks
        .iter()
        .filter_map(|chunk| serde_json::from_slice(chunk).ok())
        .collect();
    openai::stored_answer(api, &chunks).into()
}

/// The error a worker's error reply means.
fn service_error(call: &ModelCall, error: ServiceError) -> ModelCallError {
    match error.code {
        error_codes::BAD_INPUT => ModelCallError::InputRejected(error.message),
        error_codes::BUSY => ModelCallError::Busy(error.message),
        error_codes::DEADLINE_EXCEEDED => ModelCallError::TimedOut(call.waited()),
        code => ModelCallError::Failed {
            code,
            message: error.message,
        },
    }
}

/// A reply as a prediction, or the error it carries.
fn read_reply(call: &ModelCall, reply: Message) -> Result<ModelReply, ModelCallError> {
    let header = nats_headers::lookup(reply.headers.as_ref());
    if let Some(error) = ServiceError::read(&header) {
        return Err(service_error(call, error));
    }
    // A tensor reply is a JSON header and binary data; its header is checked.
    let json = match header(INFERENCE_HEADER_CONTENT_LENGTH) {
        Some(length) => length
            .trim()
            .parse::<usize>()
            .ok()
            .and_then(|length| reply.payload.get(..length))
            .unwrap_or_default(),
        None => &reply.payload[..],
    };
    serde_json::from_slice::<&RawValue>(json).map_err(ModelCallError::InvalidReply)?;
    let metadata = ReplyMetadata::read(header);
    Ok(ModelReply {
        metadata,
        prediction: reply.payload,
    })
}
