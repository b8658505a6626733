//! What the OpenAI routes answer, as OpenAI does: a whole
//! `chat.completion` / `text_completion` / embeddings list, or server-sent
//! events, one `data: {chunk}` per chunk with the same `id` and `created`,
//! ended by `data: [DONE]` (a failure mid-stream: an `error` event, then the
//! end). An entry holds a generation's chunks as the model produced them, so
//! a hit replays them, tool calls, reasoning content and usage included, and
//! a whole answer is assembled from them.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::{BufMut, Bytes, BytesMut};
use futures::stream;
use prediction_contract::ModelName;
use prediction_contract::openai::{Api, StoredAnswer};
use prometheus::Histogram;
use serde_json::{Map, Value, json};

use super::OpenAiError;
use super::request::Encoding;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::model_call::PublicFailure;
use crate::model_call::generation::{Event, Listener};
use crate::prediction::{Answer, CacheOutcome};
use crate::routes::answer::{insert_cache_headers, insert_live_cache_headers};
use crate::state::AppState;

const EVENT_STREAM: HeaderValue = HeaderValue::from_static("text/event-stream");
const JSON: HeaderValue = HeaderValue::from_static("application/json");
/// Tells a proxy in front (nginx) to pass each event on at once.
const X_ACCEL_BUFFERING: HeaderName = HeaderName::from_static("x-accel-buffering");
const DONE: &[u8] = b"data: [DONE]\n\n";

/// The fields every object of one answer shares.
#[derive(Debug)]
struct Envelope {
    id: String,
    created: u64,
    model: String,
    api: Api,
    include_usage: bool,
}

impl Envelope {
    /// `chunk` (a worker's chunk, without envelope) as one server-sent event;
    /// `None` for a usage-only chunk the client did not ask for.
    fn event(&self, chunk: Value) -> Option<Bytes> {
        let Value::Object(mut fields) = chunk else {
            return None;
        };
        if !self.include_usage
            && fields.remove("usage").is_some()
            && fields
                .get("choices")
                .and_then(Value::as_array)
                .is_none_or(Vec::is_empty)
        {
            return None;
        }
        self.wrap(&mut fields, self.chunk_object());
        let mut event = b"data: ".to_vec();
        serde_json::to_writer(&mut event, &fields).ok()?;
        event.extend_from_slice(b"\n\n");
        Some(event.into())
    }

    /// Puts the envelope's fields into `fields` (over any the worker sent).
    fn wrap(&self, fields: &mut Map<String, Value>, object: &str) {
        fields.insert("id".into(), Value::String(self.id.clone()));
        fields.insert("object".into(), Value::String(object.to_owned()));
        fields.insert("created".into(), json!(self.created));
        fields.insert("model".into(), Value::String(self.model.clone()));
    }

    /// Writes `{"id":..,"object":..,"created":..,"model":..,` (the id and the
    /// model name need no escaping: hex, and a model name's characters).
    fn open(&self, out: &mut BytesMut, object: &str) {
        let mut created = itoa::Buffer::new();
        for part in [
            r#"{"id":""#,
            &self.id,
            r#"","object":""#,
            object,
            r#"","created":"#,
            created.format(self.created),
            r#","model":""#,
            &self.model,
            r#"","#,
        ] {
            out.put_slice(part.as_bytes());
        }
    }

    /// `object` (a JSON object's text, as stored) with the envelope's fields
    /// first: spliced, not parsed.
    fn splice(&self, out: &mut BytesMut, object: &str, stored: &str) {
        self.open(out, object);
        let rest = stored.trim_start().strip_prefix('{').unwrap_or("}");
        if rest.trim_start().starts_with('}') {
            // An empty object: no field after the envelope's.
            out.truncate(out.len() - 1);
        }
        out.put_slice(rest.as_bytes());
    }

    fn chunk_object(&self) -> &'static str {
        match self.api {
            Api::ChatCompletions => "chat.completion.chunk",
            Api::Completions | Api::Embeddings => "text_completion",
        }
    }

    /// Every event of a stored answer, then `[DONE]`.
    fn events(&self, stored: &StoredAnswer<'_>) -> BytesMut {
        let size: usize = stored
            .chunks
            .iter()
            .map(|chunk| chunk.get().len() + 128)
            .sum();
        let mut body = BytesMut::with_capacity(size + 256);
        for chunk in &stored.chunks {
            body.put_slice(b"data: ");
            self.splice(&mut body, self.chunk_object(), chunk.get());
            body.put_slice(b"\n\n");
        }
        if let Some(usage) = stored.usage.filter(|_| self.include_usage) {
            body.put_slice(b"data: ");
            self.open(&mut body, self.chunk_object());
            body.put_slice(br#""choices":[],"usage":"#);
            body.put_slice(usage.get().as_bytes());
            body.put_slice(b"}\n\n");
        }
        body.put_slice(DONE);
        body
    }
}

