//! Models an OpenAI-compatible server runs (vLLM, llama.cpp's server, Ollama,
//! TGI, OpenAI itself): the manifest's `kind = "openai"` entries. The worker
//! forwards each request to the server, always as a stream (asking for the
//! usage chunk), and passes the chunks on as they arrive, without their
//! envelope (`id`, `object`, `created`, `model`), which the gateway adds;
//! embeddings are forwarded as one request and answered once.
//!
//! At most `concurrency` requests are in flight to the server; the rest wait
//! for a turn. The first chunk, each gap between chunks and the whole answer
//! are bounded as the manifest says, and declared to the gateway, which holds
//! the generation to the same bounds. A request whose caller goes away (every
//! client disconnected) is dropped here, which closes its connection: the
//! server stops generating.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use eventsource_stream::Eventsource;
use futures::stream::{self, BoxStream, StreamExt};
use prediction_contract::ModelName;
use prediction_contract::openai::Api;
use serde_json::{Value, json};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::{clipped, error_message};
use crate::manifest::OpenAiEntry;
use crate::model::{Chunks, GenerationBounds, Input, Model, ModelError, whole_answer};

/// The fields of the server's chunks the gateway sets itself.
const ENVELOPE: &[&str] = &["id", "object", "created", "model", "system_fingerprint"];

/// A model served by an OpenAI-compatible server.
#[derive(Debug)]
pub struct OpenAiModel {
    entry: Arc<OpenAiEntry>,
    client: reqwest::Client,
    turns: Arc<Semaphore>,
}

impl OpenAiModel {
    pub fn new(entry: OpenAiEntry) -> anyhow::Result<Self> {
        let client = super::client()?;
        Ok(Self {
            turns: Arc::new(Semaphore::new(entry.concurrency)),
            entry: Arc::new(entry),
            client,
        })
    }
}

#[async_trait]
impl Model for OpenAiModel {
    fn name(&self) -> &ModelName {
        &self.entry.name
    }

    fn version(&self) -> &str {
        &self.entry.version
    }

    fn freshness_ttl(&self) -> Option<Duration> {
        self.entry.freshness_ttl
    }

    fn generates(&self) -> bool {
        true
    }

    fn bounds(&self) -> Option<GenerationBounds> {
        Some(self.entry.bounds)
    }

    fn caches_sampled(&self) -> bool {
        self.entry.cache_sampled
    }

    async fn predict(&self, input: &Input) -> Result<Value, ModelError> {
        whole_answer(self, input).await
    }

    fn generate(&self, api: Api, request: Input) -> Chunks {
        let call = Call {
            entry: Arc::clone(&self.entry),
            client: self.client.clone(),
            turns: Arc::clone(&self.turns),
        };
        stream::once(call.open(api, request))
            .flat_map(|opened| match opened {
                Ok(chunks) => chunks,
                Err(err) => stream::once(async { Err(err) }).boxed(),
            })
            .boxed()
    }
}

/// One request to the server.
struct Call {
    entry: Arc<OpenAiEntry>,
    client: reqwest::Client,
    turns: Arc<Semaphore>,
}

