//! Requests reach workers through the queue group, with the request's metadata.

use std::time::Duration;

use async_nats::service::ServiceExt;
use futures::StreamExt;
use serde_json::Value;

use crate::helpers::{StubModel, header, spawn_app, start_worker};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_spread_over_two_workers() {
    let mut app = spawn_app(&[]).await;
    let first = StubModel::new("spread");
    let second = StubModel::new("spread");
    app.workers
        .push(start_worker(&app.nats.url(), vec![first.clone()]).await);
    app.workers
        .push(start_worker(&app.nats.url(), vec![second.clone()]).await);

    for i in 0..40 {
        let response = app
            .post("/v1/models/spread/predict", &format!(r#"{{"i":{i}}}"#))
            .await;
        assert_eq!(response.status(), 200);
    }
    assert_eq!(first.calls() + second.calls(), 40);
    assert!(
        first.calls() > 0 && second.calls() > 0,
        "{} / {}",
        first.calls(),
        second.calls()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_receives_the_canonical_input_request_id_and_deadline() {
    let app = spawn_app(&["--request-timeout", "5s"]).await;
    // A hand-written NATS service stands in for a worker, to see exactly what it
    // gets; it replies without any metadata header.
    let spy = async_nats::connect(app.nats.url()).await.unwrap();
    let service = spy
        .service_builder()
        .start("prediction-worker", "0.0.1")
        .await
        .unwrap();
    let mut requests = service.group("predict").endpoint("spy").await.unwrap();
    spy.flush().await.unwrap();
    let responder = tokio::spawn(async move {
        let request = requests.next().await.unwrap();
        request.respond(Ok(r#"{"ok":true}"#.into())).await.unwrap();
        request.message
    });

    let response = app
        .http
        .post(app.url("/v1/models/spy/predict"))
        .header("x-request-id", "req-123")
        .body(r#"{ "b": 2, "a": 1 }"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{:?}", response.text().await);
    assert_eq!(header(&response, "x-request-id"), "req-123");
    // A reply without metadata headers is still a prediction.
    assert_eq!(header(&response, "x-model-version"), "unknown");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body, serde_json::json!({"ok": true}));

    let request = tokio::time::timeout(Duration::from_secs(5), responder)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&request.payload[..], br#"{"a":1,"b":2}"#);
    let headers = request.headers.unwrap();
    assert_eq!(headers.get("Request-Id").unwrap().as_str(), "req-123");
    let deadline: u64 = headers
        .get("Deadline-Unix-Ms")
        .unwrap()
        .as_str()
        .parse()
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(
        deadline > now && deadline <= now + 5_000,
        "deadline {deadline}, now {now}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_worker_finishes_the_request_it_holds() {
    let app = spawn_app(&[]).await;
    let slow = StubModel::slow("held", Duration::from_millis(700));
    let worker = start_worker(&app.nats.url(), vec![slow.clone()]).await;

    let request = tokio::spawn({
        let http = app.http.clone();
        let url = app.url("/v1/models/held/predict");
        async move { http.post(url).body("{}").send().await.unwrap() }
    });
    // Stop the worker while it is computing.
    slow.wait_until_called().await;
    worker.stop().await.expect("the worker stops cleanly");

    let response = request.await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-cache"), "MISS");
    // And it took no new request after stopping.
    let after = app.post("/v1/models/held/predict", r#"{"new":1}"#).await;
    assert_eq!(after.status(), 503);
}
