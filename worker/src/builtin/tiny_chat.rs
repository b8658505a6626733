//! The built-in `tiny-chat`: a stand-in for an LLM, for the demo, the tests and
//! the bench. It answers chat and completion requests deterministically from
//! the prompt (the same request always gets the same answer), streamed a token
//! (a word) at a time at `--token-interval-ms`, with the usage counts an LLM
//! server reports. What it does with a request's fields:
//!
//! - `messages` (chat) or `prompt` (completions): the answer is `"You said: "`
//!   and the last user message's (or the prompt's) words, at most
//!   `max_tokens` (or `max_completion_tokens`, default 32) tokens;
//! - `n`: that many choices, choice `i > 0` ending with `" (take i)"`;
//! - `tools` (and a `tool_choice` other than `"none"`): a call of the first
//!   tool, its arguments `{"query": <the last user message>}` streamed in two
//!   pieces, and `finish_reason: "tool_calls"`;
//! - `reasoning_effort`: reasoning content (`reasoning_content` deltas)
//!   before the answer.
//!
//! Token counts: a token is a whitespace-separated word, of every message's
//! content (the prompt) and of what it streams (the completion).

use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use prediction_contract::ModelName;
use prediction_contract::openai::Api;
use serde_json::{Value, json};

use crate::model::{Chunks, GenerationBounds, Input, Model, ModelError, whole_answer};

pub const TINY_CHAT_MODEL_NAME: &str = "tiny-chat";

/// Tokens of an answer when the request does not say.
const DEFAULT_MAX_TOKENS: u64 = 32;
/// The most choices one request may ask for.
const MAX_CHOICES: u64 = 8;

#[derive(Debug)]
pub struct TinyChat {
    name: ModelName,
    /// Time per token streamed.
    interval: Duration,
}

impl TinyChat {
    pub fn new(interval: Duration) -> Self {
        Self {
            name: ModelName::parse(TINY_CHAT_MODEL_NAME).expect("a valid constant name"),
            interval,
        }
    }
}