/// The `error` event that ends a stream which failed.
fn error_event(error: &OpenAiError) -> Bytes {
    let mut event = b"event: error\ndata: ".to_vec();
    serde_json::to_writer(&mut event, &error.body()).expect("a JSON value serializes");
    event.extend_from_slice(b"\n\n");
    event.into()
}

/// An answer as its entry holds it (see `openai::stored_answer`).
fn stored(answer: &Answer) -> Result<StoredAnswer<'_>, OpenAiError> {
    StoredAnswer::read(&answer.entry.prediction)
        .map_err(|_| OpenAiError::from(ApiError::Upstream(Arc::new(PublicFailure::internal()))))
}

/// Builds the responses of one request.
#[derive(Debug)]
pub(super) struct Reply {
    envelope: Arc<Envelope>,
    encoding: Encoding,
    metrics: Metrics,
    model_label: String,
    arrived: Instant,
}

impl Reply {
    pub fn new(
        state: &AppState,
        model: &ModelName,
        api: Api,
        include_usage: bool,
        encoding: Encoding,
        arrived: Instant,
    ) -> Self {
        let prefix = match api {
            Api::ChatCompletions => "chatcmpl-",
            Api::Completions => "cmpl-",
            Api::Embeddings => "embd-",
        };
        let id = format!("{prefix}{}", uuid::Uuid::new_v4().simple());
        Self {
            envelope: Arc::new(Envelope {
                id,
                created: prediction_contract::time::unix_now_ms() / 1000,
                model: model.as_str().to_owned(),
                api,
                include_usage,
            }),
            encoding,
            metrics: state.metrics.clone(),
            model_label: state.directory.metric_label(model).to_owned(),
            arrived,
        }
    }

    /// The time-to-first-token histogram of `outcome`.
    fn first_token(&self, outcome: CacheOutcome) -> Histogram {
        let label = match outcome {
            CacheOutcome::Hit | CacheOutcome::Stale => "hit",
            _ => "miss",
        };
        self.metrics.time_to_first_token.with_label_values(&[label])
    }

    /// Counts the tokens of `stored`, an answer served from the cache.
    fn count_cached_tokens(&self, outcome: CacheOutcome, stored: &StoredAnswer<'_>) {
        if !matches!(outcome, CacheOutcome::Hit | CacheOutcome::Stale) {
            return;
        }
        if let Some((prompt, completion)) = stored.tokens() {
            let counter = &self.metrics.cached_tokens;
            counter
                .with_label_values(&[self.model_label.as_str(), "prompt"])
                .inc_by(prompt);
            counter
                .with_label_values(&[self.model_label.as_str(), "completion"])
                .inc_by(completion);
        }
    }

