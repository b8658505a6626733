//! Traffic besides wrk's: warming a cache, reading a gateway's counters,
//! asking a worker directly, and a sink for traces.

use std::time::Instant;

use anyhow::bail;
use futures::StreamExt;

use crate::load::Measured;
use crate::report::percentile;

/// An OTLP/HTTP endpoint that accepts every export and keeps nothing; returns
/// its base URL.
pub async fn otlp_sink() -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = format!("http://{}", listener.local_addr()?);
    let app = axum::Router::new().route("/v1/traces", axum::routing::post(|| async { "" }));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(address)
}

/// Fails the run if `measured` saw a socket error or an error status.
pub fn check_clean(name: &str, measured: &Measured) -> anyhow::Result<()> {
    if measured.errors > 0 || measured.status_errors > 0 {
        bail!(
            "{name}: {} socket errors and {} error statuses in {} requests",
            measured.errors,
            measured.status_errors,
            measured.requests
        );
    }
    Ok(())
}

/// Sends `count` GET requests, `concurrency` at a time, for paths made by `path`.
pub async fn fill(
    port: u16,
    count: usize,
    concurrency: usize,
    path: impl Fn(usize) -> String,
) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let failures = futures::stream::iter(0..count)
        .map(|i| {
            let request = http
                .get(format!("http://127.0.0.1:{port}{}", path(i)))
                .send();
            async move {
                request
                    .await
                    .map(|r| r.status().is_success())
                    .unwrap_or(false)
            }
        })
        .buffer_unordered(concurrency)
        .filter(|ok| futures::future::ready(!ok))
        .count()
        .await;
    if failures > 0 {
        bail!("{failures} of {count} warm-up requests failed");
    }
    Ok(())
}

/// How many model calls the gateway on `port` has handed on to another worker
/// because the first had a backlog, from its metrics.
pub async fn redirected_requests(port: u16) -> anyhow::Result<f64> {
    let metrics = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await?
        .text()
        .await?;
    Ok(metrics
        .lines()
        .filter(|line| line.starts_with("gateway_model_call_retries_total{"))
        .filter(|line| line.contains(r#"reason="redirected""#))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// Latency (p50, p90, p99, max in ms) of `count` sequential NATS requests straight
/// to a worker, distinct inputs: the floor under any miss through the gateway.
pub async fn nats_floor(url: &str, run_id: u128, count: usize) -> anyhow::Result<[f64; 4]> {
    let client = async_nats::connect(url).await?;
    let mut timings = Vec::with_capacity(count);
    for i in 0..count {
        let payload = format!(r#"{{"product_id":"F{run_id}-{i}"}}"#);
        let begun = Instant::now();
        client.request("predict.price", payload.into()).await?;
        timings.push(begun.elapsed().as_secs_f64() * 1000.0);
    }
    timings.sort_by(f64::total_cmp);
    Ok([
        percentile(&timings, 0.5),
        percentile(&timings, 0.9),
        percentile(&timings, 0.99),
        *timings.last().unwrap(),
    ])
}
