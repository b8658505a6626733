//! The metrics as Prometheus itself reads them: `promtool check metrics` on the
//! gateway's and a worker's `/metrics`, a real `prometheus` scraping both and
//! answering queries, and the in-flight gauges the autoscaling rule uses.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use serde_json::Value;
use test_support::{PrometheusServer, eventually};
use tokio::io::AsyncWriteExt;
use tokio::sync::oneshot;
use worker::builtin::tiny_chat::TinyChat;
use worker::{Model, Worker, WorkerConfig};

use crate::helpers::{StubModel, TestApp, spawn_app};

/// A worker serving `models` with `--metrics-listen` on a free port; returns
/// the `host:port` of its metrics and its shutdown trigger.
pub async fn start_worker_with_metrics(
    nats_url: &str,
    models: Vec<Arc<dyn Model>>,
    args: &[&str],
) -> (String, oneshot::Sender<()>) {
    let mut argv = vec![
        "worker",
        "--nats-url",
        nats_url,
        "--metrics-listen",
        "127.0.0.1:0",
    ];
    argv.extend_from_slice(args);
    let config = WorkerConfig::try_parse_from(argv).unwrap();
    let worker = Worker::build_with_models(&config, models).await.unwrap();
    let address = worker.metrics_address().expect("metrics are served");
    let (shutdown, stopped) = oneshot::channel::<()>();
    tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));
    (address.to_string(), shutdown)
}

fn promtool() -> String {
    std::env::var("PROMTOOL_BIN").unwrap_or_else(|_| "promtool".into())
}

/// What `promtool check metrics` says of `exposition`: its exit status and output.
async fn promtool_check(exposition: &str) -> (bool, String) {
    let mut check = tokio::process::Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is installed (apt-get install prometheus)");
    let mut stdin = check.stdin.take().unwrap();
    stdin.write_all(exposition.as_bytes()).await.unwrap();
    drop(stdin);
    let output = check.wait_with_output().await.unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), said)
}

/// The model only the worker with metrics serves.
const METERED: &str = "metered";

