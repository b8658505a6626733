//! Discovery of served models, and backpressure instead of unbounded queues.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{StubModel, assert_error, header, spawn_app, start_worker, start_worker_with};

async fn served_models(app: &crate::helpers::TestApp) -> Value {
    let response = app.get("/v1/models").await;
    assert_eq!(response.status(), 200);
    response.json::<Value>().await.unwrap()["models"].clone()
}

/// `count` concurrent predictions of `model`, each with an input of its own.
async fn post_distinct(
    app: &crate::helpers::TestApp,
    model: &str,
    count: usize,
) -> Vec<reqwest::Response> {
    let path = format!("/v1/models/{model}/predict");
    let bodies: Vec<String> = (0..count).map(|i| format!(r#"{{"i":{i}}}"#)).collect();
    futures::future::join_all(bodies.iter().map(|body| app.post(&path, body))).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_model_list_follows_workers_starting_and_stopping() {
    let app = spawn_app(&["--discovery-interval", "100ms"]).await;
    assert_eq!(
        served_models(&app).await,
        json!([
            {"name": "echo", "versions": ["3.1.4"], "current_version": "3.1.4", "workers": 1},
            {"name": "price", "versions": ["1.1.0"], "current_version": "1.1.0", "workers": 1},
        ])
    );

    let extra = start_worker(
        &app.nats.url(),
        vec![StubModel::new("extra"), StubModel::new("echo")],
    )
    .await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(
        served_models(&app).await,
        json!([
            {"name": "echo", "versions": ["3.1.4"], "current_version": "3.1.4", "workers": 2},
            {"name": "extra", "versions": ["3.1.4"], "current_version": "3.1.4", "workers": 1},
            {"name": "price", "versions": ["1.1.0"], "current_version": "1.1.0", "workers": 1},
        ])
    );

    extra.stop().await.unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let models = served_models(&app).await;
    assert_eq!(models.as_array().unwrap().len(), 2, "{models}");
    assert_eq!(models[0]["workers"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_in_flight_cap_the_gateway_answers_503_with_retry_after() {
    let mut app = spawn_app(&["--max-inflight", "2"]).await;
    let slow = StubModel::slow("capped", Duration::from_millis(800));
    app.workers
        .push(start_worker(&app.nats.url(), vec![slow.clone()]).await);

    let responses = post_distinct(&app, "capped", 5).await;
    let mut overloaded = 0;
    for response in responses {
        if response.status() == 200 {
            continue;
        }
        assert_eq!(header(&response, "retry-after"), "1");
        assert_error(response, 503, "overloaded").await;
        overloaded += 1;
    }
    assert_eq!(overloaded, 3);
    assert_eq!(slow.calls(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_a_busy_worker_refuses_are_retried_within_the_deadline() {
    let mut app = spawn_app(&[]).await;
    let narrow = StubModel::slow("narrow", Duration::from_millis(150));
    app.workers.push(
        start_worker_with(
            &app.nats.url(),
            vec![narrow.clone()],
            &["--concurrency", "1", "--queue-depth", "0"],
        )
        .await,
    );

    let responses = post_distinct(&app, "narrow", 3).await;
    for response in responses {
        assert_eq!(response.status(), 200);
    }
    assert_eq!(narrow.calls(), 3);
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains(r#"gateway_model_call_retries_total{model="narrow",reason="busy"}"#),
        "busy retries are counted"
    );
}

/// The gateway's count of model calls handed on to another worker for a backlog.
async fn redirected(app: &crate::helpers::TestApp, model: &str) -> u64 {
    let metrics = app.get("/metrics").await.text().await.unwrap();
    let prefix =
        format!(r#"gateway_model_call_retries_total{{model="{model}",reason="redirected"}} "#);
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(prefix.as_str()))
        .map_or(0, |count| count.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_meeting_a_backlog_tries_another_worker_then_waits_in_line() {
    let mut app = spawn_app(&["--discovery-interval", "100ms"]).await;
    let shared = StubModel::slow("shared", Duration::from_millis(500));
    // Two workers, one at a time each, each handing a request on once one waits.
    for _ in 0..2 {
        app.workers.push(
            start_worker_with(
                &app.nats.url(),
                vec![shared.clone()],
                &["--concurrency", "1"],
            )
            .await,
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Two running and two waiting fill both workers up to their backlog limit, so
    // the fifth meets a backlog wherever it lands, whatever the order.
    let responses = post_distinct(&app, "shared", 5).await;
    for response in responses {
        assert_eq!(response.status(), 200, "a backlog alone refuses nothing");
    }
    assert_eq!(shared.calls(), 5);
    assert!(
        redirected(&app, "shared").await >= 1,
        "redirects are counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_single_worker_a_request_waits_in_its_line_at_once() {
    let mut app = spawn_app(&[]).await;
    let single = StubModel::slow("single", Duration::from_millis(300));
    app.workers.push(
        start_worker_with(
            &app.nats.url(),
            vec![single.clone()],
            &["--concurrency", "1"],
        )
        .await,
    );

    let responses = post_distinct(&app, "single", 3).await;
    for response in responses {
        assert_eq!(response.status(), 200);
    }
    assert_eq!(single.calls(), 3);
    assert_eq!(redirected(&app, "single").await, 0, "nowhere else to go");
}
