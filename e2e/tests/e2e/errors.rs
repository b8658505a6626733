//! Every failure answers with its status and a JSON body naming what is wrong.

use std::time::Duration;

use futures::StreamExt;

use crate::helpers::{StubModel, assert_error, spawn_app, start_worker};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_and_non_objects_are_bad_requests() {
    let app = spawn_app(&[]).await;

    let message = assert_error(
        app.post("/v1/models/echo/predict", r#"{"x": 1"#).await,
        400,
        "invalid_json",
    )
    .await;
    assert!(message.contains("not valid JSON"), "{message}");
    let message = assert_error(
        app.post("/v1/models/echo/predict", "[1, 2]").await,
        400,
        "invalid_input",
    )
    .await;
    assert!(
        message.contains("must be a JSON object, found an array"),
        "{message}"
    );
    assert_error(app.post("/predict", "").await, 400, "invalid_json").await;
    assert_error(
        app.post("/v1/models/echo/predict", r#"{"n": 1e99999}"#)
            .await,
        400,
        "invalid_input",
    )
    .await;
    assert_error(
        app.get("/v1/models/echo/predict?a=1&a=2").await,
        400,
        "invalid_query",
    )
    .await;
    assert_eq!(app.echo.calls(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_model_names_are_refused_and_nothing_is_published() {
    let app = spawn_app(&[]).await;
    let spy = async_nats::connect(app.nats.url()).await.unwrap();
    let mut published = spy.subscribe(">").await.unwrap();
    spy.flush().await.unwrap();

    let too_long = "a".repeat(65);
    for name in [
        "a.b", "%2A", "%3E", "Price", "%24SYS", "a%20b", "a%2Eb", "echo.%3E", "%2Fx", &too_long,
    ] {
        let response = app.post(&format!("/v1/models/{name}/predict"), "{}").await;
        assert_error(response, 400, "invalid_model_name").await;
    }

    let seen = tokio::time::timeout(Duration::from_millis(300), published.next()).await;
    assert!(
        seen.is_err(),
        "something was published: {:?}",
        seen.unwrap().map(|m| m.subject)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_limit_is_refused_with_413() {
    let app = spawn_app(&["--max-body", "1024"]).await;
    let body = format!(r#"{{"blob":"{}"}}"#, "x".repeat(2_000));
    let message = assert_error(
        app.post("/v1/models/echo/predict", &body).await,
        413,
        "body_too_large",
    )
    .await;
    assert!(message.contains("1024"), "{message}");
    assert_eq!(app.echo.calls(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_the_worker_rejects_is_unprocessable_with_the_workers_message() {
    let app = spawn_app(&[]).await;

    let message = assert_error(
        app.post("/v1/models/echo/predict", r#"{"reject": true}"#)
            .await,
        422,
        "input_rejected",
    )
    .await;
    assert_eq!(message, "field `reject` is not allowed");
    let message = assert_error(
        app.post("/predict", r#"{"product": "ETH/EUR"}"#).await,
        422,
        "input_rejected",
    )
    .await;
    assert!(message.contains("missing field `product_id`"), "{message}");

    // The worker goes on serving after rejecting input.
    let ok = app.post("/predict", r#"{"product_id": "ETH/EUR"}"#).await;
    assert_eq!(ok.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_nobody_serves_is_503_at_once_not_after_the_timeout() {
    // The HTTP client gives up after 20 s; had the gateway waited out its 60 s
    // timeout the request would fail instead of answering 503.
    let app = spawn_app(&["--request-timeout", "60s"]).await;
    let response = app.post("/v1/models/nobody/predict", "{}").await;
    assert_eq!(response.headers()["retry-after"], "1");
    let message = assert_error(response, 503, "no_worker").await;
    assert!(message.contains("nobody"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_is_not_a_worker_does_not_make_a_model_served() {
    let app = spawn_app(&["--request-timeout", "60s"]).await;
    // Someone left `nats sub predict.lurker` running: it swallows requests silently.
    let lurker = async_nats::connect(app.nats.url()).await.unwrap();
    let _subscription = lurker.subscribe("predict.lurker").await.unwrap();
    lurker.flush().await.unwrap();

    let response = app.post("/v1/models/lurker/predict", "{}").await;
    assert_error(response, 503, "no_worker").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_slower_than_the_timeout_gives_504_saying_how_long_it_waited() {
    let mut app = spawn_app(&["--request-timeout", "3s"]).await;
    let slow = StubModel::slow("slow", Duration::from_secs(6));
    app.workers
        .push(start_worker(&app.nats.url(), vec![slow.clone()]).await);

    let message = assert_error(
        app.post("/v1/models/slow/predict", "{}").await,
        504,
        "timeout",
    )
    .await;
    let waited: f64 = message
        .split("within ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|seconds| seconds.parse().ok())
        .unwrap_or_else(|| panic!("no wait in {message:?}"));
    assert!((3.0..6.0).contains(&waited), "{message}");
    // Slow, not gone: its heartbeats kept the request from being sent again,
    // past the attempt timeout (half the deadline) and past the silence bound.
    assert_eq!(slow.calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_failure_is_500_without_internal_details() {
    let mut app = spawn_app(&[]).await;
    let broken = StubModel::failing("broken");
    app.workers
        .push(start_worker(&app.nats.url(), vec![broken.clone()]).await);

    let response = app.post("/v1/models/broken/predict", "{}").await;
    let request_id = crate::helpers::header(&response, "x-request-id");
    let message = assert_error(response, 500, "model_failed").await;
    assert!(
        !message.contains("CUDA"),
        "internal detail leaked: {message}"
    );
    // Where to look instead: the model, and the id the worker logged it under.
    assert!(message.contains("\"broken\""), "{message}");
    assert!(message.contains(&request_id), "{message}");
    // Failures are not cached: the next request tries the model again.
    assert_error(
        app.post("/v1/models/broken/predict", "{}").await,
        500,
        "model_failed",
    )
    .await;
    assert_eq!(broken.calls(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_and_methods_answer_json() {
    let app = spawn_app(&[]).await;
    assert_error(app.get("/nope").await, 404, "not_found").await;
    assert_error(app.get("/predict").await, 405, "method_not_allowed").await;
}
