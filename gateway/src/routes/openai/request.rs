//! An OpenAI API request as the door reads it: checked, the fields that cannot
//! change the answer set aside (`prediction_contract::openai::NOT_IN_CACHE_KEY`),
//! and its cache key made of the API, the caller's partition and the rest.

use std::sync::Arc;

use bytes::Bytes;
use prediction_contract::openai::{self, Api, NOT_IN_CACHE_KEY};
use prediction_contract::{CanonicalInput, ModelName};
use serde_json::{Map, Value, json};

use super::OpenAiError;
use crate::input::RawInput;
use crate::routes::memo::{BodyMemo, Remembered};

/// Memory for the requests read recently (see [`ReadRequests`]).
pub const READ_REQUESTS_BYTES: u64 = 4 * 1024 * 1024;

/// The most choices one request may ask for (`n`).
pub const MAX_CHOICES: u64 = 128;

/// How embeddings go back (`encoding_format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Float,
    /// Little-endian 32-bit floats, base64: what the official SDKs ask for.
    Base64,
}

/// A checked request.
#[derive(Debug, Clone)]
pub struct OpenAiRequest {
    pub model: ModelName,
    pub api: Api,
    /// `stream: true`: the answer as server-sent events.
    pub stream: bool,
    /// `stream_options.include_usage`: a last chunk with the token counts.
    pub include_usage: bool,
    pub encoding: Encoding,
    /// Whether it samples its answer (see `openai::is_sampled`).
    pub sampled: bool,
    /// What the worker gets, and what the cache key is made of.
    pub input: RawInput,
}

impl OpenAiRequest {
    /// Reads `body`, a request to `api`, from a caller whose answers belong
    /// in `partition`.
    pub fn read(api: Api, body: &[u8], partition: &str) -> Result<Self, OpenAiError> {
        let value: Value = serde_json::from_slice(body).map_err(|err| {
            OpenAiError::invalid("body", format!("the body is not valid JSON: {err}"))
        })?;
        let Value::Object(mut request) = value else {
            return Err(OpenAiError::invalid(
                "body",
                "the body must be a JSON object",
            ));
        };
        let model = match request.get("model") {
            Some(Value::String(name)) => ModelName::parse(name)
                .map_err(|err| OpenAiError::invalid("model", err.to_string()))?,
            _ => return Err(OpenAiError::invalid("model", "`model` must be a string")),
        };
        let (field, what) = match api {
            Api::ChatCompletions => ("messages", "a non-empty array of messages"),
            Api::Completions => ("prompt", "a string or an array"),
            Api::Embeddings => ("input", "a string or an array"),
        };
        let present = match request.get(field) {
            Some(Value::Array(items)) => !items.is_empty() || api != Api::ChatCompletions,
            Some(Value::String(_)) => api != Api::ChatCompletions,
            _ => false,
        };
        if !present {
            return Err(OpenAiError::invalid(
                field,
                format!("`{field}` must be {what}"),
            ));
        }
        let stream = match request.get("stream") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(stream)) => *stream,
            Some(_) => return Err(OpenAiError::invalid("stream", "`stream` must be a boolean")),
        };
        if stream && !api.streams() {
            return Err(OpenAiError::invalid(
                "stream",
                "embeddings are not streamed",
            ));
        }
        if let Some(n) = request.get("n").filter(|n| !n.is_null())
            && !n.as_u64().is_some_and(|n| (1..=MAX_CHOICES).contains(&n))
        {
            return Err(OpenAiError::invalid(
                "n",
                format!("`n` must be a whole number from 1 to {MAX_CHOICES}"),
            ));
        }
        let include_usage = request
            .get("stream_options")
            .and_then(|options| options.get("include_usage"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let encoding = match request.get("encoding_format").and_then(Value::as_str) {
            None | Some("float") => Encoding::Float,
            Some("base64") => Encoding::Base64,
            Some(other) => {
                return Err(OpenAiError::invalid(
                    "encoding_format",
                    format!("`encoding_format` must be float or base64, not {other:?}"),
                ));
            }
        };
        for (excluded, _why) in NOT_IN_CACHE_KEY {
            request.remove(*excluded);
        }
        let sampled = api != Api::Embeddings && openai::is_sampled(&request);
        let input = prepared(api, request, partition)?;
        Ok(Self {
            model,
            api,
            stream,
            include_usage,
            encoding,
            sampled,
            input,
        })
    }
}

/// Requests read recently, by (API, partition, body): see `routes::memo`.
/// Bounded by [`READ_REQUESTS_BYTES`].
#[derive(Debug)]
pub struct ReadRequests {
    memo: BodyMemo<OpenAiRequest>,
}

impl Default for ReadRequests {
    fn default() -> Self {
        Self {
            memo: BodyMemo::new(READ_REQUESTS_BYTES),
        }
    }
}

impl Remembered for OpenAiRequest {
    fn weight(&self) -> usize {
        match &self.input {
            RawInput::Prepared { payload, key } => payload.as_str().len() + key.as_str().len(),
            _ => 0,
        }
    }
}

impl ReadRequests {
    /// `body`, a request to `api` from a caller whose answers belong in
    /// `partition`, read (or remembered).
    pub fn read(
        &self,
        api: Api,
        body: &Bytes,
        partition: &str,
    ) -> Result<Arc<OpenAiRequest>, OpenAiError> {
        let mut scope = String::with_capacity(partition.len() + 20);
        scope.push_str(api.as_str());
        scope.push('/');
        scope.push_str(partition);
        self.memo
            .read(&scope, body, || OpenAiRequest::read(api, body, partition))
    }
}

