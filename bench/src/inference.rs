//! The ONNX worker's scenarios: inference speed of the example GBT on one core,
//! and worker throughput over NATS for a large MLP with dynamic batching on and
//! off (`--max-batch 1`), at 64 concurrent requests and at one at a time.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Map, Value, json};
use test_support::NatsServer;
use test_support::example_models::{manifest, models_dir};

use crate::load::Measured;
use crate::report::Row;
use crate::report::{percentile, row_from};
use crate::stack;

/// The bench-only MLP, written by `python3 models/train.py --bench-only`.
fn bench_model() -> anyhow::Result<PathBuf> {
    let path = models_dir().join("bench/bench-mlp.onnx");
    if !path.is_file() {
        bail!(
            "{} is missing: run `python3 models/train.py --bench-only` (make bench does)",
            path.display()
        );
    }
    Ok(path)
}

/// A manifest serving the bench MLP, written next to the bench's build output.
fn bench_manifest() -> anyhow::Result<PathBuf> {
    let manifest = std::env::temp_dir().join(format!("bench-mlp-{}.toml", std::process::id()));
    std::fs::write(
        &manifest,
        format!(
            "[[model]]\nname = \"bench-mlp\"\nversion = \"1\"\npath = \"{}\"\n\
             input = {{ field = \"features\" }}\noutput = {{ y = {{ index = 0 }} }}\n",
            bench_model()?.display()
        ),
    )?;
    Ok(manifest)
}

/// A distinct input: ten numbers made from `n`.
fn features(n: u64) -> Map<String, Value> {
    let values: Vec<f64> = (0..10).map(|j| (n * 10 + j) as f64 / 1000.0).collect();
    json!({ "features": values }).as_object().unwrap().clone()
}

/// Rows per second the example GBT computes on one core, inputs read from JSON
/// and outputs written as JSON as the worker does, in batches of 256.
async fn gbt_rows_per_second(duration: Duration) -> anyhow::Result<f64> {
    let model = worker::load_manifest(Path::new(&manifest()))?
        .into_iter()
        .find(|model| model.name().as_str() == "price-gbt")
        .context("price-gbt is not in models/models.toml")?;
    let inputs: Vec<_> = (0..256).map(features).collect();
    let started = Instant::now();
    let mut rows = 0usize;
    while started.elapsed() < duration {
        // One batch at a time: one blocking thread, one core.
        let results = model.predict_batch(&inputs).await;
        if results.iter().any(Result::is_err) {
            bail!("price-gbt failed on a bench input");
        }
        rows += results.len();
    }
    Ok(rows as f64 / started.elapsed().as_secs_f64())
}

/// `clients` callers, each sending its next distinct request as soon as the last
/// is answered, for `duration`.
async fn closed_loop(
    client: &async_nats::Client,
    clients: u64,
    duration: Duration,
) -> anyhow::Result<Measured> {
    let started = Instant::now();
    let callers = (0..clients).map(|caller| {
        let client = client.clone();
        async move {
            let mut latencies = Vec::new();
            let mut n = caller;
            while started.elapsed() < duration {
                let payload = serde_json::to_vec(&features(n))?;
                let begun = Instant::now();
                let reply = client.request("predict.bench-mlp", payload.into()).await?;
                if reply
                    .headers
                    .as_ref()
                    .is_some_and(|h| h.get("Nats-Service-Error").is_some())
                {
                    bail!("the worker answered an error");
                }
                latencies.push(begun.elapsed().as_secs_f64() * 1e6);
                n += clients;
            }
            anyhow::Ok(latencies)
        }
    });
    let mut latencies: Vec<f64> = futures::future::try_join_all(callers)
        .await?
        .into_iter()
        .flatten()
        .collect();
    let elapsed = started.elapsed();
    latencies.sort_by(f64::total_cmp);
    Ok(Measured {
        requests: latencies.len() as u64,
        duration_us: elapsed.as_micros() as u64,
        errors: 0,
        status_errors: 0,
        server_errors: 0,
        p50_us: percentile(&latencies, 0.5),
        p90_us: percentile(&latencies, 0.9),
        p99_us: percentile(&latencies, 0.99),
        max_us: *latencies.last().context("no request completed")?,
    })
}

/// Every row of this module's scenarios.
pub async fn scenarios(seconds: Duration, say: &dyn Fn(&str)) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();

    say("ONNX: the example GBT on one core");
    let rows_per_second = gbt_rows_per_second(seconds).await?;
    rows.push(Row {
        scenario: "ONNX price-gbt, 1 core, batches of 256".into(),
        load: "1 thread".into(),
        throughput: Some(rows_per_second),
        latency_ms: None,
        baseline: "rows/s, JSON in and out included".into(),
        ratio: None,
        goal: "≥ 100 000 rows/s".into(),
        met: Some(rows_per_second >= 100_000.0),
    });

    let nats = NatsServer::start();
    let manifest = bench_manifest()?;
    let manifest = manifest.to_str().context("a UTF-8 temp path")?;
    let client = async_nats::connect(nats.url()).await?;
    let mut measured = Vec::new();
    for (label, max_batch) in [("batching off", "1"), ("batching on", "64")] {
        // One inference call per core at a time, in both runs.
        let worker = stack::worker(
            &nats.url(),
            &[
                "--model-config",
                manifest,
                "--concurrency",
                "2",
                "--max-batch",
                max_batch,
                "--batch-window",
                "1ms",
            ],
        )
        .await?;
        closed_loop(&client, 64, Duration::from_millis(500)).await?;
        say(&format!(
            "ONNX worker over NATS, bench-mlp, 64 concurrent, {label}"
        ));
        let busy = closed_loop(&client, 64, seconds).await?;
        say(&format!(
            "ONNX worker over NATS, bench-mlp, one at a time, {label}"
        ));
        let alone = closed_loop(&client, 1, seconds / 2).await?;
        drop(worker);
        measured.push((label, busy, alone));
    }
    let [
        (off_label, off_busy, off_alone),
        (on_label, on_busy, on_alone),
    ] = <[_; 2]>::try_from(measured).map_err(|_| anyhow::anyhow!("two runs"))?;
    let mut off = row_from(
        &format!("ONNX bench-mlp, 64 in flight, {off_label}"),
        &off_busy,
        64,
        None,
        ("", None),
    );
    off.load = "64 in flight".into();
    rows.push(off);
    let mut on = row_from(
        &format!("ONNX bench-mlp, 64 in flight, {on_label}"),
        &on_busy,
        64,
        Some(("--max-batch 1", &off_busy)),
        ("≥ 2× (1 ms window, max 64)", Some(2.0)),
    );
    on.load = "64 in flight".into();
    rows.push(on);
    let mut off = row_from(
        &format!("ONNX bench-mlp, 1 in flight, {off_label}"),
        &off_alone,
        1,
        None,
        ("", None),
    );
    off.load = "1 in flight".into();
    rows.push(off);
    let window_cost_ms = (on_alone.p50_us - off_alone.p50_us) / 1000.0;
    let mut alone = row_from(
        &format!("ONNX bench-mlp, 1 in flight, {on_label}"),
        &on_alone,
        1,
        None,
        ("", None),
    );
    alone.baseline = format!(
        "--max-batch 1: p50 {:.3} ms (window cost: {window_cost_ms:+.3} ms)",
        off_alone.p50_us / 1000.0
    );
    alone.load = "1 in flight".into();
    alone.goal = "p50 cost of the window, reported".into();
    rows.push(alone);
    Ok(rows)
}
