//! `make soak`: a long mixed load (hits, misses, client errors) with memory read at
//! intervals, to show that nothing fails and that memory stays flat after warm-up.
//! `SOAK_MINUTES` (default 10) sets the length.

use std::time::{Duration, Instant};

use anyhow::bail;
use test_support::{NatsServer, RedisServer};

use crate::load::{self, Load};
use crate::stack;

/// The minutes at which memory is reported (those within the run).
const REPORT_AT: [u64; 6] = [1, 2, 5, 10, 30, 60];

pub async fn run() -> anyhow::Result<()> {
    let minutes: u64 = std::env::var("SOAK_MINUTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let nats = NatsServer::start();
    let redis = RedisServer::start();
    let workers = [
        stack::worker(&nats.url(), &["--latency-ms", "5"]).await?,
        stack::worker(&nats.url(), &["--latency-ms", "5"]).await?,
    ];
    // A short freshness, so entries keep expiring and being recomputed.
    let (gateway, port) =
        stack::gateway(&nats.url(), &redis.url(), &["--cache-ttl", "20s"]).await?;
    // 70% hits on 200 hot inputs, 25% misses on fresh inputs, 5% requests the
    // worker rejects (422): expected errors, not failures.
    let path = r#"(function()
        local r = math.random(100)
        if r <= 70 then return "/v1/models/price/predict?product_id=H" .. math.random(200) end
        if r <= 95 then return "/v1/models/price/predict?product_id=M" .. os.time() .. "-" .. n end
        return "/v1/models/price/predict?product=missing"
      end)()"#;

    let started = Instant::now();
    let mut rows = Vec::new();
    let (mut requests, mut failures, mut server_errors) = (0u64, 0u64, 0u64);
    println!("| minute | requests so far | gateway peak RSS | worker peak RSS (largest) |");
    println!("|---:|---:|---:|---:|");
    for minute in 1..=minutes {
        let measured = load::run(
            port,
            &Load {
                connections: 32,
                duration: Duration::from_secs(60),
                threads: 1,
                prepared: false,
                path: path.to_owned(),
                count_server_errors: true,
                cpus: None,
                body: None,
            },
        )?;
        requests += measured.requests;
        failures += measured.errors;
        server_errors += measured.server_errors;
        if REPORT_AT.contains(&minute) || minute == minutes {
            let gateway_rss = gateway.peak_rss()? as f64 / (1 << 20) as f64;
            let worker_rss = workers
                .iter()
                .map(|w| w.peak_rss().unwrap_or(0))
                .max()
                .unwrap_or(0) as f64
                / (1 << 20) as f64;
            let row =
                format!("| {minute} | {requests} | {gateway_rss:.1} MiB | {worker_rss:.1} MiB |");
            println!("{row}");
            rows.push(row);
        }
    }
    println!(
        "\n{requests} requests in {:.0} s: {failures} socket errors, {server_errors} 5xx responses (goal: 0 and 0).",
        started.elapsed().as_secs_f64()
    );
    if failures > 0 || server_errors > 0 {
        bail!("the soak had failed requests");
    }
    Ok(())
}
