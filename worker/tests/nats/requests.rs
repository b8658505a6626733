//! Answers, errors, deadlines and heartbeats, and hostile payloads.

use std::time::Duration;

use async_nats::HeaderMap;
use serde_json::{Value, json};

use crate::{header, request, start};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_request_gets_the_prediction_and_its_metadata() {
    let mut running = start(&[]).await;

    let reply = request(
        &running.client,
        "predict.price",
        br#"{"product_id":"ETH/EUR"}"#,
    )
    .await;
    let prediction: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(prediction["product_id"], "ETH/EUR");
    assert!(prediction["predicted_price"].as_f64().unwrap() > 0.0);
    assert_eq!(header(&reply, "Model-Version"), Some("1.1.0"));
    assert!(
        header(&reply, "Compute-Time-Ms")
            .unwrap()
            .parse::<f64>()
            .unwrap()
            >= 0.0
    );
    // The stand-in declares no freshness of its own: the gateway's default applies.
    assert_eq!(header(&reply, "Freshness-Ttl-Ms"), None);
    assert_eq!(header(&reply, "Nats-Service-Error-Code"), None);
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_400_error_reply_and_the_worker_goes_on() {
    let mut running = start(&[]).await;

    for (payload, expected) in [
        (&b"not json"[..], "not valid JSON"),
        (b"[1,2,3]", "must be a JSON object"),
        (b"{\"product\":\"ETH/EUR\"}", "missing field `product_id`"),
        (b"{\"product_id\":7}", "must be a string"),
        (b"\xff\xfe", "not valid JSON"),
    ] {
        let reply = request(&running.client, "predict.price", payload).await;
        assert_eq!(header(&reply, "Nats-Service-Error-Code"), Some("400"));
        let message = header(&reply, "Nats-Service-Error").unwrap();
        assert!(message.contains(expected), "{message:?} lacks {expected:?}");
        assert!(reply.payload.is_empty());
    }

    let reply = request(
        &running.client,
        "predict.price",
        br#"{"product_id":"BTC/EUR"}"#,
    )
    .await;
    assert_eq!(header(&reply, "Nats-Service-Error-Code"), None);
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_past_its_deadline_is_not_computed() {
    let mut running = start(&[]).await;
    let mut headers = HeaderMap::new();
    headers.insert("Deadline-Unix-Ms", "1000");
    let reply = running
        .client
        .request_with_headers(
            "predict.price",
            headers,
            r#"{"product_id":"ETH/EUR"}"#.into(),
        )
        .await
        .unwrap();
    assert_eq!(header(&reply, "Nats-Service-Error-Code"), Some("504"));
    running.stop().await.unwrap();
}

/// Hostile payloads straight to the worker's endpoint: random bytes, invalid UTF-8,
/// deep nesting, huge numbers, strings near NATS's payload limit, to the stand-in and
/// to an ONNX model. Every one gets an answer (a prediction or a 400), and the worker
/// goes on serving.
#[test]
fn hostile_payloads_get_an_answer_every_time_and_the_worker_goes_on() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let manifest = test_support::example_models::manifest();
    let (running, client) = runtime.block_on(async {
        let running = start(&["--model", "price", "--model-config", &manifest]).await;
        let client = async_nats::ConnectOptions::new()
            .request_timeout(Some(Duration::from_secs(5)))
            .connect(format!(
                "nats://127.0.0.1:{}",
                running.client.server_info().port
            ))
            .await
            .unwrap();
        (running, client)
    });

    let ask_model = |model: &str, payload: Vec<u8>| {
        runtime.block_on(client.request(format!("predict.{model}"), payload.into()))
    };
    // The stand-in and an ONNX model each get every payload.
    let ask = |payload: Vec<u8>| -> Result<async_nats::Message, async_nats::RequestError> {
        let onnx = ask_model("price-gbt", payload.clone())?;
        if !answered_properly_by(&onnx) {
            return Ok(onnx);
        }
        ask_model("price", payload)
    };
    let answered_properly = answered_properly_by;

    let max_payload = client.server_info().max_payload;
    let fixed: Vec<Vec<u8>> = vec![
        format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)).into_bytes(),
        br#"{"product_id": 1e999999999}"#.to_vec(),
        format!(r#"{{"product_id": {}}}"#, "9".repeat(10_000)).into_bytes(),
        b"\xff\xfe\xfd{\"product_id\":\"\xc3\x28\"}".to_vec(),
        br#"{"features": [1e999999999, 1, 2, 3, 4, 5, 6, 7, 8, 9]}"#.to_vec(),
        br#"{"features": [1e39, 1, 2, 3, 4, 5, 6, 7, 8, 9]}"#.to_vec(),
        br#"{"features": [null, [], {}, "1", true, -0, 0, 0, 0, 0]}"#.to_vec(),
        format!(r#"{{"features": [{}1]}}"#, "1,".repeat(200_000)).into_bytes(),
        format!(r#"{{"product_id": "{}"}}"#, "x".repeat(max_payload - 1_024)).into_bytes(),
        Vec::new(),
    ];
    for payload in fixed {
        let reply = ask(payload).expect("a hostile payload still gets a reply");
        assert!(
            answered_properly(&reply),
            "improper reply {:?}",
            reply.headers
        );
    }

    let mut runner = TestRunner::new(Config {
        cases: 200,
        ..Config::default()
    });
    runner
        .run(&prop::collection::vec(any::<u8>(), 0..4_096), |payload| {
            let reply = ask(payload).map_err(|err| TestCaseError::fail(err.to_string()))?;
            prop_assert!(answered_properly(&reply));
            Ok(())
        })
        .unwrap();

    // Any ten numbers a 32-bit float holds get a prediction; other arrays a 400.
    runner
        .run(
            &prop::collection::vec(prop_oneof![any::<f64>(), -1e6..1e6f64], 0..14),
            |features| {
                let body = serde_json::to_vec(&json!({ "features": features })).unwrap();
                let reply = ask_model("price-gbt", body)
                    .map_err(|err| TestCaseError::fail(err.to_string()))?;
                prop_assert!(answered_properly(&reply));
                let fits = features.len() == 10
                    && features
                        .iter()
                        .all(|v| v.is_finite() && (*v as f32).is_finite());
                prop_assert_eq!(header(&reply, "Nats-Service-Error-Code").is_none(), fits);
                Ok(())
            },
        )
        .unwrap();

    for model in ["price", "price-gbt"] {
        let body = if model == "price" {
            br#"{"product_id":"ETH/EUR"}"#.to_vec()
        } else {
            br#"{"features":[1,2,3,4,5,6,7,8,9,10]}"#.to_vec()
        };
        let reply = ask_model(model, body).unwrap();
        assert_eq!(
            header(&reply, "Nats-Service-Error-Code"),
            None,
            "the worker goes on serving {model}"
        );
    }
    drop(running);
}

/// A proper answer to any payload: a JSON prediction, or a 400 with an empty body.
fn answered_properly_by(reply: &async_nats::Message) -> bool {
    match header(reply, "Nats-Service-Error-Code") {
        Some(code) => code == "400" && reply.payload.is_empty(),
        None => serde_json::from_slice::<Value>(&reply.payload).is_ok(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_request_gets_heartbeats_when_its_caller_asks_then_the_reply() {
    let mut running = crate::start_with_latency(350, &[]).await;
    let client = &running.client;
    let inbox = client.new_inbox();
    let mut messages = client.subscribe(inbox.clone()).await.unwrap();
    let mut headers = HeaderMap::new();
    headers.insert("Heartbeat-Ms", "100");
    client
        .publish_with_reply_and_headers(
            "predict.price",
            inbox,
            headers,
            br#"{"product_id":"ETH/EUR"}"#.as_slice().into(),
        )
        .await
        .unwrap();
    let mut heartbeats = 0;
    let reply = loop {
        let message = tokio::time::timeout(
            Duration::from_secs(5),
            futures::StreamExt::next(&mut messages),
        )
        .await
        .expect("a message within 5 s")
        .unwrap();
        match header(&message, "Reply-Kind") {
            Some("heartbeat") => {
                assert!(message.payload.is_empty());
                heartbeats += 1;
            }
            None => break message,
            Some(other) => panic!("an unknown reply kind {other}"),
        }
    };
    assert!(
        heartbeats >= 2,
        "{heartbeats} heartbeats in 350 ms at 100 ms"
    );
    let prediction: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(prediction["product_id"], "ETH/EUR");
    running.stop().await.unwrap();
}
