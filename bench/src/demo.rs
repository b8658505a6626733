//! The original demo (100 sequential requests to `POST /predict`, the model at
//! 1000 ms: the first a miss, the rest hits) and the stampede (1000 identical
//! cold requests at once: one model call), on a system of their own.

use std::time::Instant;

use anyhow::bail;
use test_support::{NatsServer, RedisServer};

use crate::report::{Row, percentile};
use crate::settings::Run;
use crate::stack;

pub async fn rows(run: &Run) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    let demo_nats = NatsServer::start();
    let demo_redis = RedisServer::start();
    let _demo_workers = [
        stack::worker(&demo_nats.url(), &["--latency-ms", "1000"]).await?,
        stack::worker(&demo_nats.url(), &["--latency-ms", "1000"]).await?,
    ];
    let (_demo_gateway, demo_port) =
        stack::gateway(&demo_nats.url(), &demo_redis.url(), &[]).await?;
    run.say("the original demo: 100 sequential requests, model at 1000 ms");
    let http = reqwest::Client::new();
    let mut timings = Vec::new();
    for _ in 0..100 {
        let begun = Instant::now();
        let response = http
            .post(format!("http://127.0.0.1:{demo_port}/predict"))
            .json(&serde_json::json!({"product_id": format!("DEMO-{}", run.id)}))
            .send()
            .await?;
        if !response.status().is_success() {
            bail!("demo request failed: {}", response.status());
        }
        response.bytes().await?;
        timings.push(begun.elapsed().as_secs_f64() * 1000.0);
    }
    let first = timings[0];
    let mut rest = timings[1..].to_vec();
    rest.sort_by(f64::total_cmp);
    let median = percentile(&rest, 0.5);
    rows.push(Row {
        scenario: "original demo: first request (miss)".into(),
        load: "sequential".into(),
        throughput: None,
        latency_ms: Some([first, first, first, first]),
        baseline: "–".into(),
        ratio: None,
        goal: "–".into(),
        met: None,
    });
    rows.push(Row {
        scenario: "original demo: the other 99 (hits)".into(),
        load: "sequential".into(),
        throughput: None,
        latency_ms: Some([
            median,
            percentile(&rest, 0.9),
            percentile(&rest, 0.99),
            *rest.last().unwrap(),
        ]),
        baseline: format!("first request: {first:.0} ms"),
        ratio: Some(first / median),
        goal: "median < 1 ms (≥ 1000×)".into(),
        met: Some(median < 1.0),
    });

    run.say("stampede: 1000 concurrent identical cold requests");
    let demo_client = async_nats::connect(demo_nats.url()).await?;
    let before = stack::worker_requests(&demo_client).await?;
    let stampede_http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()?;
    let statuses = futures::future::join_all((0..1000).map(|_| {
        stampede_http
            .post(format!("http://127.0.0.1:{demo_port}/predict"))
            .json(&serde_json::json!({"product_id": format!("STAMPEDE-{}", run.id)}))
            .send()
    }))
    .await;
    let ok = statuses
        .iter()
        .filter(|r| r.as_ref().is_ok_and(|r| r.status().is_success()))
        .count();
    let calls = stack::worker_requests(&demo_client).await? - before;
    rows.push(Row {
        scenario: "stampede: 1000 identical cold requests".into(),
        load: "1000 at once".into(),
        throughput: None,
        latency_ms: None,
        baseline: format!("{ok}/1000 answered 200"),
        ratio: None,
        goal: format!("exactly 1 model call (measured: {calls})"),
        met: Some(calls == 1 && ok == 1000),
    });

    Ok(rows)
}
