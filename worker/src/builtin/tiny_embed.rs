//! The built-in `tiny-embed`: a stand-in for an embedding model, for the demo,
//! the tests and the bench. Each input text gets a deterministic unit vector of
//! [`DIMENSIONS`] numbers made from its SHA-256 (the same text, the same
//! vector); a token is a whitespace-separated word.

use async_trait::async_trait;
use futures::StreamExt;
use prediction_contract::ModelName;
use prediction_contract::openai::Api;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::model::{Chunks, Input, Model, ModelError, whole_answer};

pub const TINY_EMBED_MODEL_NAME: &str = "tiny-embed";

/// The length of every vector.
pub const DIMENSIONS: usize = 16;
/// The most texts one request may embed.
const MAX_INPUTS: usize = 2048;

#[derive(Debug)]
pub struct TinyEmbed {
    name: ModelName,
}

impl Default for TinyEmbed {
    fn default() -> Self {
        Self {
            name: ModelName::parse(TINY_EMBED_MODEL_NAME).expect("a valid constant name"),
        }
    }
}

/// The unit vector of `text`.
fn embedding(text: &str) -> Vec<f32> {
    let digest = Sha256::digest(text.as_bytes());
    let raw: Vec<f32> = digest
        .chunks(2)
        .take(DIMENSIONS)
        .map(|pair| f32::from(u16::from_le_bytes([pair[0], pair[1]])) / 32_767.5 - 1.0)
        .collect();
    let norm = raw
        .iter()
        .map(|x| x * x)
        .sum::<f32>()
        .sqrt()
        .max(f32::EPSILON);
    raw.into_iter().map(|x| x / norm).collect()
}

/// The texts of an `input`: a string, an array of strings, or token arrays
/// (each taken as its numbers' text).
fn texts(input: Option<&Value>) -> Result<Vec<String>, ModelError> {
    let bad = || {
        ModelError::InvalidInput(
            "`input` must be a string, an array of strings or an array of token arrays".into(),
        )
    };
    let texts = match input.ok_or_else(bad)? {
        Value::String(text) => vec![text.clone()],
        Value::Array(items) if !items.is_empty() => items
            .iter()
            .map(|item| match item {
                Value::String(text) => Ok(text.clone()),
                Value::Array(tokens) => Ok(tokens
                    .iter()
                    .map(Value::to_string)
                    .collect::<Vec<_>>()
                    .join(" ")),
                Value::Number(token) => Ok(token.to_string()),
                _ => Err(bad()),
            })
            .collect::<Result<_, _>>()?,
        _ => return Err(bad()),
    };
    if texts.len() > MAX_INPUTS {
        return Err(ModelError::InvalidInput(format!(
            "at most {MAX_INPUTS} inputs per request"
        )));
    }
    Ok(texts)
}

/// The answer to an embeddings request.
fn embeddings(request: &Input) -> Result<Value, ModelError> {
    let texts = texts(request.get("input"))?;
    let tokens: usize = texts
        .iter()
        .map(|text| text.split_whitespace().count())
        .sum();
    let data: Vec<Value> = texts
        .iter()
        .enumerate()
        .map(|(index, text)| json!({"object": "embedding", "index": index, "embedding": embedding(text)}))
        .collect();
    Ok(json!({
        "data": data,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }))
}

#[async_trait]
impl Model for TinyEmbed {
    fn name(&self) -> &ModelName {
        &self.name
    }

    fn version(&self) -> &str {
        "1.0.0"
    }

    fn generates(&self) -> bool {
        true
    }

    async fn predict(&self, input: &Input) -> Result<Value, ModelError> {
        whole_answer(self, input).await
    }

    fn generate(&self, api: Api, request: Input) -> Chunks {
        let answer = match api {
            Api::Embeddings => embeddings(&request),
            _ => Err(ModelError::InvalidInput(
                "tiny-embed answers embeddings only".into(),
            )),
        };
        futures::stream::once(async { answer }).boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_text_gets_the_same_unit_vector_and_another_text_another() {
        let (a, b) = (embedding("hello"), embedding("hello"));
        assert_eq!(a, b);
        assert_eq!(a.len(), DIMENSIONS);
        let norm: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5);
        assert_ne!(a, embedding("world"));
    }

    #[test]
    fn every_form_of_input_is_embedded_and_counted() {
        let request = json!({"input": ["one two", "three"]});
        let answer = embeddings(request.as_object().unwrap()).unwrap();
        assert_eq!(answer["data"].as_array().unwrap().len(), 2);
        assert_eq!(answer["data"][1]["index"], 1);
        assert_eq!(answer["usage"]["prompt_tokens"], 3);
        let bad = json!({"input": 42});
        assert!(embeddings(bad.as_object().unwrap()).is_err());
    }
}
