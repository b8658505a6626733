//! Misses: throughput of distinct inputs (model at 0 ms) against `/healthz`,
//! the NATS floor (a worker asked directly, one request at a time), and a miss
//! at concurrency 1 against that floor.

use crate::load;
use crate::report::{Row, paired_row, row_from};
use crate::settings::Run;
use crate::stack::System;
use crate::traffic::{check_clean, nats_floor};

pub async fn rows(run: &Run, system: &System) -> anyhow::Result<Vec<Row>> {
    let port = system.port;
    let mut rows = Vec::new();
    run.say("cache miss, all inputs distinct, model at 0 ms, alternating with GET /healthz");
    let miss = load::interleaved(
        port,
        &run.round_load(r#""/healthz""#),
        |round| run.distinct_round("M", round),
        run.rounds,
    )?;
    check_clean("misses", &miss.scenario)?;
    rows.push(paired_row(
        "cache miss, distinct inputs, model 0 ms",
        &miss,
        run.connections,
        Some(("≥ 0.2×", 0.2)),
    ));

    run.say("NATS floor: a worker asked directly, one request at a time");
    let floor = nats_floor(&system.nats.url(), run.id, 2_000).await?;
    rows.push(Row {
        scenario: "NATS floor: worker asked directly, concurrency 1".into(),
        load: "1 client".into(),
        throughput: None,
        latency_ms: Some(floor),
        baseline: "–".into(),
        ratio: None,
        goal: "–".into(),
        met: None,
    });

    run.say("cache miss at concurrency 1");
    let miss_one = load::run(
        port,
        &run.load(
            &format!(r#""/v1/models/price/predict?product_id=S{}-" .. n"#, run.id),
            1,
        ),
    )?;
    check_clean("misses at concurrency 1", &miss_one)?;
    // The model costs nothing here, so asking a worker directly is the floor; what
    // the gateway adds on top is the cache lookup, the lock, the store and HTTP.
    let added_ms = miss_one.p50_us / 1000.0 - floor[0];
    let mut row = row_from(
        "cache miss, concurrency 1, model 0 ms",
        &miss_one,
        1,
        None,
        ("p50 added over asking the worker directly < 1 ms", None),
    );
    row.baseline = format!(
        "NATS floor p50 {:.3} ms (added: {added_ms:.3} ms)",
        floor[0]
    );
    row.met = Some(added_ms < 1.0);
    rows.push(row);
    Ok(rows)
}
