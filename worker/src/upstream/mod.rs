//! Models that other servers run, which the worker forwards to and the
//! gateway caches: [`openai`] (any OpenAI-compatible server: vLLM, llama.cpp,
//! Ollama, TGI) and [`oip`] (any Open Inference Protocol server: Triton,
//! KServe, MLServer, OpenVINO Model Server). Each is a manifest entry
//! (`crate::manifest`) with its URL, concurrency and timeouts.

pub mod oip;
pub mod openai;

use std::time::Duration;

pub use oip::OipModel;
pub use openai::OpenAiModel;

/// How long connecting to a server may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The most of an error body passed on in a message.
const MAX_ERROR_TEXT: usize = 512;

/// An HTTP client for one server.
fn client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .build()?)
}

/// `text` cut to [`MAX_ERROR_TEXT`] bytes (at a character boundary).
fn clipped(text: &str) -> &str {
    let mut end = text.len().min(MAX_ERROR_TEXT);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The message of a server's error body: `{"error": {"message"}}`,
/// `{"error": "..."}`, `{"detail": ...}`, or the text itself.
fn error_message(body: &str) -> String {
    let message = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|body| {
            body.pointer("/error/message")
                .or_else(|| body.get("error"))
                .or_else(|| body.get("detail"))
                .or_else(|| body.get("message"))
                .map(|message| {
                    message
                        .as_str()
                        .map_or_else(|| message.to_string(), str::to_owned)
                })
        })
        .unwrap_or_else(|| body.to_owned());
    clipped(&message).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_text_is_clipped_at_a_character_boundary() {
        let long = "é".repeat(MAX_ERROR_TEXT);
        let clipped = clipped(&long);
        assert!(clipped.len() <= MAX_ERROR_TEXT);
        assert!(clipped.chars().all(|c| c == 'é'));
    }

    #[test]
    fn a_servers_error_message_is_found_in_its_usual_places() {
        assert_eq!(error_message(r#"{"error":{"message":"a"}}"#), "a");
        assert_eq!(error_message(r#"{"error":"b"}"#), "b");
        assert_eq!(error_message(r#"{"detail":"c"}"#), "c");
        assert_eq!(error_message("plain"), "plain");
    }
}
