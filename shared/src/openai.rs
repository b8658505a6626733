//! The OpenAI API's part of the contract: which API a generative request
//! speaks, the chunks a generative model streams, and the complete answer they
//! assemble into.
//!
//! A generative model answers a streamed request ([`REPLY_STREAM`]) with chunks,
//! each one JSON object shaped as an OpenAI stream chunk without its envelope
//! (`id`, `object`, `created`, `model`, which the gateway adds): for chat,
//! `{"choices":[{"index":0,"delta":{"content":"Hel"},"finish_reason":null}]}`;
//! for completions, `{"choices":[{"index":0,"text":"Hel","finish_reason":null}]}`;
//! the token counts in a last chunk `{"choices":[],"usage":{...}}`. A request
//! that does not ask for a stream gets [`assemble`]'s complete answer. An
//! embedding model answers once: `{"data":[{"index":0,"embedding":[...]}],
//! "usage":{...}}`.
//!
//! [`REPLY_STREAM`]: crate::headers::REPLY_STREAM

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

/// The OpenAI API a generative request speaks (the `Openai-Api` header).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Api {
    /// `POST /v1/chat/completions`: `messages` in, a message out.
    ChatCompletions,
    /// `POST /v1/completions`: a `prompt` in, text out.
    Completions,
    /// `POST /v1/embeddings`: `input` in, vectors out.
    Embeddings,
}

impl Api {
    /// Its `Openai-Api` header value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ChatCompletions => "chat.completions",
            Self::Completions => "completions",
            Self::Embeddings => "embeddings",
        }
    }

    /// The API an `Openai-Api` header names.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "chat.completions" => Some(Self::ChatCompletions),
            "completions" => Some(Self::Completions),
            "embeddings" => Some(Self::Embeddings),
            _ => None,
        }
    }

    /// The API a request without the header speaks, told by its fields (a
    /// `nats req` by hand): `messages`, `prompt` or `input`.
    pub fn infer(request: &Map<String, Value>) -> Option<Self> {
        if request.contains_key("messages") {
            Some(Self::ChatCompletions)
        } else if request.contains_key("prompt") {
            Some(Self::Completions)
        } else if request.contains_key("input") {
            Some(Self::Embeddings)
        } else {
            None
        }
    }

    /// Whether its answers stream.
    pub fn streams(self) -> bool {
        !matches!(self, Self::Embeddings)
    }
}

/// The fields of a request that cannot change its answer, left out of its
/// cache key, each with the reason.
pub const NOT_IN_CACHE_KEY: &[(&str, &str)] = &[
    (
        "stream",
        "whether the answer is streamed: one entry serves both",
    ),
    (
        "stream_options",
        "whether a streamed answer ends with its token counts: the entry has them",
    ),
    (
        "encoding_format",
        "embeddings as floats or base64: the same vectors, encoded on the way out",
    ),
    (
        "user",
        "an end-user id for the provider's abuse monitoring; answers are partitioned by API token instead",
    ),
];

/// Whether a request samples its answer: a `temperature` above 0 (OpenAI's
/// default is 1) and no `seed`, so two calls may well answer differently.
pub fn is_sampled(request: &Map<String, Value>) -> bool {
    let temperature = request
        .get("temperature")
        .and_then(Value::as_f64)
        .unwrap_or(1.0);
    temperature > 0.0 && request.get("seed").is_none_or(Value::is_null)
}

/// The token counts of an answer's chunks (the last `usage` seen): prompt
/// and completion tokens.
pub fn usage(chunks: &[Value]) -> Option<(u64, u64)> {
    chunks
        .iter()
        .rev()
        .find_map(|chunk| chunk.get("usage").filter(|usage| usage.is_object()))
        .map(|usage| {
            let count = |field: &str| usage.get(field).and_then(Value::as_u64).unwrap_or(0);
            (count("prompt_tokens"), count("completion_tokens"))
        })
}

/// One choice, as its chunks build it.
#[derive(Debug, Default)]
struct Choice {
    role: Option<Value>,
    content: Option<String>,
    reasoning_content: Option<String>,
    text: String,
    tool_calls: BTreeMap<u64, ToolCall>,
    finish_reason: Option<Value>,
    logprobs: Vec<Value>,
}

#[derive(Debug, Default)]
struct ToolCall {
    id: Option<Value>,
    kind: Option<Value>,
    name: Option<Value>,
    arguments: String,
}

