//! Clients of the original Python API keep working.

use serde_json::Value;

use crate::helpers::{header, spawn_app};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_original_predict_route_answers_with_the_original_shape() {
    let app = spawn_app(&[]).await;

    let response = app.post("/predict", r#"{"product_id": "ETH/EUR"}"#).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-cache"), "MISS");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["product_id"], "ETH/EUR");
    assert!(body["predicted_price"].as_f64().unwrap() > 0.0);
    assert!(body["timestamp"].is_u64());
    assert!(body["timestamp_sec"].is_u64());

    let again = app.post("/predict", r#"{"product_id":"ETH/EUR"}"#).await;
    assert_eq!(header(&again, "x-cache"), "HIT");
    let same_via_v1 = app
        .post("/v1/models/price/predict", r#"{"product_id":"ETH/EUR"}"#)
        .await;
    assert_eq!(header(&same_via_v1, "x-cache"), "HIT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_model_is_configurable() {
    let app = spawn_app(&["--default-model", "echo"]).await;

    let response = app.post("/predict", r#"{"product_id":"ETH/EUR"}"#).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["model"], "echo");
    assert_eq!(app.echo.calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_routes_answer_ok() {
    let app = spawn_app(&[]).await;
    for path in ["/health", "/healthz"] {
        let response = app.get(path).await;
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["status"], "ok");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_describes_every_route_that_exists() {
    let app = spawn_app(&[]).await;
    let response = app.get("/openapi.json").await;
    assert_eq!(response.status(), 200);
    let document: Value = response.json().await.unwrap();
    assert!(document["openapi"].as_str().unwrap().starts_with("3."));
    let paths = document["paths"].as_object().unwrap();
    let mut documented: Vec<(String, String)> = Vec::new();
    for (path, operations) in paths {
        for method in operations.as_object().unwrap().keys() {
            documented.push((method.to_uppercase(), path.clone()));
        }
    }
    documented.sort();
    assert_eq!(
        documented,
        [
            ("DELETE", "/v1/models/{model}/cache"),
            ("GET", "/healthz"),
            ("GET", "/metrics"),
            ("GET", "/openapi.json"),
            ("GET", "/readyz"),
            ("GET", "/v1/models"),
            ("GET", "/v1/models/{model}/predict"),
            ("POST", "/predict"),
            ("POST", "/v1/models/{model}/cache/purge"),
            ("POST", "/v1/models/{model}/predict"),
        ]
        .map(|(method, path)| (method.to_owned(), path.to_owned()))
    );
    // Every documented operation exists: none answers 404 or 405.
    for (method, path) in &documented {
        let url = app.url(&path.replace("{model}", "echo"));
        let request = app
            .http
            .request(method.parse().unwrap(), url)
            .header("content-type", "application/json")
            .body("{}");
        let status = request.send().await.unwrap().status().as_u16();
        assert!(
            status != 404 && status != 405,
            "{method} {path} answered {status}"
        );
    }
    assert!(document["components"]["schemas"]["ErrorBody"].is_object());
}