    /// A complete chat or completion answer: the stored one, in its envelope.
    pub fn whole(&self, answer: &Answer) -> Response {
        let stored = match stored(answer) {
            Ok(stored) => stored,
            Err(err) => return err.into_response(),
        };
        self.count_cached_tokens(answer.outcome, &stored);
        let object = match self.envelope.api {
            Api::ChatCompletions => "chat.completion",
            Api::Completions | Api::Embeddings => "text_completion",
        };
        let whole = stored.whole.get();
        let mut body = BytesMut::with_capacity(whole.len() + 256);
        self.envelope.open(&mut body, object);
        body.put_slice(br#""system_fingerprint":"#);
        let fingerprint = serde_json::to_vec(answer.entry.model_version.as_ref() as &str)
            .expect("a string serializes");
        body.put_slice(&fingerprint);
        body.put_slice(b",");
        let rest = whole.trim_start().strip_prefix('{').unwrap_or("}");
        if rest.trim_start().starts_with('}') {
            body.truncate(body.len() - 1);
        }
        body.put_slice(rest.as_bytes());
        self.first_token(answer.outcome)
            .observe(self.arrived.elapsed().as_secs_f64());
        let mut headers = HeaderMap::with_capacity(8);
        headers.insert(header::CONTENT_TYPE, JSON);
        insert_cache_headers(answer, &mut headers);
        (headers, body.freeze()).into_response()
    }

    /// A cached answer as a stream: every event at once.
    pub fn replayed_stream(&self, answer: &Answer) -> Response {
        let stored = match stored(answer) {
            Ok(stored) => stored,
            Err(err) => return err.into_response(),
        };
        self.count_cached_tokens(answer.outcome, &stored);
        let body = self.envelope.events(&stored).freeze();
        self.first_token(answer.outcome)
            .observe(self.arrived.elapsed().as_secs_f64());
        let mut headers = stream_headers();
        insert_cache_headers(answer, &mut headers);
        (headers, body).into_response()
    }

    /// A generation as a stream: each chunk sent on as it comes. When the
    /// client goes away the stream, and with it the listener, is dropped.
    pub fn live_stream(&self, listener: Listener, outcome: CacheOutcome) -> Response {
        let live = Live {
            listener,
            envelope: Arc::clone(&self.envelope),
            sent_any: false,
            ended: false,
            first_token: Some((self.first_token(outcome), self.arrived)),
        };
        let events = stream::unfold(live, |mut live| async move {
            let event = live.next_event().await?;
            Some((Ok::<_, Infallible>(event), live))
        });
        let mut headers = stream_headers();
        insert_live_cache_headers(outcome, &mut headers);
        (headers, Body::from_stream(events)).into_response()
    }

    /// A generation's complete answer, once it has ended.
    pub async fn when_complete(
        &self,
        mut listener: Listener,
        outcome: CacheOutcome,
    ) -> Result<Response, OpenAiError> {
        loop {
            match listener.next().await {
                Event::Chunk(_) => {}
                Event::End(Ok(entry)) => return Ok(self.whole(&Answer { entry, outcome })),
                Event::End(Err(failure)) => return Err(ApiError::Upstream(failure).into()),
            }
        }
    }

    /// An embeddings list: each vector as floats, or as base64 of
    /// little-endian 32-bit floats.
    pub fn embeddings(&self, answer: &Answer) -> Response {
        let reply: Value = match serde_json::from_slice(&answer.entry.prediction) {
            Ok(reply) => reply,
            Err(_) => {
                return OpenAiError::from(ApiError::Upstream(Arc::new(PublicFailure::internal())))
                    .into_response();
            }
        };
        let data: Vec<Value> = reply
            .get("data")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
            .map(|(position, item)| {
                let index = item.get("index").cloned().unwrap_or(json!(position));
                let vector = item.get("embedding").cloned().unwrap_or(Value::Null);
                let embedding = match self.encoding {
                    Encoding::Float => vector,
                    Encoding::Base64 => Value::String(base64_of(&vector)),
                };
                json!({"object": "embedding", "index": index, "embedding": embedding})
            })
            .collect();
        let usage = reply
            .get("usage")
            .cloned()
            .unwrap_or_else(|| json!({"prompt_tokens": 0, "total_tokens": 0}));
        if matches!(answer.outcome, CacheOutcome::Hit | CacheOutcome::Stale) {
            let prompt = usage
                .get("prompt_tokens")
                .and_then(Value::as_u64)
                .unwrap_or(0);
            self.metrics
                .cached_tokens
                .with_label_values(&[self.model_label.as_str(), "prompt"])
                .inc_by(prompt);
        }
        let body = json!({
            "object": "list",
            "data": data,
            "model": self.envelope.model,
            "usage": usage,
        });
        let mut headers = HeaderMap::with_capacity(8);
        headers.insert(header::CONTENT_TYPE, JSON);
        insert_cache_headers(answer, &mut headers);
        let body = serde_json::to_vec(&body).expect("a JSON value serializes");
        (headers, body).into_response()
    }
}

fn stream_headers() -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(8);
    headers.insert(header::CONTENT_TYPE, EVENT_STREAM);
    headers.insert(X_ACCEL_BUFFERING, HeaderValue::from_static("no"));
    headers
}

/// `vector` (an array of numbers) as base64 of little-endian 32-bit floats.
fn base64_of(vector: &Value) -> String {
    let mut bytes = Vec::new();
    for number in vector.as_array().into_iter().flatten() {
        let float = number.as_f64().unwrap_or(0.0) as f32;
        bytes.extend_from_slice(&float.to_le_bytes());
    }
    BASE64.encode(bytes)
}

/// A stream following a generation.
struct Live {
    listener: Listener,
    envelope: Arc<Envelope>,
    sent_any: bool,
    ended: bool,
    /// Observed at the first event sent, then taken.
    first_token: Option<(Histogram, Instant)>,
}