/// The words of the text of a message's `content` (a string, or an array of
/// parts with `text`).
fn words(content: &Value) -> Vec<String> {
    match content {
        Value::String(text) => text.split_whitespace().map(str::to_owned).collect(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|part| part.get("text").and_then(Value::as_str))
            .flat_map(|text| text.split_whitespace().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

/// What the request says, and what the model will answer.
struct Plan {
    api: Api,
    /// Words of the whole prompt (every message).
    prompt_tokens: u64,
    /// The words echoed back: the last user message's, or the prompt's.
    said: Vec<String>,
    max_tokens: u64,
    choices: u64,
    /// The first tool's name, if a tool is to be called.
    tool: Option<String>,
    reasons: bool,
}

impl Plan {
    fn of(api: Api, request: &Input) -> Result<Self, ModelError> {
        let (prompt_tokens, said) = match api {
            Api::ChatCompletions => {
                let messages = request
                    .get("messages")
                    .and_then(Value::as_array)
                    .filter(|messages| !messages.is_empty())
                    .ok_or_else(|| {
                        ModelError::InvalidInput("`messages` must be a non-empty array".into())
                    })?;
                let prompt = messages
                    .iter()
                    .map(|message| words(message.get("content").unwrap_or(&Value::Null)).len())
                    .sum::<usize>();
                let last_user = messages
                    .iter()
                    .rev()
                    .find(|message| message.get("role").and_then(Value::as_str) == Some("user"))
                    .map(|message| words(message.get("content").unwrap_or(&Value::Null)))
                    .unwrap_or_default();
                (prompt as u64, last_user)
            }
            Api::Completions => {
                let prompt = match request.get("prompt") {
                    Some(Value::String(text)) => words(&Value::String(text.clone())),
                    Some(Value::Array(texts)) => texts.iter().flat_map(words).collect(),
                    _ => {
                        return Err(ModelError::InvalidInput(
                            "`prompt` must be a string or an array of strings".into(),
                        ));
                    }
                };
                (prompt.len() as u64, prompt)
            }
            Api::Embeddings => {
                return Err(ModelError::InvalidInput(
                    "tiny-chat answers chat and completions, not embeddings".into(),
                ));
            }
        };
        let number = |field: &str| request.get(field).and_then(Value::as_u64);
        let choices = number("n").unwrap_or(1);
        if choices == 0 || choices > MAX_CHOICES {
            return Err(ModelError::InvalidInput(format!(
                "`n` must be between 1 and {MAX_CHOICES}"
            )));
        }
        let tool = (api == Api::ChatCompletions
            && request.get("tool_choice").and_then(Value::as_str) != Some("none"))
        .then(|| {
            request
                .get("tools")?
                .as_array()?
                .first()?
                .get("function")?
                .get("name")?
                .as_str()
                .map(str::to_owned)
        })
        .flatten();
        Ok(Self {
            api,
            prompt_tokens,
            said,
            max_tokens: number("max_completion_tokens")
                .or_else(|| number("max_tokens"))
                .unwrap_or(DEFAULT_MAX_TOKENS)
                .max(1),
            choices,
            tool,
            reasons: request.contains_key("reasoning_effort"),
        })
    }

    /// The tokens of choice `index`'s answer, and whether it was cut short.
    fn tokens(&self, index: u64) -> (Vec<String>, bool) {
        let mut tokens = vec!["You".to_owned(), "said:".to_owned()];
        tokens.extend(self.said.iter().cloned());
        if index > 0 {
            tokens.push(format!("(take {index})"));
        }
        let cut = tokens.len() as u64 > self.max_tokens;
        tokens.truncate(self.max_tokens as usize);
        // A space before every token but the first, as tokenizers do.
        let spaced = tokens
            .into_iter()
            .enumerate()
            .map(|(at, token)| if at == 0 { token } else { format!(" {token}") })
            .collect();
        (spaced, cut)
    }

    /// Every chunk of the answer, in order.
    fn chunks(&self) -> Vec<Value> {
        let mut chunks = Vec::new();
        let mut completion_tokens = 0u64;
        for index in 0..self.choices {
            let piece = |delta: Value| match self.api {
                Api::Completions => {
                    json!({"choices": [{"index": index, "text": delta, "finish_reason": null}]})
                }
                _ => json!({"choices": [{"index": index, "delta": delta, "finish_reason": null}]}),
            };
            if self.api == Api::ChatCompletions {
                chunks.push(piece(json!({"role": "assistant", "content": ""})));
                if self.reasons {
                    for thought in ["Thinking", " about", " the", " request."] {
                        chunks.push(piece(json!({"reasoning_content": thought})));
                        completion_tokens += 1;
                    }
                }
            }
            let finish_reason = if let Some(tool) = &self.tool {
                let arguments = json!({ "query": self.said.join(" ") }).to_string();
                let (head, tail) = arguments.split_at(arguments.len() / 2);
                chunks.push(piece(json!({"tool_calls": [{
                    "index": 0,
                    "id": format!("call_{index}"),
                    "type": "function",
                    "function": {"name": tool, "arguments": head},
                }]})));
                chunks.push(piece(
                    json!({"tool_calls": [{"index": 0, "function": {"arguments": tail}}]}),
                ));
                completion_tokens += 2;
                "tool_calls"
            } else {
                let (tokens, cut) = self.tokens(index);
                for token in tokens {
                    chunks.push(match self.api {
                        Api::Completions => piece(Value::String(token)),
                        _ => piece(json!({ "content": token })),
                    });
                    completion_tokens += 1;
                }
                if cut { "length" } else { "stop" }
            };
            chunks.push(match self.api {
                Api::Completions => json!({"choices": [{"index": index, "text": "", "finish_reason": finish_reason}]}),
                _ => json!({"choices": [{"index": index, "delta": {}, "finish_reason": finish_reason}]}),
            });
        }
        chunks.push(json!({
            "choices": [],
            "usage": {
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": self.prompt_tokens + completion_tokens,
            },
        }));
        chunks
    }
}

#[async_trait]
impl Model for TinyChat {
    fn name(&self) -> &ModelName {
        &self.name
    }

    fn version(&self) -> &str {
        "1.0.0"
    }

    fn generates(&self) -> bool {
        true
    }

    fn bounds(&self) -> Option<GenerationBounds> {
        Some(GenerationBounds {
            total: Duration::from_secs(120),
            first_chunk: Duration::from_secs(10),
            between_chunks: Duration::from_secs(5).max(self.interval * 4),
        })
    }

    async fn predict(&self, input: &Input) -> Result<Value, ModelError> {
        whole_answer(self, input).await
    }

    fn generate(&self, api: Api, request: Input) -> Chunks {
        let interval = self.interval;
        match Plan::of(api, &request) {
            Ok(plan) => futures::stream::iter(plan.chunks())
                .then(move |chunk| async move {
                    // A token at a time, the way an LLM produces them.
                    tokio::time::sleep(interval).await;
                    Ok(chunk)
                })
                .boxed(),
            Err(err) => futures::stream::once(async { Err(err) }).boxed(),
        }
    }
}

#[cfg(test)]
mod tests {
    use prediction_contract::openai::{assemble, usage};

    use super::*;

    fn plan(request: Value) -> Plan {
        Plan::of(Api::ChatCompletions, request.as_object().unwrap()).unwrap()
    }

    #[test]
    fn the_answer_echoes_the_last_user_message_with_its_token_counts() {
        let chunks = plan(json!({"messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hello there"},
        ]}))
        .chunks();
        let answer = assemble(Api::ChatCompletions, &chunks);
        assert_eq!(
            answer["choices"][0]["message"]["content"],
            "You said: Hello there"
        );
        assert_eq!(answer["choices"][0]["finish_reason"], "stop");
        // Prompt: 2 + 2 words; completion: 4 tokens.
        assert_eq!(usage(&chunks), Some((4, 4)));
    }

    #[test]
    fn n_choices_tools_reasoning_and_max_tokens_are_honoured() {
        let chunks = plan(json!({
            "messages": [{"role": "user", "content": "weather in Oslo"}],
            "n": 2,
            "reasoning_effort": "low",
            "tools": [{"type": "function", "function": {"name": "forecast", "parameters": {}}}],
        }))
        .chunks();
        let answer = assemble(Api::ChatCompletions, &chunks);
        for index in 0..2 {
            let choice = &answer["choices"][index];
            assert_eq!(choice["finish_reason"], "tool_calls");
            assert_eq!(
                choice["message"]["tool_calls"][0]["function"],
                json!({"name": "forecast", "arguments": "{\"query\":\"weather in Oslo\"}"})
            );
            assert_eq!(
                choice["message"]["reasoning_content"],
                "Thinking about the request."
            );
        }
        let short = plan(
            json!({"messages": [{"role": "user", "content": "one two three"}], "max_tokens": 2}),
        );
        let answer = assemble(Api::ChatCompletions, &short.chunks());
        assert_eq!(answer["choices"][0]["message"]["content"], "You said:");
        assert_eq!(answer["choices"][0]["finish_reason"], "length");
    }

    #[test]
    fn completions_stream_text_and_bad_requests_are_refused() {
        let request = json!({"prompt": "Once upon"});
        let plan = Plan::of(Api::Completions, request.as_object().unwrap()).unwrap();
        let answer = assemble(Api::Completions, &plan.chunks());
        assert_eq!(answer["choices"][0]["text"], "You said: Once upon");
        for bad in [
            json!({"messages": []}),
            json!({"messages": [{"role": "user", "content": "x"}], "n": 99}),
        ] {
            assert!(matches!(
                Plan::of(Api::ChatCompletions, bad.as_object().unwrap()),
                Err(ModelError::InvalidInput(_))
            ));
        }
    }
}