/// The worker's input (the request without the set-aside fields) and the
/// cache key's material: `{"api", "partition", "request"}`.
fn prepared(
    api: Api,
    request: Map<String, Value>,
    partition: &str,
) -> Result<RawInput, OpenAiError> {
    let canonical = |value: &Value| {
        CanonicalInput::from_value(value)
            .map_err(|err| OpenAiError::invalid("body", err.to_string()))
    };
    let request = Value::Object(request);
    let payload = canonical(&request)?;
    let key = canonical(&json!({
        "api": api.as_str(),
        "partition": partition,
        "request": request,
    }))?;
    Ok(RawInput::Prepared { payload, key })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(api: Api, body: &str, partition: &str) -> Result<OpenAiRequest, OpenAiError> {
        OpenAiRequest::read(api, body.as_bytes(), partition)
    }

    fn key(request: &OpenAiRequest) -> String {
        match &request.input {
            RawInput::Prepared { key, .. } => key.as_str().to_owned(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn streaming_and_the_user_are_left_out_of_the_key_and_the_rest_is_in() {
        let plain = read(
            Api::ChatCompletions,
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#,
            "p",
        )
        .unwrap();
        let streamed = read(
            Api::ChatCompletions,
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":true},"user":"u-1"}"#,
            "p",
        )
        .unwrap();
        assert_eq!(key(&plain), key(&streamed));
        assert!(streamed.stream && streamed.include_usage);
        for field in [
            r#""temperature":0.2"#,
            r#""seed":7"#,
            r#""n":2"#,
            r#""tools":[]"#,
            r#""response_format":{"type":"json_object"}"#,
            r#""logprobs":true"#,
        ] {
            let other = read(
                Api::ChatCompletions,
                &format!(
                    r#"{{"model":"m","messages":[{{"role":"user","content":"hi"}}],{field}}}"#
                ),
                "p",
            )
            .unwrap();
            assert_ne!(key(&plain), key(&other), "{field} is in the key");
        }
    }

    #[test]
    fn two_partitions_and_two_apis_never_share_a_key() {
        let body = r#"{"model":"m","prompt":"hi","messages":[{"role":"user","content":"hi"}]}"#;
        let a = read(Api::ChatCompletions, body, "token-a").unwrap();
        let b = read(Api::ChatCompletions, body, "token-b").unwrap();
        let completions = read(Api::Completions, body, "token-a").unwrap();
        assert_ne!(key(&a), key(&b));
        assert_ne!(key(&a), key(&completions));
    }

    #[test]
    fn bad_requests_name_the_field_at_fault() {
        for (api, body, param) in [
            (Api::ChatCompletions, "[1]", "body"),
            (Api::ChatCompletions, r#"{"messages":[]}"#, "model"),
            (
                Api::ChatCompletions,
                r#"{"model":"Bad.Name","messages":[1]}"#,
                "model",
            ),
            (
                Api::ChatCompletions,
                r#"{"model":"m","messages":[]}"#,
                "messages",
            ),
            (
                Api::ChatCompletions,
                r#"{"model":"m","messages":[1],"stream":"yes"}"#,
                "stream",
            ),
            (
                Api::ChatCompletions,
                r#"{"model":"m","messages":[1],"n":0}"#,
                "n",
            ),
            (Api::Completions, r#"{"model":"m"}"#, "prompt"),
            (
                Api::Embeddings,
                r#"{"model":"m","input":"x","stream":true}"#,
                "stream",
            ),
            (
                Api::Embeddings,
                r#"{"model":"m","input":"x","encoding_format":"hex"}"#,
                "encoding_format",
            ),
        ] {
            let error = read(api, body, "p").unwrap_err();
            assert_eq!(error.param, Some(param), "{body}: {}", error.message);
            assert_eq!(error.status.as_u16(), 400);
        }
    }

    #[test]
    fn a_request_read_again_is_remembered_per_partition() {
        let requests = ReadRequests::default();
        let body = Bytes::from_static(br#"{"model":"m","messages":[1]}"#);
        let first = requests.read(Api::ChatCompletions, &body, "a").unwrap();
        let again = requests.read(Api::ChatCompletions, &body, "a").unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        let other = requests.read(Api::ChatCompletions, &body, "b").unwrap();
        assert!(!Arc::ptr_eq(&first, &other));
        assert_ne!(key(&first), key(&other));
        let completions = requests.read(
            Api::Completions,
            &Bytes::from_static(br#"{"model":"m","prompt":"x"}"#),
            "a",
        );
        assert!(completions.is_ok());
        assert!(
            requests
                .read(Api::ChatCompletions, &Bytes::from_static(b"{"), "a")
                .is_err()
        );
    }

    #[test]
    fn sampling_and_the_embeddings_encoding_are_read() {
        let sampled = read(Api::ChatCompletions, r#"{"model":"m","messages":[1]}"#, "p").unwrap();
        assert!(sampled.sampled);
        let seeded = read(
            Api::ChatCompletions,
            r#"{"model":"m","messages":[1],"seed":1}"#,
            "p",
        )
        .unwrap();
        assert!(!seeded.sampled);
        let embeddings = read(
            Api::Embeddings,
            r#"{"model":"m","input":"x","encoding_format":"base64"}"#,
            "p",
        )
        .unwrap();
        assert_eq!(embeddings.encoding, Encoding::Base64);
        assert!(!embeddings.sampled);
    }
}
