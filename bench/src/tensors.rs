//! The Open Inference Protocol, on `bench-784` (784 FP32 inputs, an MNIST
//! image's size; `make bench-model` trains it): a cache hit in binary form and
//! in JSON form, each against `/healthz`; and a miss through the ONNX worker in
//! binary form against the same misses sent to the JSON route
//! (`/v1/models/bench-784/predict`, `{"pixels": [784 numbers]}`), measured by
//! a closed-loop client of the bench's own, since every request must differ.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use prediction_contract::tensors::INFERENCE_HEADER_CONTENT_LENGTH;
use serde_json::{Value, json};

use crate::load::{self, Load, Measured, Paired, RequestBody};
use crate::report::{Row, paired_row, percentile, versus};
use crate::settings::Run;
use crate::stack::{self, Process, System};
use crate::traffic::check_clean;

const MODEL: &str = "bench-784";
const WIDTH: usize = 784;
/// Requests in flight at once for the misses.
const MISS_CONCURRENCY: usize = 16;

/// The pixels of input `n`: the same for the same `n`, different for each
/// (its first two hold `n`, exactly, in two 24-bit halves).
fn pixels(n: u64) -> Vec<f32> {
    let mut pixels: Vec<f32> = (0..WIDTH)
        .map(|i| ((i as u64 * 31) % 256) as f32 / 255.0)
        .collect();
    pixels[0] = (n & 0xFF_FFFF) as f32;
    pixels[1] = (n >> 24) as f32;
    pixels
}

/// The binary form of an inference request for `pixels`, and its header's length.
fn binary_request(pixels: &[f32]) -> (Vec<u8>, usize) {
    let header = json!({"inputs": [{"name": "X", "datatype": "FP32", "shape": [1, WIDTH],
        "parameters": {"binary_data_size": WIDTH * 4}}]})
    .to_string();
    let mut body = header.clone().into_bytes();
    for value in pixels {
        body.extend_from_slice(&value.to_le_bytes());
    }
    (body, header.len())
}

fn json_request(pixels: &[f32]) -> Vec<u8> {
    json!({"inputs": [{"name": "X", "datatype": "FP32", "shape": [1, WIDTH], "data": pixels}]})
        .to_string()
        .into_bytes()
}

