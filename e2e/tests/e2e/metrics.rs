//! `/metrics` counts requests by model and outcome.

use crate::helpers::spawn_app;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_by_model_and_cache_outcome() {
    let app = spawn_app(&["--max-body", "64"]).await;
    app.post("/v1/models/echo/predict", "{}").await;
    app.post("/v1/models/echo/predict", "{}").await;
    app.post("/v1/models/echo/predict", "{}").await;
    app.post("/v1/models/nobody/predict", "{}").await;
    // The original route, answered ahead of the router: counted alike, its
    // body's failure too, under the default model.
    app.post("/predict", r#"{"product_id":"ETH/EUR"}"#).await;
    app.post("/predict", r#"{"product_id":"ETH/EUR"}"#).await;
    assert_eq!(app.post("/predict", &"x".repeat(100)).await.status(), 413);

    let response = app.get("/metrics").await;
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = response.text().await.unwrap();
    for line in [
        r#"gateway_prediction_requests_total{model="echo",outcome="miss"} 1"#,
        r#"gateway_prediction_requests_total{model="echo",outcome="hit"} 2"#,
        // A model no worker serves has no series of its own: clients could
        // name any number of them.
        r#"gateway_prediction_requests_total{model="_other",outcome="error"} 1"#,
        r#"gateway_prediction_requests_total{model="price",outcome="miss"} 1"#,
        r#"gateway_prediction_requests_total{model="price",outcome="hit"} 1"#,
        r#"gateway_prediction_requests_total{model="price",outcome="error"} 1"#,
        r#"gateway_model_calls_total{model="echo",result="ok"} 1"#,
        r#"gateway_model_calls_total{model="_other",result="no_worker"} 1"#,
        "gateway_coalesced_keys_in_flight 0",
        "gateway_redis_errors_total 0",
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
    assert!(!text.contains("nobody"), "{text}");
    assert!(text.contains("gateway_request_duration_seconds_bucket"));
    assert!(text.contains("gateway_model_call_duration_seconds_bucket"));
}
