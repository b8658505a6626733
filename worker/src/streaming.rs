//! Streamed answers: a generative model's chunks sent to the caller as they come
//! (see `prediction_contract::headers::REPLY_STREAM`), with heartbeats while
//! none comes, ended by an end message carrying the reply's metadata, or by an
//! error reply; and their cancellation, when the gateway says nobody listens
//! any more.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::service;
use bytes::Bytes;
use futures::StreamExt;
use prediction_contract::ReplyMetadata;
use prediction_contract::headers::{
    REPLY_KIND, WORKER_ID, error_codes, reply_kinds, write_heartbeat,
};
use prediction_contract::openai::Api;
use prediction_runtime::nats_headers;
use tokio::sync::Notify;
use tracing::{debug, warn};

use crate::batching::Runner;
use crate::model::{Input, ModelError};

/// The streams this worker sends, by reply subject, each with what cancels it.
#[derive(Debug, Clone, Default)]
pub struct Cancellations {
    streams: Arc<Mutex<HashMap<String, Arc<Notify>>>>,
}

impl Cancellations {
    /// Cancels the stream answering on `reply`, if there is one.
    pub fn cancel(&self, reply: &str) {
        if let Some(cancel) = self.streams.lock().expect("not poisoned").get(reply) {
            cancel.notify_one();
        }
    }

    fn register(&self, reply: &str) -> Registered {
        let cancel = Arc::new(Notify::new());
        self.streams
            .lock()
            .expect("not poisoned")
            .insert(reply.to_owned(), Arc::clone(&cancel));
        Registered {
            cancellations: self.clone(),
            reply: reply.to_owned(),
            cancel,
        }
    }
}

/// A stream's registration; removed when dropped.
struct Registered {
    cancellations: Cancellations,
    reply: String,
    cancel: Arc<Notify>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.cancellations
            .streams
            .lock()
            .expect("not poisoned")
            .remove(&self.reply);
    }
}

/// What one stream needs to know of its worker.
#[derive(Debug, Clone)]
pub struct StreamContext {
    pub client: async_nats::Client,
    /// This worker's service id, in every stream message's `Worker-Id`.
    pub worker_id: Arc<str>,
    pub cancellations: Cancellations,
}

/// How a stream ended: `ok`, the error code, or `cancelled`.
pub type Outcome = String;

/// Streams `runner`'s answer to `input` in `api` to the caller of `request`,
/// a heartbeat every `heartbeat` while no chunk comes (if asked for). Returns
/// how it ended.
pub async fn stream_answer(
    context: &StreamContext,
    runner: &Runner,
    request: &service::Request,
    api: Api,
    input: Input,
    heartbeat: Option<Duration>,
) -> Outcome {
    let started = Instant::now();
    let Some(reply) = request.message.reply.clone() else {
        return "400".into();
    };
    let registered = context.cancellations.register(&reply);
    let mut chunks = runner.generate(api, input).await;
    let mut ticks = heartbeat.map(|every| {
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks
    });
    let send = |kind: &'static str, payload: Bytes| {
        let headers = nats_headers::written(|put| {
            put(REPLY_KIND, kind);
            put(WORKER_ID, &context.worker_id);
        });
        context
            .client
            .publish_with_headers(reply.clone(), headers, payload)
    };
    let ended: Result<(), ModelError> = loop {
        let heartbeat = async {
            match ticks.as_mut() {
                Some(ticks) => {
                    ticks.tick().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            biased;
            () = registered.cancel.notified() => {
                debug!(model = %runner.model().name(), "the stream's caller cancelled it");
                return "cancelled".into();
            }
            next = chunks.next() => match next {
                Some(Ok(chunk)) => {
                    let payload = match serde_json::to_vec(&chunk) {
                        Ok(payload) => payload,
                        Err(err) => break Err(ModelError::Failed(format!("a chunk could not be serialised: {err}"))),
                    };
                    if let Err(err) = send(reply_kinds::CHUNK, payload.into()).await {
                        warn!(error = %err, "could not send a chunk; the stream ends");
                        return "500".into();
                    }
                    if let Some(ticks) = ticks.as_mut() {
                        ticks.reset();
                    }
                }
                Some(Err(err)) => break Err(err),
                None => break Ok(()),
            },
            () = heartbeat => {
                let headers = nats_headers::written(|put| {
                    write_heartbeat(&mut *put);
                    put(WORKER_ID, &context.worker_id);
                });
                let _ = context.client.publish_with_headers(reply.clone(), headers, Bytes::new()).await;
            }
        }
    };
    let model = runner.model();
    let metadata = ReplyMetadata {
        model_version: model.version().to_owned(),
        freshness_ttl: model.freshness_ttl(),
        compute_time: Some(started.elapsed()),
    };
    let (reply_body, outcome) = match ended {
        Ok(()) => (Ok(Bytes::new()), "ok".to_owned()),
        Err(err) => {
            if err.code() == error_codes::MODEL_FAILED {
                warn!(model = %model.name(), error = %err, "the model failed mid-stream");
            }
            let code = err.code();
            (
                Err(service::error::Error {
                    status: err.to_string(),
                    code: code.into(),
                }),
                code.to_string(),
            )
        }
    };
    let headers = nats_headers::written(|put| {
        metadata.write(&mut *put);
        put(REPLY_KIND, reply_kinds::END);
        put(WORKER_ID, &context.worker_id);
    });
    if let Err(err) = request.respond_with_headers(reply_body, headers).await {
        warn!(model = %model.name(), error = %err, "could not end the stream");
    }
    outcome
}