impl Live {
    /// The next bytes to send, `None` after the end.
    async fn next_event(&mut self) -> Option<Bytes> {
        if self.ended {
            return None;
        }
        loop {
            match self.listener.next().await {
                Event::Chunk(chunk) => {
                    let Ok(chunk) = serde_json::from_slice::<Value>(&chunk) else {
                        continue;
                    };
                    if let Some(event) = self.envelope.event(chunk) {
                        self.sent(&event);
                        return Some(event);
                    }
                }
                Event::End(Ok(entry)) => {
                    self.ended = true;
                    // A generation that streamed nothing here (an entry
                    // another gateway computed): its chunks from the entry.
                    if !self.sent_any
                        && let Ok(stored) = StoredAnswer::read(&entry.prediction)
                    {
                        let events = self.envelope.events(&stored).freeze();
                        self.sent(&events);
                        return Some(events);
                    }
                    return Some(Bytes::from_static(DONE));
                }
                Event::End(Err(failure)) => {
                    self.ended = true;
                    return Some(error_event(&ApiError::Upstream(failure).into()));
                }
            }
        }
    }

    fn sent(&mut self, _event: &Bytes) {
        self.sent_any = true;
        if let Some((histogram, arrived)) = self.first_token.take() {
            histogram.observe(arrived.elapsed().as_secs_f64());
        }
    }
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live").field("ended", &self.ended).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(include_usage: bool) -> Envelope {
        Envelope {
            id: "chatcmpl-1".into(),
            created: 7,
            model: "tiny-chat".into(),
            api: Api::ChatCompletions,
            include_usage,
        }
    }

    fn parse(event: &[u8]) -> Value {
        let text = std::str::from_utf8(event).unwrap();
        let data = text
            .strip_prefix("data: ")
            .unwrap()
            .strip_suffix("\n\n")
            .unwrap();
        serde_json::from_str(data).unwrap()
    }

    #[test]
    fn each_chunk_gets_the_envelope_and_one_event() {
        let event = envelope(false)
            .event(json!({"choices":[{"index":0,"delta":{"content":"Hi"}}]}))
            .unwrap();
        let chunk = parse(&event);
        assert_eq!(chunk["id"], "chatcmpl-1");
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(chunk["created"], 7);
        assert_eq!(chunk["model"], "tiny-chat");
        assert_eq!(chunk["choices"][0]["delta"]["content"], "Hi");
    }

    #[test]
    fn the_usage_chunk_is_sent_only_when_asked_for() {
        let usage = json!({"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}});
        assert!(envelope(false).event(usage.clone()).is_none());
        let event = envelope(true).event(usage).unwrap();
        assert_eq!(parse(&event)["usage"]["total_tokens"], 3);
    }

    #[test]
    fn a_replay_splices_the_envelope_into_each_stored_chunk_and_ends_with_done() {
        let stored = prediction_contract::openai::stored_answer(
            Api::ChatCompletions,
            &[
                json!({"choices":[{"index":0,"delta":{"content":"a"}}]}),
                json!({"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}),
                json!({"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}),
            ],
        );
        let stored = StoredAnswer::read(&stored).unwrap();
        for (include_usage, events) in [(false, 2), (true, 3)] {
            let body = envelope(include_usage).events(&stored);
            assert!(body.ends_with(DONE));
            let text = std::str::from_utf8(&body[..body.len() - DONE.len()]).unwrap();
            let chunks: Vec<Value> = text
                .split_terminator("\n\n")
                .map(|e| parse(format!("{e}\n\n").as_bytes()))
                .collect();
            assert_eq!(chunks.len(), events);
            assert!(
                chunks
                    .iter()
                    .all(|chunk| chunk["id"] == "chatcmpl-1" && chunk["model"] == "tiny-chat")
            );
            assert_eq!(chunks[0]["choices"][0]["delta"]["content"], "a");
            assert_eq!(chunks.last().unwrap().get("usage").is_some(), include_usage);
        }
    }

    #[test]
    fn an_empty_object_gets_just_the_envelope() {
        let mut out = BytesMut::new();
        envelope(false).splice(&mut out, "x", "{ }");
        let spliced: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(spliced["object"], "x");
    }

    #[test]
    fn base64_embeddings_are_little_endian_f32() {
        let encoded = base64_of(&json!([1.0, -2.5]));
        let bytes = BASE64.decode(encoded).unwrap();
        assert_eq!(
            bytes,
            [1.0f32.to_le_bytes(), (-2.5f32).to_le_bytes()].concat()
        );
    }
}