/// The gateway's and the worker's `/metrics`, as scraped now.
async fn both_metrics(app: &TestApp, worker_metrics: &str) -> (String, String) {
    let gateway = app.get("/metrics").await.text().await.unwrap();
    let worker = reqwest::get(format!("http://{worker_metrics}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    (gateway, worker)
}

/// A real Prometheus scraping the test's gateway (job `gateway`) and the
/// worker whose metrics are at `worker_metrics` (job `workers`), as the
/// dashboard's queries expect.
fn prometheus_scraping(app: &TestApp, worker_metrics: String) -> PrometheusServer {
    let gateway_metrics = app.address.trim_start_matches("http://").to_owned();
    PrometheusServer::start(&[
        ("gateway", vec![gateway_metrics]),
        ("workers", vec![worker_metrics]),
    ])
}

/// Some of every outcome: misses, hits, a rejected input, a model nobody serves.
async fn mixed_traffic(app: &TestApp) {
    let path = format!("/v1/models/{METERED}/predict");
    for i in 0..3 {
        for _ in 0..3 {
            app.post(&path, &format!(r#"{{"i":{i}}}"#)).await;
        }
    }
    app.post(&path, r#"{"reject":1}"#).await;
    app.post("/v1/models/nobody/predict", "{}").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_finds_nothing_wrong_with_the_gateways_or_a_workers_metrics() {
    let app = spawn_app(&[]).await;
    let (worker_metrics, _stop) =
        start_worker_with_metrics(&app.nats.url(), vec![StubModel::new(METERED)], &[]).await;
    mixed_traffic(&app).await;
    let (gateway, worker) = both_metrics(&app, &worker_metrics).await;
    for (who, exposition) in [("gateway", &gateway), ("worker", &worker)] {
        let (ok, said) = promtool_check(exposition).await;
        assert!(
            ok && said.trim().is_empty(),
            "{who}: promtool says:\n{said}"
        );
    }
    for family in [
        "worker_requests_total",
        "worker_request_duration_seconds",
        "worker_batch_size",
        "worker_requests_in_flight",
        "worker_requests_waiting",
    ] {
        assert!(worker.contains(family), "{family} missing:\n{worker}");
    }
    assert!(
        gateway.contains("gateway_model_calls_in_flight"),
        "{gateway}"
    );
}

/// Asks `prometheus` for `query` until it has a value (targets are scraped
/// every second); returns the first sample's value.
pub async fn query_until_answered(prometheus: &PrometheusServer, query: &str) -> f64 {
    let http = reqwest::Client::new();
    eventually(Duration::from_secs(30), query, || async {
        let request = http
            .get(format!("{}/api/v1/query", prometheus.url()))
            .query(&[("query", query)]);
        let reply = api_reply(request).await;
        if let Some(reply) = &reply {
            // An invalid query fails at once: a panel that errs is broken.
            assert_eq!(reply["status"], "success", "{query}: {reply}");
            if let Some(value) = reply["data"]["result"][0]["value"][1].as_str() {
                return Ok(value.parse::<f64>().unwrap());
            }
        }
        Err(reply)
    })
    .await
}

/// The JSON a Prometheus API call answers; `None` while Prometheus cannot answer
/// (a plain-text 503 while it starts or reloads), which the callers take as
/// "not yet".
async fn api_reply(request: reqwest::RequestBuilder) -> Option<Value> {
    let response = request.send().await.ok()?;
    if response.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE {
        return None;
    }
    response.json().await.ok()
}

/// Waits until Prometheus has scraped every target since `since`.
async fn wait_for_fresh_scrapes(prometheus: &PrometheusServer, targets: usize) {
    let http = reqwest::Client::new();
    let asked = unix_now_secs();
    eventually(
        Duration::from_secs(30),
        "every target scraped again",
        || async {
            let reply = api_reply(http.get(format!("{}/api/v1/targets", prometheus.url())))
                .await
                .unwrap_or_default();
            let no_targets = Vec::new();
            let active = reply["data"]["activeTargets"]
                .as_array()
                .unwrap_or(&no_targets);
            let fresh = active
                .iter()
                .filter(|target| {
                    target["health"] == "up"
                        && target["lastScrape"]
                            .as_str()
                            .and_then(scrape_time_secs)
                            .is_some_and(|at| at > asked + 0.5)
                })
                .count();
            if fresh == targets { Ok(()) } else { Err(reply) }
        },
    )
    .await
}

fn unix_now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Seconds since the epoch of an RFC 3339 time as Prometheus writes it
/// (`2026-12-02T13:40:01.123456789Z`), by asking `date`, which parses it.
fn scrape_time_secs(rfc3339: &str) -> Option<f64> {
    let output = std::process::Command::new("date")
        .args(["-u", "-d", rfc3339, "+%s.%N"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&output.stdout).trim().parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_a_gateway_and_a_worker_and_answers_the_hit_ratio() {
    let app = spawn_app(&[]).await;
    let (worker_metrics, _stop) =
        start_worker_with_metrics(&app.nats.url(), vec![StubModel::new(METERED)], &[]).await;
    let prometheus = prometheus_scraping(&app, worker_metrics);
    mixed_traffic(&app).await;
    wait_for_fresh_scrapes(&prometheus, 2).await;
    // 3 misses, 6 hits: the ratio of hits among answered lookups.
    let hit_ratio = query_until_answered(
        &prometheus,
        r#"sum(gateway_prediction_requests_total{outcome=~"hit|stale|coalesced"}) / sum(gateway_prediction_requests_total{outcome=~"hit|stale|coalesced|miss"})"#,
    )
    .await;
    assert!(
        (hit_ratio - 6.0 / 9.0).abs() < 1e-9,
        "hit ratio {hit_ratio}"
    );
    // The worker computed the 3 misses and refused the rejected input.
    let computed = query_until_answered(
        &prometheus,
        r#"sum(worker_requests_total{model="metered",outcome="ok"})"#,
    )
    .await;
    assert_eq!(computed, 3.0);
    let rejected = query_until_answered(
        &prometheus,
        r#"sum(worker_requests_total{model="metered",outcome="400"})"#,
    )
    .await;
    assert_eq!(rejected, 1.0);
    let up = query_until_answered(&prometheus, r#"sum(up)"#).await;
    assert_eq!(up, 2.0);
}

/// The value of the sample `name{labels}` in a text exposition.
fn sample(exposition: &str, series: &str) -> f64 {
    exposition
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in:\n{exposition}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scaling_signal_counts_model_calls_in_flight_and_waiting() {
    let app = spawn_app(&[]).await;
    let (worker_metrics, _stop) = start_worker_with_metrics(
        &app.nats.url(),
        vec![StubModel::slow(METERED, Duration::from_millis(1500))],
        &["--concurrency", "1"],
    )
    .await;
    let path = format!("/v1/models/{METERED}/predict");
    let bodies: Vec<String> = (0..3).map(|i| format!(r#"{{"held":{i}}}"#)).collect();
    let held = futures::future::join_all(bodies.iter().map(|body| app.post(&path, body)));
    let look = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        both_metrics(&app, &worker_metrics).await
    };
    let (responses, (gateway, worker)) = tokio::join!(held, look);
    let series = |name: &str| format!(r#"{name}{{model="{METERED}"}}"#);
    assert_eq!(
        sample(&gateway, &series("gateway_model_calls_in_flight")),
        3.0
    );
    assert_eq!(sample(&worker, &series("worker_requests_in_flight")), 1.0);
    assert_eq!(sample(&worker, &series("worker_requests_waiting")), 2.0);
    for response in responses {
        assert_eq!(response.status(), 200);
    }
    let gateway = app.get("/metrics").await.text().await.unwrap();
    assert_eq!(
        sample(&gateway, &series("gateway_model_calls_in_flight")),
        0.0
    );
}

/// Every query of every panel of `deploy/grafana/dashboards/prediction-cache.json`,
/// with the dashboard's variables as Grafana fills them ("All" models).
fn dashboard_queries() -> Vec<(String, String)> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/grafana/dashboards/prediction-cache.json"
    );
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "1m")
                .replace("$model", ".*");
            queries.push((panel["title"].as_str().unwrap().to_owned(), expr));
        }
    }
    queries
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_panel_query_answers_from_a_real_prometheus() {
    let app = spawn_app(&[]).await;
    let (worker_metrics, _stop) = start_worker_with_metrics(
        &app.nats.url(),
        vec![
            StubModel::slow(METERED, Duration::from_millis(200)),
            Arc::new(TinyChat::new(Duration::ZERO)),
        ],
        &[],
    )
    .await;
    let prometheus = prometheus_scraping(&app, worker_metrics);
    wait_for_fresh_scrapes(&prometheus, 2).await;
    mixed_traffic(&app).await;
    // An LLM answer, then the same from the cache: tokens saved, and times to
    // the first token of a miss and of a hit.
    let chat = r#"{"model":"tiny-chat","messages":[{"role":"user","content":"count my tokens"}],"seed":1}"#;
    for expected in ["MISS", "HIT"] {
        let response = app.post("/v1/chat/completions", chat).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["x-cache"], expected);
    }
    // Identical requests at once: one computes, the others join it (coalesced).
    let path = format!("/v1/models/{METERED}/predict");
    futures::future::join_all((0..3).map(|_| app.post(&path, r#"{"together":1}"#))).await;
    // A rate needs two samples since the traffic.
    wait_for_fresh_scrapes(&prometheus, 2).await;
    wait_for_fresh_scrapes(&prometheus, 2).await;
    let queries = dashboard_queries();
    assert!(queries.len() >= 13, "{queries:?}");
    // Each must be valid PromQL and return a series (it fails the test after
    // 30 s otherwise): a panel that shows nothing is a broken panel.
    for (panel, query) in queries {
        eprintln!("{panel}: {query}");
        query_until_answered(&prometheus, &query).await;
    }
}