impl Call {
    /// Waits for a turn, sends the request and returns its chunks (holding
    /// the turn until the last).
    async fn open(self, api: Api, mut request: Input) -> Result<Chunks, ModelError> {
        let bounds = self.entry.bounds;
        let deadline = Instant::now() + bounds.total;
        let turn = tokio::time::timeout_at(deadline, Arc::clone(&self.turns).acquire_owned())
            .await
            .map_err(|_| {
                ModelError::Failed("no turn at the model server within the model's timeout".into())
            })?
            .expect("the semaphore is never closed");
        request.insert(
            "model".into(),
            Value::String(self.entry.upstream_model.clone()),
        );
        let path = match api {
            Api::ChatCompletions => "chat/completions",
            Api::Completions => "completions",
            Api::Embeddings => "embeddings",
        };
        if api.streams() {
            request.insert("stream".into(), Value::Bool(true));
            request.insert("stream_options".into(), json!({"include_usage": true}));
        } else {
            request.insert("encoding_format".into(), json!("float"));
        }
        let mut http = self
            .client
            .post(format!("{}/{path}", self.entry.url))
            .json(&request);
        if let Some(key) = &self.entry.api_key {
            http = http.bearer_auth(key);
        }
        let first_by = deadline.min(Instant::now() + bounds.first_chunk);
        let response = tokio::time::timeout_at(first_by, http.send())
            .await
            .map_err(|_| self.failed("did not answer within the first-chunk timeout"))?
            .map_err(|err| self.failed(&format!("cannot be reached: {err}")))?;
        let status = response.status();
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            return Err(self.refused(status, &text));
        }
        if !api.streams() {
            let answer: Value = tokio::time::timeout_at(deadline, response.json())
                .await
                .map_err(|_| self.failed("did not finish within the model's timeout"))?
                .map_err(|err| self.failed(&format!("sent an answer that is not JSON: {err}")))?;
            return Ok(stream::once(async move { Ok(without_envelope(answer)) }).boxed());
        }
        Ok(self.chunks(response, first_by, deadline, turn))
    }

    /// The server's events as chunks, each within its bound.
    fn chunks(
        self,
        response: reqwest::Response,
        first_by: Instant,
        deadline: Instant,
        turn: OwnedSemaphorePermit,
    ) -> Chunks {
        struct Reading {
            events: BoxStream<'static, Result<eventsource_stream::Event, String>>,
            next_by: Instant,
            call: Call,
            _turn: OwnedSemaphorePermit,
            done: bool,
        }
        let events = response
            .bytes_stream()
            .eventsource()
            .map(|event| event.map_err(|err| err.to_string()))
            .boxed();
        let reading = Reading {
            events,
            next_by: first_by,
            call: self,
            _turn: turn,
            done: false,
        };
        stream::unfold(reading, move |mut reading| async move {
            while !reading.done {
                let next = tokio::time::timeout_at(reading.next_by, reading.events.next()).await;
                let gap = reading.call.entry.bounds.between_chunks;
                reading.next_by = deadline.min(Instant::now() + gap);
                let outcome = match next {
                    Err(_) => Some(Err(reading
                        .call
                        .failed("stalled: no chunk within its bound"))),
                    Ok(None) => Some(Err(reading.call.failed("ended its stream without [DONE]"))),
                    Ok(Some(Err(err))) => Some(Err(reading
                        .call
                        .failed(&format!("broke its stream: {err}")))),
                    Ok(Some(Ok(event))) => reading.call.chunk(&event),
                };
                match outcome {
                    None => {}
                    Some(Err(err)) => {
                        reading.done = true;
                        return Some((Err(err), reading));
                    }
                    Some(Ok(Value::Null)) => reading.done = true,
                    Some(Ok(chunk)) => return Some((Ok(chunk), reading)),
                }
            }
            None
        })
        .boxed()
    }

    /// What one event of the server's stream gives: a chunk, `Value::Null` for
    /// `[DONE]`, an error, or nothing (an empty keep-alive chunk).
    fn chunk(&self, event: &eventsource_stream::Event) -> Option<Result<Value, ModelError>> {
        let data = event.data.trim();
        if data == "[DONE]" {
            return Some(Ok(Value::Null));
        }
        let chunk: Value = match serde_json::from_str(data) {
            Ok(chunk) => chunk,
            Err(_) => return Some(Err(self.failed("sent an event that is not JSON"))),
        };
        if let Some(error) = chunk.get("error").filter(|error| !error.is_null()) {
            let message = error
                .get("message")
                .and_then(Value::as_str)
                .map_or_else(|| error.to_string(), str::to_owned);
            return Some(Err(
                self.failed(&format!("failed mid-answer: {}", clipped(&message)))
            ));
        }
        let chunk = without_envelope(chunk);
        let has_choices = chunk
            .get("choices")
            .and_then(Value::as_array)
            .is_some_and(|choices| !choices.is_empty());
        (has_choices || chunk.get("usage").is_some()).then_some(Ok(chunk))
    }

    fn failed(&self, what: &str) -> ModelError {
        ModelError::Failed(format!(
            "the model server of {} ({}) {what}",
            self.entry.name, self.entry.url
        ))
    }

    /// The error of a request the server answered with `status`: a request it
    /// finds wrong is the caller's to fix; anything else is the model's failure.
    fn refused(&self, status: reqwest::StatusCode, body: &str) -> ModelError {
        let message = error_message(body);
        match status.as_u16() {
            400 | 422 => {
                ModelError::InvalidInput(format!("the model server refused the request: {message}"))
            }
            code => self.failed(&format!("answered {code}: {message}")),
        }
    }
}

/// `answer` without the fields the gateway sets, and without a null `usage`.
fn without_envelope(answer: Value) -> Value {
    let Value::Object(mut fields) = answer else {
        return answer;
    };
    for field in ENVELOPE {
        fields.remove(*field);
    }
    if fields.get("usage").is_some_and(Value::is_null) {
        fields.remove("usage");
    }
    Value::Object(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_envelope_and_a_null_usage_are_left_to_the_gateway() {
        let chunk = json!({"id":"x","object":"chat.completion.chunk","created":1,"model":"m","system_fingerprint":"f","choices":[{"index":0,"delta":{"content":"a"}}],"usage":null});
        assert_eq!(
            without_envelope(chunk),
            json!({"choices":[{"index":0,"delta":{"content":"a"}}]})
        );
    }
}
