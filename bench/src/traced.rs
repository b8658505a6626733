//! What traces cost: hits and misses on a gateway tracing at 1% (exporting
//! over OTLP/HTTP to a sink that accepts and drops spans), alternated with the
//! same load on the gateway with tracing off.

use crate::hits::HOT_KEY;
use crate::load;
use crate::report::{Row, versus};
use crate::settings::Run;
use crate::stack::{self, System};
use crate::traffic::{check_clean, fill, otlp_sink};

pub async fn rows(run: &Run, system: &System) -> anyhow::Result<Vec<Row>> {
    let sink = otlp_sink().await?;
    let (_traced_gateway, traced_port) = stack::gateway(
        &system.nats.url(),
        &system.redis.url(),
        &[
            "--cache-ttl",
            "30m",
            "--key-prefix",
            "a:",
            "--otlp-endpoint",
            &sink,
            "--otlp-protocol",
            "http/protobuf",
            "--trace-sample-ratio",
            "0.01",
        ],
    )
    .await?;
    fill(traced_port, 1, 1, |_| {
        "/v1/models/price/predict?product_id=ETH%2FEUR".into()
    })
    .await?;
    let mut rows = Vec::new();
    run.say("cache hit, one hot key: traced at 1% alternating with tracing off");
    let traced_hits = load::interleaved_between(
        (system.port, |_| run.round_load(HOT_KEY)),
        traced_port,
        |_| run.round_load(HOT_KEY),
        run.rounds,
    )?;
    check_clean("traced hits", &traced_hits.scenario)?;
    rows.push(versus(
        "cache hit, 1 hot key, traced at 1%",
        &traced_hits,
        run.connections,
        "tracing off",
        ("cost, reported", None),
    ));
    run.say("cache miss, distinct inputs: traced at 1% alternating with tracing off");
    let traced_misses = load::interleaved_between(
        (system.port, |round| run.distinct_round("UT", round)),
        traced_port,
        |round| run.distinct_round("TR", round),
        run.rounds,
    )?;
    check_clean("traced misses", &traced_misses.scenario)?;
    rows.push(versus(
        "cache miss, distinct inputs, traced at 1%",
        &traced_misses,
        run.connections,
        "tracing off",
        ("cost, reported", None),
    ));
    Ok(rows)
}