/// The complete answer `chunks` make, without its envelope: for chat,
/// `{"choices":[{"index","message","logprobs","finish_reason"}],"usage"}`, the
/// message's content, reasoning content and tool calls (merged by index, their
/// arguments concatenated) as the deltas built them; for completions each
/// choice's text. Chunks that are not objects are passed over.
pub fn assemble(api: Api, chunks: &[Value]) -> Value {
    let mut choices: BTreeMap<u64, Choice> = BTreeMap::new();
    for chunk in chunks {
        let Some(chunk_choices) = chunk.get("choices").and_then(Value::as_array) else {
            continue;
        };
        for part in chunk_choices {
            let index = part.get("index").and_then(Value::as_u64).unwrap_or(0);
            let choice = choices.entry(index).or_default();
            if let Some(reason) = part.get("finish_reason").filter(|r| !r.is_null()) {
                choice.finish_reason = Some(reason.clone());
            }
            if let Some(tokens) = part
                .get("logprobs")
                .and_then(|logprobs| logprobs.get("content"))
                .and_then(Value::as_array)
            {
                choice.logprobs.extend(tokens.iter().cloned());
            }
            if let Some(text) = part.get("text").and_then(Value::as_str) {
                choice.text.push_str(text);
            }
            let Some(delta) = part.get("delta") else {
                continue;
            };
            if let Some(role) = delta.get("role").filter(|role| !role.is_null()) {
                choice.role = Some(role.clone());
            }
            if let Some(content) = delta.get("content").and_then(Value::as_str) {
                choice
                    .content
                    .get_or_insert_with(String::new)
                    .push_str(content);
            }
            if let Some(reasoning) = delta.get("reasoning_content").and_then(Value::as_str) {
                choice
                    .reasoning_content
                    .get_or_insert_with(String::new)
                    .push_str(reasoning);
            }
            for call in delta
                .get("tool_calls")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let call_index = call.get("index").and_then(Value::as_u64).unwrap_or(0);
                let merged = choice.tool_calls.entry(call_index).or_default();
                if let Some(id) = call.get("id").filter(|id| !id.is_null()) {
                    merged.id = Some(id.clone());
                }
                if let Some(kind) = call.get("type").filter(|kind| !kind.is_null()) {
                    merged.kind = Some(kind.clone());
                }
                if let Some(function) = call.get("function") {
                    if let Some(name) = function.get("name").filter(|name| !name.is_null()) {
                        merged.name = Some(name.clone());
                    }
                    if let Some(arguments) = function.get("arguments").and_then(Value::as_str) {
                        merged.arguments.push_str(arguments);
                    }
                }
            }
        }
    }
    let choices: Vec<Value> = choices
        .into_iter()
        .map(|(index, choice)| {
            let logprobs = if choice.logprobs.is_empty() {
                Value::Null
            } else {
                json!({ "content": choice.logprobs })
            };
            let finish_reason = choice.finish_reason.unwrap_or(Value::Null);
            match api {
                Api::Completions => json!({
                    "index": index,
                    "text": choice.text,
                    "logprobs": logprobs,
                    "finish_reason": finish_reason,
                }),
                Api::ChatCompletions | Api::Embeddings => {
                    let mut message = Map::new();
                    message.insert(
                        "role".into(),
                        choice.role.unwrap_or_else(|| json!("assistant")),
                    );
                    message.insert(
                        "content".into(),
                        choice.content.map_or(Value::Null, Value::String),
                    );
                    if let Some(reasoning) = choice.reasoning_content {
                        message.insert("reasoning_content".into(), Value::String(reasoning));
                    }
                    if !choice.tool_calls.is_empty() {
                        let calls: Vec<Value> = choice
                            .tool_calls
                            .into_values()
                            .map(|call| {
                                json!({
                                    "id": call.id.unwrap_or(Value::Null),
                                    "type": call.kind.unwrap_or_else(|| json!("function")),
                                    "function": {
                                        "name": call.name.unwrap_or(Value::Null),
                                        "arguments": call.arguments,
                                    },
                                })
                            })
                            .collect();
                        message.insert("tool_calls".into(), Value::Array(calls));
                    }
                    json!({
                        "index": index,
                        "message": message,
                        "logprobs": logprobs,
                        "finish_reason": finish_reason,
                    })
                }
            }
        })
        .collect();
    let mut answer = Map::new();
    answer.insert("choices".into(), Value::Array(choices));
    if let Some(usage) = chunks
        .iter()
        .rev()
        .find_map(|chunk| chunk.get("usage").filter(|usage| usage.is_object()))
    {
        answer.insert("usage".into(), usage.clone());
    }
    Value::Object(answer)
}

