//! Generative models over NATS: one complete answer to a plain request (what
//! `nats req` shows), chunks then an end to a streamed one, and a stream the
//! caller cancels.

use std::time::Duration;

use async_nats::HeaderMap;
use futures::StreamExt;
use prediction_contract::headers::{OPENAI_API, REPLY_KIND, REPLY_STREAM, WORKER_ID, reply_kinds};
use prediction_contract::subjects::cancel_subject;
use serde_json::Value;

use crate::{header, request, start};

const CHAT: &[u8] = br#"{"messages":[{"role":"user","content":"one two three"}]}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_request_to_a_chat_model_gets_one_complete_answer() {
    let mut running = start(&["--model", "tiny-chat", "--token-interval-ms", "1"]).await;
    let reply = request(&running.client, "predict.tiny-chat", CHAT).await;
    let answer: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(
        answer["choices"][0]["message"]["content"],
        "You said: one two three"
    );
    assert_eq!(answer["usage"]["completion_tokens"], 5);
    assert_eq!(header(&reply, "Model-Version"), Some("1.0.0"));
    assert_eq!(header(&reply, REPLY_KIND), None);
    running.stop().await.unwrap();
}

/// Sends `payload` to `subject` asking for a stream; the inbox's messages.
async fn open_stream(
    client: &async_nats::Client,
    subject: &str,
    payload: &'static [u8],
) -> (String, async_nats::Subscriber) {
    let inbox = client.new_inbox();
    let messages = client.subscribe(inbox.clone()).await.unwrap();
    let mut headers = HeaderMap::new();
    headers.insert(REPLY_STREAM, "1");
    headers.insert(OPENAI_API, "chat.completions");
    client
        .publish_with_reply_and_headers(subject.to_owned(), inbox.clone(), headers, payload.into())
        .await
        .unwrap();
    (inbox, messages)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_request_gets_its_chunks_in_order_then_an_end() {
    let mut running = start(&["--model", "tiny-chat", "--token-interval-ms", "1"]).await;
    let (_, mut messages) = open_stream(&running.client, "predict.tiny-chat", CHAT).await;
    let mut chunks = Vec::new();
    let end = loop {
        let message = tokio::time::timeout(Duration::from_secs(5), messages.next())
            .await
            .expect("the stream goes on")
            .unwrap();
        assert!(header(&message, WORKER_ID).is_some_and(|id| !id.is_empty()));
        match header(&message, REPLY_KIND) {
            Some(reply_kinds::CHUNK) => {
                chunks.push(serde_json::from_slice::<Value>(&message.payload).unwrap());
            }
            Some(reply_kinds::END) => break message,
            other => panic!("unexpected reply kind {other:?}"),
        }
    };
    let text: String = chunks
        .iter()
        .filter_map(|chunk| chunk["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "You said: one two three");
    assert!(
        chunks.last().unwrap()["usage"].is_object(),
        "usage comes last"
    );
    assert!(end.payload.is_empty());
    assert_eq!(header(&end, "Model-Version"), Some("1.0.0"));
    assert_eq!(header(&end, "Nats-Service-Error-Code"), None);
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_stream_stops_without_an_end() {
    let mut running = start(&["--model", "tiny-chat", "--token-interval-ms", "50"]).await;
    let long: &'static [u8] = br#"{"messages":[{"role":"user","content":"a b c d e f g h i j k l m n o p q r s t u v w x y z"}]}"#;
    let (inbox, mut messages) = open_stream(&running.client, "predict.tiny-chat", long).await;
    let first = messages.next().await.unwrap();
    let worker_id = header(&first, WORKER_ID).unwrap().to_owned();
    running
        .client
        .publish(cancel_subject(&worker_id), inbox.into())
        .await
        .unwrap();
    // At most one chunk already on its way, then nothing: neither chunks nor an end.
    let mut after = 0;
    while let Ok(Some(message)) =
        tokio::time::timeout(Duration::from_millis(400), messages.next()).await
    {
        assert_eq!(header(&message, REPLY_KIND), Some(reply_kinds::CHUNK));
        after += 1;
    }
    assert!(after <= 1, "{after} chunks after the cancellation");
    running.stop().await.unwrap();
}
