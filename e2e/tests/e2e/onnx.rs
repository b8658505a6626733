//! ONNX models behind the gateway: answers matching onnxruntime, 422 for a wrong
//! input shape, versions listed, and a new version taking over the cache.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use test_support::example_models::{manifest, models_dir, references};
use worker::load_manifest;

use crate::helpers::{
    RedisMode, TestApp, assert_error, header, spawn_app, spawn_app_in, start_worker,
};
use crate::in_every_redis_mode;

async fn served_models(app: &TestApp) -> Value {
    app.get("/v1/models").await.json::<Value>().await.unwrap()["models"].clone()
}

/// The entry of `model` in `/v1/models`, once `accept` holds for it.
async fn wait_for_model(app: &TestApp, model: &str, accept: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..100 {
        let models = served_models(app).await;
        if let Some(entry) = models
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == model)
            && accept(entry)
        {
            return entry.clone();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "{model} never got as expected: {}",
        served_models(app).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_models_answer_through_the_gateway_as_onnxruntime_does() {
    let mut app = spawn_app(&[]).await;
    let models = load_manifest(Path::new(&manifest())).unwrap();
    app.workers
        .push(start_worker(&app.nats.url(), models).await);

    for name in ["price-mlp", "price-gbt", "price-linear"] {
        let entry = wait_for_model(&app, name, |_| true).await;
        assert_eq!(entry["versions"], json!(["1.0.0"]));
    }
    for reference in references().iter().step_by(2) {
        let path = format!("/v1/models/{}/predict", reference.model);
        let body = serde_json::to_string(&reference.input).unwrap();
        let first = app.post(&path, &body).await;
        assert_eq!(first.status(), 200, "{}", reference.model);
        assert_eq!(header(&first, "x-cache"), "MISS");
        assert_eq!(header(&first, "x-model-version"), "1.0.0");
        reference.assert_matches(&first.json().await.unwrap());
        let again = app.post(&path, &body).await;
        assert_eq!(header(&again, "x-cache"), "HIT");
        reference.assert_matches(&again.json().await.unwrap());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_input_of_the_wrong_shape_is_a_422_naming_the_expected_shape() {
    let mut app = spawn_app(&[]).await;
    let models = load_manifest(Path::new(&manifest())).unwrap();
    app.workers
        .push(start_worker(&app.nats.url(), models).await);

    for (body, problem) in [
        (r#"{"features": [1, 2, 3]}"#, "`features` has 3 element(s)"),
        (
            r#"{"features": "1,2,3"}"#,
            "`features` is a string, not an array",
        ),
        (
            r#"{"features": [1,2,3,4,5,6,7,8,9,"ten"]}"#,
            "`features[9]` is a string, not a number",
        ),
        (
            r#"{"product_id": "ETH/EUR"}"#,
            "unexpected field `product_id`",
        ),
        (r#"{}"#, "missing field `features`"),
    ] {
        let response = app.post("/v1/models/price-gbt/predict", body).await;
        let message = assert_error(response, 422, "input_rejected").await;
        assert!(message.contains(problem), "{problem:?} not in {message:?}");
        assert!(
            message.contains(r#"expected {"features": [10 numbers]}"#),
            "{message}"
        );
    }
}

/// A manifest serving the example GBT under `version`, written next to the test's
/// build output.
fn gbt_manifest(version: &str) -> std::path::PathBuf {
    let directory = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("gbt-{version}"));
    std::fs::create_dir_all(&directory).unwrap();
    let path = directory.join("models.toml");
    let toml = format!(
        "[[model]]\nname = \"price-gbt\"\nversion = \"{version}\"\npath = \"{}\"\n\
         input = {{ field = \"features\" }}\noutput = {{ predicted_price = {{ index = 0 }} }}\n",
        models_dir().join("price-gbt.onnx").display()
    );
    std::fs::write(&path, toml).unwrap();
    path
}

async fn a_new_model_version_stops_the_old_cached_predictions_being_served(mode: RedisMode) {
    let mut app = spawn_app_in(
        mode,
        &["--discovery-interval", "100ms", "--cache-ttl", "1h"],
    )
    .await;
    let old = start_worker(
        &app.nats.url(),
        load_manifest(&gbt_manifest("1.9.0")).unwrap(),
    )
    .await;
    wait_for_model(&app, "price-gbt", |m| m["current_version"] == "1.9.0").await;
    let body = r#"{"features": [2000, 2001, 2002, 2003, 2004, 2005, 2006, 2007, 2008, 2009]}"#;
    let path = "/v1/models/price-gbt/predict";
    let first = app.post(path, body).await;
    assert_eq!(header(&first, "x-cache"), "MISS");
    let cached = app.post(path, body).await;
    assert_eq!(header(&cached, "x-cache"), "HIT");
    assert_eq!(header(&cached, "x-model-version"), "1.9.0");

    // Version 1.10.0 starts serving beside 1.9.0 (a rollout): it is current at
    // once, so the 1.9.0 entry is no longer served.
    let new = start_worker(
        &app.nats.url(),
        load_manifest(&gbt_manifest("1.10.0")).unwrap(),
    )
    .await;
    app.workers.push(new);
    let entry = wait_for_model(&app, "price-gbt", |m| m["current_version"] == "1.10.0").await;
    assert_eq!(entry["versions"], json!(["1.10.0", "1.9.0"]));
    let during = app.post(path, body).await;
    assert_eq!(
        header(&during, "x-cache"),
        "MISS",
        "the old version's entry was served"
    );

    // The rollout ends; every answer from now on is the new version's, cached.
    old.stop().await.unwrap();
    wait_for_model(&app, "price-gbt", |m| m["versions"] == json!(["1.10.0"])).await;
    let mut computed_by = Vec::new();
    for _ in 0..3 {
        let response = app.post(path, body).await;
        assert_eq!(response.status(), 200);
        computed_by.push((
            header(&response, "x-cache"),
            header(&response, "x-model-version"),
        ));
    }
    // The first may still find the entry a 1.9.0 worker wrote during the rollout
    // (a MISS either way); once a 1.10.0 answer is stored, it is served.
    assert_eq!(
        computed_by.last().unwrap(),
        &("HIT".to_owned(), "1.10.0".to_owned())
    );
    assert!(
        computed_by
            .iter()
            .all(|(cache, version)| cache == "MISS" || version == "1.10.0"),
        "{computed_by:?}"
    );
}

in_every_redis_mode!(a_new_model_version_stops_the_old_cached_predictions_being_served);
