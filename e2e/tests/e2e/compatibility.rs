//! Clients of the original Python API keep working.

use serde_json::Value;

use crate::helpers::{header, spawn_app};

/// The original client's request: a JSON POST with `accept: application/json`.
async fn original_client_post(app: &crate::helpers::TestApp, body: &str) -> reqwest::Response {
    app.post_with(
        "/predict",
        body,
        &[
            ("content-type", "application/json"),
            ("accept", "application/json"),
        ],
    )
    .await
}

/// Whether `text` is a UTC `"YYYY-MM-DD HH:MM:SS"` timestamp.
fn is_original_timestamp(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.len() == 19
        && bytes.iter().enumerate().all(|(i, byte)| match i {
            4 | 7 => *byte == b'-',
            10 => *byte == b' ',
            13 | 16 => *byte == b':',
            _ => byte.is_ascii_digit(),
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_original_predict_route_answers_with_the_original_fields_and_types() {
    let app = spawn_app(&[]).await;

    let response = original_client_post(&app, r#"{"product_id": "ETH/EUR"}"#).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-cache"), "MISS");
    let body: Value = response.json().await.unwrap();
    let fields: std::collections::BTreeSet<&str> = body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        fields,
        [
            "predicted_price",
            "product_id",
            "timestamp",
            "timestamp_sec"
        ]
        .into(),
        "{body}"
    );
    assert_eq!(body["product_id"], "ETH/EUR");
    assert!(body["predicted_price"].is_f64(), "a float: {body}");
    assert!(body["predicted_price"].as_f64().unwrap() > 0.0);
    let timestamp = body["timestamp"].as_str().expect("a string");
    assert!(is_original_timestamp(timestamp), "{timestamp:?}");
    let seconds = body["timestamp_sec"].as_u64().expect("an integer");
    let written = std::process::Command::new("date")
        .args(["-u", "-d", &format!("@{seconds}"), "+%F %T"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&written.stdout).trim(),
        timestamp,
        "the same moment as timestamp_sec, in UTC"
    );

    let again = original_client_post(&app, r#"{"product_id":"ETH/EUR"}"#).await;
    assert_eq!(header(&again, "x-cache"), "HIT");
    assert_eq!(again.json::<Value>().await.unwrap(), body);
    let same_via_v1 = app
        .post("/v1/models/price/predict", r#"{"product_id":"ETH/EUR"}"#)
        .await;
    assert_eq!(header(&same_via_v1, "x-cache"), "HIT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_without_a_valid_product_id_is_422() {
    let app = spawn_app(&[]).await;
    for body in [
        "{}",
        r#"{"product_id": 42}"#,
        r#"{"product_id": null}"#,
        r#"{"product": "ETH/EUR"}"#,
    ] {
        let response = original_client_post(&app, body).await;
        assert_eq!(response.status(), 422, "{body}");
        let error: Value = response.json().await.unwrap();
        assert!(
            error["error"]["message"]
                .as_str()
                .is_some_and(|message| message.contains("product_id")),
            "{body}: {error}"
        );
    }
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
async fn health_routes_answer_ok_and_the_original_one_as_it_did() {
    let app = spawn_app(&[]).await;
    for (path, status) in [("/health", "OK"), ("/healthz", "ok")] {
        let response = app.get(path).await;
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body, serde_json::json!({"status": status}), "{path}");
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