pub async fn rows(run: &Run, system: &System) -> anyhow::Result<Vec<Row>> {
    let port = system.port;
    let _worker = bench_784_worker(system).await?;
    let http = reqwest::Client::new();
    let infer = format!("http://127.0.0.1:{port}/v2/models/{MODEL}/infer");
    let hot = pixels(0);
    let (binary, header_length) = binary_request(&hot);
    let answered = http
        .post(&infer)
        .header(INFERENCE_HEADER_CONTENT_LENGTH, header_length)
        .body(binary.clone())
        .send()
        .await?;
    if !answered.status().is_success() {
        bail!(
            "{MODEL} answered {}: {}",
            answered.status(),
            answered.text().await?
        );
    }
    let path = format!(r#""/v2/models/{MODEL}/infer""#);
    let mut rows = Vec::new();
    for (form, body) in [
        (
            "binary",
            RequestBody::new(
                "oip-binary",
                &binary,
                "application/octet-stream",
                &[(INFERENCE_HEADER_CONTENT_LENGTH, header_length.to_string())],
            )?,
        ),
        (
            "JSON",
            RequestBody::new("oip-json", &json_request(&hot), "application/json", &[])?,
        ),
    ] {
        run.say(&format!(
            "OIP infer, 1x784 FP32 in {form} form, cached, alternating with GET /healthz"
        ));
        let load = Load {
            body: Some(body),
            ..run.round_load(&path)
        };
        let paired = load::interleaved(
            port,
            &run.round_load(r#""/healthz""#),
            |_| load.clone(),
            run.rounds,
        )?;
        check_clean(form, &paired.scenario)?;
        rows.push(paired_row(
            &format!("OIP infer, 1×784 FP32, {form} form, cached"),
            &paired,
            run.connections,
            None,
        ));
    }

    run.say("cache miss through the ONNX worker: OIP binary against the JSON route, alternating");
    let counter = Arc::new(AtomicU64::new(run.id as u64 % 1_000_000 * 1_000_000));
    let predict = format!("http://127.0.0.1:{port}/v1/models/{MODEL}/predict");
    let mut baselines = Vec::new();
    let mut scenarios = Vec::new();
    for _ in 0..run.rounds.max(1) {
        let next = Arc::clone(&counter);
        let url = predict.clone();
        baselines.push(
            closed_loop(&http, run.round_seconds, move |client| {
                let n = next.fetch_add(1, Ordering::Relaxed);
                client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(json!({ "pixels": pixels(n) }).to_string())
            })
            .await?,
        );
        let next = Arc::clone(&counter);
        let url = infer.clone();
        scenarios.push(
            closed_loop(&http, run.round_seconds, move |client| {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let (body, length) = binary_request(&pixels(n));
                client
                    .post(&url)
                    .header(INFERENCE_HEADER_CONTENT_LENGTH, length)
                    .body(body)
            })
            .await?,
        );
    }
    let paired = Paired {
        round_ratios: baselines
            .iter()
            .zip(&scenarios)
            .map(|(baseline, scenario)| scenario.throughput() / baseline.throughput())
            .collect(),
        baseline: Measured::combine(&baselines),
        scenario: Measured::combine(&scenarios),
    };
    check_clean("OIP misses", &paired.scenario)?;
    check_clean("JSON misses", &paired.baseline)?;
    rows.push(versus(
        "cache miss, OIP binary 1×784 FP32, ONNX worker",
        &paired,
        MISS_CONCURRENCY as u32,
        "the same misses on the JSON route",
        ("–", None),
    ));
    Ok(rows)
}

/// A worker serving `bench-784` with tensors and a JSON mapping, once the
/// gateway sees it.
async fn bench_784_worker(system: &System) -> anyhow::Result<Process> {
    let model = test_support::example_models::models_dir().join("bench/bench-784.onnx");
    if !model.is_file() {
        bail!("{} is missing: make bench-model trains it", model.display());
    }
    let manifest: PathBuf =
        std::env::temp_dir().join(format!("bench-784-{}.toml", std::process::id()));
    std::fs::write(
        &manifest,
        format!(
            "[[model]]\nname = \"{MODEL}\"\nversion = \"1\"\npath = \"{}\"\ninput = {{ field = \"pixels\" }}\n\
             output = {{ value = {{ tensor = \"variable\", index = 0 }} }}\n",
            model.display()
        ),
    )?;
    let worker = stack::worker(
        &system.nats.url(),
        &["--model-config", manifest.to_str().context("a UTF-8 path")?],
    )
    .await?;
    let url = format!("http://127.0.0.1:{}/v1/models", system.port);
    for _ in 0..100 {
        let listed: Value = reqwest::get(&url).await?.json().await?;
        if listed["models"]
            .as_array()
            .is_some_and(|models| models.iter().any(|m| m["name"] == MODEL))
        {
            return Ok(worker);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("the gateway never listed {MODEL}")
}

/// [`MISS_CONCURRENCY`] clients sending `request`s back to back for
/// `duration`: what they measured, as a wrk run reports it.
async fn closed_loop(
    http: &reqwest::Client,
    duration: Duration,
    request: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder + Send + Sync + 'static,
) -> anyhow::Result<Measured> {
    let request = Arc::new(request);
    let started = Instant::now();
    let until = started + duration;
    let mut clients = Vec::with_capacity(MISS_CONCURRENCY);
    for _ in 0..MISS_CONCURRENCY {
        let (http, request) = (http.clone(), Arc::clone(&request));
        clients.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            while Instant::now() < until {
                let sent = Instant::now();
                match request(&http).send().await {
                    Ok(response) if response.status().is_success() => {
                        let _ = response.bytes().await;
                        latencies.push(sent.elapsed().as_secs_f64() * 1e6);
                    }
                    _ => errors += 1,
                }
            }
            (latencies, errors)
        }));
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    for client in clients {
        let (some, failed) = client.await?;
        latencies.extend(some);
        errors += failed;
    }
    let elapsed = started.elapsed();
    latencies.sort_by(f64::total_cmp);
    if latencies.is_empty() {
        bail!("no request succeeded ({errors} failed)");
    }
    Ok(Measured {
        requests: latencies.len() as u64,
        duration_us: elapsed.as_micros() as u64,
        errors: 0,
        status_errors: errors,
        server_errors: 0,
        p50_us: percentile(&latencies, 0.5),
        p90_us: percentile(&latencies, 0.9),
        p99_us: percentile(&latencies, 0.99),
        max_us: *latencies.last().unwrap_or(&0.0),
    })
}