/// The chunks that would have built `answer`, a complete chat or completion
/// answer (what a worker that does not stream sends): one chunk per choice with
/// all of it, then the usage. [`assemble`] gives `answer` back.
pub fn chunks_of(answer: &Value) -> Vec<Value> {
    let mut chunks = Vec::new();
    for choice in answer
        .get("choices")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let mut part = Map::new();
        part.insert(
            "index".into(),
            choice.get("index").cloned().unwrap_or(json!(0)),
        );
        if let Some(text) = choice.get("text") {
            part.insert("text".into(), text.clone());
        }
        if let Some(message) = choice.get("message").and_then(Value::as_object) {
            let mut delta = message.clone();
            if let Some(Value::Array(calls)) = delta.get_mut("tool_calls") {
                for (index, call) in calls.iter_mut().enumerate() {
                    if let Some(call) = call.as_object_mut() {
                        call.insert("index".into(), json!(index));
                    }
                }
            }
            part.insert("delta".into(), Value::Object(delta));
        }
        if let Some(logprobs) = choice.get("logprobs").filter(|l| !l.is_null()) {
            part.insert("logprobs".into(), logprobs.clone());
        }
        part.insert(
            "finish_reason".into(),
            choice.get("finish_reason").cloned().unwrap_or(Value::Null),
        );
        chunks.push(json!({ "choices": [part] }));
    }
    if let Some(usage) = answer.get("usage").filter(|usage| usage.is_object()) {
        chunks.push(json!({ "choices": [], "usage": usage }));
    }
    chunks
}

/// A generation's answer as the cache keeps it, made once when it is stored
/// so that a hit is answered without assembling anything:
/// `{"chunks":[...],"usage":{...}|null,"whole":{...}}`: the chunks as the
/// model produced them, without their token counts; the last counts given;
/// and the complete answer they make ([`assemble`]).
pub fn stored_answer(api: Api, chunks: &[Value]) -> Vec<u8> {
    let whole = assemble(api, chunks);
    let mut usage = Value::Null;
    let mut kept = Vec::with_capacity(chunks.len());
    for chunk in chunks {
        let Value::Object(fields) = chunk else {
            continue;
        };
        let mut fields = fields.clone();
        if let Some(counts) = fields.remove("usage").filter(Value::is_object) {
            usage = counts;
        }
        let has_choices = fields
            .get("choices")
            .and_then(Value::as_array)
            .is_some_and(|choices| !choices.is_empty());
        if has_choices || fields.keys().any(|key| key != "choices") {
            kept.push(Value::Object(fields));
        }
    }
    serde_json::to_vec(&json!({"chunks": kept, "usage": usage, "whole": whole}))
        .expect("a JSON value serializes")
}

/// A stored answer ([`stored_answer`]) read without parsing its parts: each
/// is the JSON text as stored.
#[derive(Debug, Deserialize)]
pub struct StoredAnswer<'a> {
    #[serde(borrow)]
    pub chunks: Vec<&'a RawValue>,
    #[serde(borrow)]
    pub usage: Option<&'a RawValue>,
    #[serde(borrow)]
    pub whole: &'a RawValue,
}

#[derive(Debug, Deserialize)]
struct TokenCounts {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

impl<'a> StoredAnswer<'a> {
    pub fn read(stored: &'a [u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(stored)
    }

    /// Its prompt and completion tokens, if counted.
    pub fn tokens(&self) -> Option<(u64, u64)> {
        let counts: TokenCounts = serde_json::from_str(self.usage?.get()).ok()?;
        Some((counts.prompt_tokens, counts.completion_tokens))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(values: &[Value]) -> Vec<Value> {
        values.to_vec()
    }

    #[test]
    fn chat_chunks_assemble_into_messages_per_choice() {
        let stream = chunks(&[
            json!({"choices":[{"index":0,"delta":{"role":"assistant","content":""}},{"index":1,"delta":{"role":"assistant","content":"B"}}]}),
            json!({"choices":[{"index":0,"delta":{"reasoning_content":"think"}}]}),
            json!({"choices":[{"index":0,"delta":{"content":"Hel"}}]}),
            json!({"choices":[{"index":0,"delta":{"content":"lo"},"finish_reason":"stop"},{"index":1,"delta":{},"finish_reason":"length"}]}),
            json!({"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":3,"total_tokens":8}}),
        ]);
        let answer = assemble(Api::ChatCompletions, &stream);
        assert_eq!(
            answer["choices"][0],
            json!({"index":0,"message":{"role":"assistant","content":"Hello","reasoning_content":"think"},"logprobs":null,"finish_reason":"stop"})
        );
        assert_eq!(answer["choices"][1]["message"]["content"], "B");
        assert_eq!(answer["choices"][1]["finish_reason"], "length");
        assert_eq!(answer["usage"]["total_tokens"], 8);
        assert_eq!(usage(&stream), Some((5, 3)));
    }

