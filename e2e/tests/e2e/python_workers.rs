//! Workers written in Python with `workers/python` (`prediction_worker`)
//! behind the real gateway: the same contract as the Rust worker, so the
//! gateway's cache, errors, discovery and shutdown behave the same.

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use futures::future::join_all;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::helpers::{StubModel, assert_error, header, spawn_app, start_worker};

/// The Python that has `nats-py`: `PREDICTION_WORKER_PYTHON` (`make test` sets
/// it to its virtual environment), else `python3`.
fn python() -> String {
    std::env::var("PREDICTION_WORKER_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn repository() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A `python -m prediction_worker gateway_models:worker` process.
struct PythonWorker {
    child: Child,
    /// Its NATS service id, to ask it alone for its stats.
    service_id: String,
    nats_url: String,
}

impl PythonWorker {
    /// Starts one and waits until it serves (it logs its service id then).
    async fn start(nats_url: &str, env: &[(&str, &str)]) -> Self {
        let root = repository();
        let path = [
            root.join("workers/python/src"),
            root.join("e2e/tests/python"),
        ]
        .map(|dir| dir.display().to_string())
        .join(":");
        let mut child = Command::new(python())
            .args(["-m", "prediction_worker", "gateway_models:worker"])
            .env("PYTHONPATH", path)
            .env("NATS_URL", nats_url)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python runs (set PREDICTION_WORKER_PYTHON to a Python with nats-py)");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let service_id = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                eprintln!("python worker: {line}");
                if let Some(id) = line.split_once("service_id=") {
                    return id.1.split_whitespace().next().unwrap().to_owned();
                }
            }
            panic!("the Python worker exited before serving");
        })
        .await
        .expect("the Python worker serves within 30 s");
        // The rest of its log goes to the test's output.
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("python worker: {line}");
            }
        });
        Self {
            child,
            service_id,
            nats_url: nats_url.to_owned(),
        }
    }

    /// Its `$SRV.STATS` entry for the endpoint of `model`.
    async fn stats(&self, model: &str) -> Value {
        let client = async_nats::connect(&self.nats_url).await.unwrap();
        let reply = client
            .request(
                format!("$SRV.STATS.prediction-worker.{}", self.service_id),
                "".into(),
            )
            .await
            .unwrap();
        let stats: Value = serde_json::from_slice(&reply.payload).unwrap();
        stats["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .find(|endpoint| endpoint["name"] == model)
            .cloned()
            .unwrap_or_else(|| panic!("no endpoint {model}: {stats}"))
    }

    /// Sends SIGTERM, as an orchestrator stopping it would.
    async fn terminate(&self) {
        let pid = self.child.id().expect("running").to_string();
        let status = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .unwrap();
        assert!(status.success());
    }

    async fn wait(mut self) -> Option<i32> {
        tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .expect("the Python worker exits after SIGTERM")
            .unwrap()
            .code()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_model_is_computed_once_then_served_from_the_cache() {
    let app = spawn_app(&[]).await;
    let _python = PythonWorker::start(&app.nats.url(), &[]).await;
    let first = app
        .post("/v1/models/sentiment/predict", r#"{"text":"a good day"}"#)
        .await;
    assert_eq!(first.status(), 200);
    assert_eq!(header(&first, "x-cache"), "MISS");
    assert_eq!(header(&first, "x-model-version"), "1.0.0");
    let first: Value = first.json().await.unwrap();
    let second = app
        .post("/v1/models/sentiment/predict", r#"{"text":"a good day"}"#)
        .await;
    assert_eq!(header(&second, "x-cache"), "HIT");
    let second: Value = second.json().await.unwrap();
    assert_eq!(first, second, "the cached prediction is the computed one");
    assert_eq!(first["positive"], true, "{first}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_models_are_listed_with_their_versions() {
    let app = spawn_app(&[]).await;
    let _python = PythonWorker::start(&app.nats.url(), &[]).await;
    let listed: Value = app.get("/v1/models").await.json().await.unwrap();
    let versions = |name: &str| {
        listed["models"]
            .as_array()
            .unwrap()
            .iter()
            .find(|model| model["name"] == name)
            .map(|model| model["current_version"].clone())
            .unwrap_or_else(|| panic!("{name} not listed: {listed}"))
    };
    assert_eq!(versions("sentiment"), "1.0.0");
    assert_eq!(versions("embed"), "2");
    assert_eq!(versions("fragile"), "0.1");
    assert_eq!(
        versions("echo"),
        "3.1.4",
        "the Rust worker's model beside them"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_input_is_422_with_the_message_and_an_exception_is_500_without_it() {
    let app = spawn_app(&[]).await;
    let _python = PythonWorker::start(&app.nats.url(), &[]).await;
    let invalid = app
        .post("/v1/models/sentiment/predict", r#"{"txt":"typo"}"#)
        .await;
    let message = assert_error(invalid, 422, "input_rejected").await;
    assert!(message.contains("missing string field `text`"), "{message}");
    let failed = app.post("/v1/models/fragile/predict", r#"{"x":1}"#).await;
    let text = failed.text().await.unwrap();
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["error"]["code"], "model_failed", "{body}");
    for secret in ["hunter2", "postgres", "RuntimeError", "Traceback"] {
        assert!(!text.contains(secret), "{secret} leaked: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_concurrent_distinct_requests_are_computed_in_far_fewer_calls() {
    let app = spawn_app(&[]).await;
    let python = PythonWorker::start(&app.nats.url(), &[]).await;
    let requests = (0..64).map(|i| {
        let app = &app;
        async move {
            let body = format!(r#"{{"text":"{}"}}"#, "x".repeat(i));
            let response = app.post("/v1/models/embed/predict", &body).await;
            assert_eq!(response.status(), 200);
            let body: Value = response.json().await.unwrap();
            (i, body)
        }
    });
    for (i, prediction) in join_all(requests).await {
        assert_eq!(prediction["length"], i, "each caller gets its own answer");
        assert_eq!(prediction["text"], "x".repeat(i));
    }
    let stats = python.stats("embed").await;
    let calls = stats["data"]["inference_calls"].as_u64().unwrap();
    assert_eq!(stats["data"]["predictions"], 64, "{stats}");
    assert!(calls <= 16, "64 requests took {calls} calls: {stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_loses_nothing() {
    let app = spawn_app(&["--request-timeout", "20s"]).await;
    let nats = app.nats.url();
    let leaving = PythonWorker::start(&nats, &[("SLOW_SECONDS", "0.3")]).await;
    let staying = PythonWorker::start(&nats, &[("SLOW_SECONDS", "0.3")]).await;
    let load = (0..40).map(|i| {
        let app = &app;
        async move {
            tokio::time::sleep(Duration::from_millis(i * 25)).await;
            let response = app
                .post("/v1/models/slow-echo/predict", &format!(r#"{{"i":{i}}}"#))
                .await;
            let status = response.status();
            let body: Value = response.json().await.unwrap();
            (i, status, body)
        }
    });
    let terminate = async {
        tokio::time::sleep(Duration::from_millis(400)).await;
        leaving.terminate().await;
    };
    let (results, ()) = tokio::join!(join_all(load), terminate);
    for (i, status, body) in results {
        assert_eq!(status, 200, "request {i}: {body}");
        assert_eq!(body["input"]["i"], i, "its own answer");
    }
    assert_eq!(leaving.wait().await, Some(0), "a clean exit");
    drop(staying);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_and_a_rust_worker_of_one_model_share_its_queue_group() {
    let app = spawn_app(&[]).await;
    let rust = StubModel::new("slow-echo");
    let _rust_worker = start_worker(&app.nats.url(), vec![rust.clone()]).await;
    let python = PythonWorker::start(&app.nats.url(), &[("SLOW_SECONDS", "0")]).await;
    let mut served_by = HashSet::new();
    for i in 0..60 {
        let response = app
            .post("/v1/models/slow-echo/predict", &format!(r#"{{"i":{i}}}"#))
            .await;
        assert_eq!(response.status(), 200);
        assert_eq!(header(&response, "x-model-version"), "3.1.4");
        let body: Value = response.json().await.unwrap();
        served_by.insert(body["worker"].as_str().unwrap_or("rust").to_owned());
    }
    let python_requests = python.stats("slow-echo").await["num_requests"]
        .as_u64()
        .unwrap();
    assert!(rust.calls() > 0, "the Rust worker served some");
    assert!(python_requests > 0, "the Python worker served some");
    assert_eq!(
        served_by,
        HashSet::from(["rust".to_owned(), "python".to_owned()])
    );
}
