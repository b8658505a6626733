use std::time::Duration;

use serde_json::Value;

use crate::helpers::{RedisMode, header, spawn_app, spawn_app_in};
use crate::in_every_redis_mode;

async fn second_identical_request_is_served_from_cache(mode: RedisMode) {
    let app = spawn_app_in(mode, &[]).await;

    let first = app.post("/v1/models/echo/predict", r#"{"x":1}"#).await;
    assert_eq!(first.status(), 200);
    assert_eq!(header(&first, "x-cache"), "MISS");
    assert_eq!(header(&first, "cache-status"), "gateway; fwd=miss; stored");
    assert_eq!(header(&first, "x-model-version"), "3.1.4");
    assert_eq!(header(&first, "age"), "0");
    assert_eq!(header(&first, "cache-control"), "max-age=60");
    assert!(!header(&first, "x-request-id").is_empty());
    let first_body = first.text().await.unwrap();

    let second = app.post("/v1/models/echo/predict", r#"{"x":1}"#).await;
    assert_eq!(second.status(), 200);
    assert_eq!(header(&second, "x-cache"), "HIT");
    assert!(header(&second, "cache-status").starts_with("gateway; hit; ttl="));
    assert_eq!(header(&second, "x-model-version"), "3.1.4");
    assert_eq!(header(&second, "content-type"), "application/json");
    assert_eq!(second.text().await.unwrap(), first_body);

    assert_eq!(app.echo.calls(), 1, "the model ran once for two requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_input_written_differently_shares_one_entry() {
    let app = spawn_app(&[]).await;

    let first = app
        .post(
            "/v1/models/echo/predict",
            r#"{"a":1,"b":{"c":2.50,"d":[1,2]}}"#,
        )
        .await;
    assert_eq!(header(&first, "x-cache"), "MISS");
    let reordered = app
        .post(
            "/v1/models/echo/predict",
            "{ \"b\" : {\"d\":[1, 2], \"c\": 25e-1},\n  \"a\": 1.0 }",
        )
        .await;
    assert_eq!(header(&reordered, "x-cache"), "HIT");
    let different = app
        .post(
            "/v1/models/echo/predict",
            r#"{"a":1,"b":{"c":2.51,"d":[1,2]}}"#,
        )
        .await;
    assert_eq!(header(&different, "x-cache"), "MISS");
    assert_eq!(app.echo.calls(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_with_a_query_shares_the_entry_of_the_equal_json_body() {
    let app = spawn_app(&[]).await;

    let get = app
        .get("/v1/models/echo/predict?product_id=ETH%2FEUR&horizon=5m")
        .await;
    assert_eq!(get.status(), 200);
    assert_eq!(header(&get, "x-cache"), "MISS");
    let body: Value = get.json().await.unwrap();
    assert_eq!(body["input"]["product_id"], "ETH/EUR");

    let post = app
        .post(
            "/v1/models/echo/predict",
            r#"{"horizon":"5m","product_id":"ETH/EUR"}"#,
        )
        .await;
    assert_eq!(header(&post, "x-cache"), "HIT");
    assert_eq!(app.echo.calls(), 1);
}

async fn an_expired_prediction_is_computed_again(mode: RedisMode) {
    let app = spawn_app_in(mode, &["--cache-ttl", "1s"]).await;

    let first = app.post("/v1/models/echo/predict", r#"{"t":1}"#).await;
    assert_eq!(header(&first, "x-cache"), "MISS");
    assert_eq!(header(&first, "cache-control"), "max-age=1");
    let hit = app.post("/v1/models/echo/predict", r#"{"t":1}"#).await;
    assert_eq!(header(&hit, "x-cache"), "HIT");

    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let after = app.post("/v1/models/echo/predict", r#"{"t":1}"#).await;
    assert_eq!(header(&after, "x-cache"), "MISS");
    assert_eq!(app.echo.calls(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_the_in_process_tier_keeps_what_was_computed() {
    let mut app = spawn_app(&[]).await;
    app.redis.stop();

    let first = app.post("/v1/models/echo/predict", r#"{"kept":1}"#).await;
    assert_eq!(first.status(), 200);
    assert_eq!(header(&first, "x-cache"), "BYPASS");
    let again = app.post("/v1/models/echo/predict", r#"{"kept":1}"#).await;
    assert_eq!(again.status(), 200);
    assert_eq!(
        header(&again, "x-cache"),
        "HIT",
        "the computed prediction was kept in the gateway's memory"
    );
    assert_eq!(app.echo.calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_predictions_bypass_the_cache_and_caching_resumes_after() {
    // Without the in-process tier, which would otherwise answer the repeat.
    let mut app = spawn_app(&["--local-capacity", "0"]).await;
    app.redis.stop();

    for _ in 0..2 {
        let response = app.post("/v1/models/echo/predict", r#"{"r":1}"#).await;
        assert_eq!(response.status(), 200);
        assert_eq!(header(&response, "x-cache"), "BYPASS");
    }
    assert_eq!(app.echo.calls(), 2);

    app.redis.restart();
    // The connection manager reconnects on the next command; allow it a few tries.
    let mut outcomes = Vec::new();
    for _ in 0..20 {
        let response = app.post("/v1/models/echo/predict", r#"{"r":1}"#).await;
        assert_eq!(response.status(), 200);
        outcomes.push(header(&response, "x-cache"));
        if outcomes.ends_with(&["MISS".to_owned(), "HIT".to_owned()]) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        outcomes.ends_with(&["MISS".to_owned(), "HIT".to_owned()]),
        "caching did not resume: {outcomes:?}"
    );
}

in_every_redis_mode!(second_identical_request_is_served_from_cache);

in_every_redis_mode!(an_expired_prediction_is_computed_again);