    #[test]
    fn tool_call_deltas_merge_by_index_and_concatenate_their_arguments() {
        let stream = chunks(&[
            json!({"choices":[{"index":0,"delta":{"role":"assistant","content":null,"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"weather","arguments":"{\"ci"}}]}}]}),
            json!({"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"ty\":\"Oslo\"}"}}]}}]}),
            json!({"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}),
        ]);
        let message = &assemble(Api::ChatCompletions, &stream)["choices"][0]["message"];
        assert_eq!(message["content"], Value::Null);
        assert_eq!(
            message["tool_calls"],
            json!([{"id":"call_1","type":"function","function":{"name":"weather","arguments":"{\"city\":\"Oslo\"}"}}])
        );
    }

    #[test]
    fn a_whole_answer_makes_chunks_that_assemble_into_it_again() {
        let answer = json!({
            "choices": [
                {"index":0,"message":{"role":"assistant","content":"Hi","tool_calls":[{"id":"c","type":"function","function":{"name":"f","arguments":"{}"}}]},"logprobs":null,"finish_reason":"tool_calls"},
                {"index":1,"message":{"role":"assistant","content":"Yo"},"logprobs":null,"finish_reason":"stop"},
            ],
            "usage": {"prompt_tokens":1,"completion_tokens":2,"total_tokens":3},
        });
        assert_eq!(assemble(Api::ChatCompletions, &chunks_of(&answer)), answer);
        let text =
            json!({"choices":[{"index":0,"text":"abc","logprobs":null,"finish_reason":"stop"}]});
        assert_eq!(assemble(Api::Completions, &chunks_of(&text)), text);
    }

    #[test]
    fn completion_chunks_assemble_into_text() {
        let stream = chunks(&[
            json!({"choices":[{"index":0,"text":"Once "}]}),
            json!({"choices":[{"index":0,"text":"upon","finish_reason":"stop"}]}),
        ]);
        assert_eq!(
            assemble(Api::Completions, &stream)["choices"][0],
            json!({"index":0,"text":"Once upon","logprobs":null,"finish_reason":"stop"})
        );
        assert_eq!(usage(&stream), None);
    }

    #[test]
    fn a_request_samples_unless_its_temperature_is_zero_or_it_has_a_seed() {
        let request = |value: Value| value.as_object().unwrap().clone();
        assert!(is_sampled(&request(json!({"messages": []}))));
        assert!(is_sampled(&request(json!({"temperature": 0.7}))));
        assert!(!is_sampled(&request(json!({"temperature": 0}))));
        assert!(!is_sampled(&request(
            json!({"temperature": 1.0, "seed": 7})
        )));
    }

    #[test]
    fn the_api_is_named_by_its_header_or_told_by_the_fields() {
        for api in [Api::ChatCompletions, Api::Completions, Api::Embeddings] {
            assert_eq!(Api::parse(api.as_str()), Some(api));
        }
        let infer = |value: Value| Api::infer(value.as_object().unwrap());
        assert_eq!(infer(json!({"messages": []})), Some(Api::ChatCompletions));
        assert_eq!(infer(json!({"prompt": "x"})), Some(Api::Completions));
        assert_eq!(infer(json!({"input": "x"})), Some(Api::Embeddings));
        assert_eq!(infer(json!({"product_id": "x"})), None);
    }

    #[test]
    fn a_stored_answer_keeps_the_chunks_apart_from_their_counts_and_the_whole_answer() {
        let stream = chunks(&[
            json!({"choices":[{"index":0,"delta":{"role":"assistant","content":"Hi"}}],"usage":{"prompt_tokens":1,"completion_tokens":1}}),
            json!({"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}),
            json!({"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}),
        ]);
        let stored = stored_answer(Api::ChatCompletions, &stream);
        let read = StoredAnswer::read(&stored).unwrap();
        assert_eq!(
            read.chunks.len(),
            2,
            "the usage-only chunk is kept as the usage"
        );
        assert!(!read.chunks[0].get().contains("usage"));
        assert_eq!(read.tokens(), Some((1, 2)));
        let whole: Value = serde_json::from_str(read.whole.get()).unwrap();
        assert_eq!(whole, assemble(Api::ChatCompletions, &stream));
        let no_usage = stored_answer(Api::Completions, &stream[1..2]);
        assert_eq!(StoredAnswer::read(&no_usage).unwrap().tokens(), None);
    }
}
