//! Cache hits against `/healthz`: the noise floor (`/healthz` alternated with
//! itself: how far this machine alone moves a ratio), a hot key answered from
//! the in-process tier, and 10 000 keys answered from Redis only.

use crate::load::{self, Measured};
use crate::report::{Row, paired_row, row_from};
use crate::settings::Run;
use crate::stack::{self, Process, System};
use crate::traffic::{check_clean, fill};

/// The hot key's path, as wrk's Lua script takes it.
pub const HOT_KEY: &str = r#""/v1/models/price/predict?product_id=ETH%2FEUR""#;
/// `/healthz`, as wrk's Lua script takes it.
const HEALTHZ: &str = r#""/healthz""#;
/// 10 000 keys, one at random per request.
pub const TEN_THOUSAND_KEYS: &str =
    r#""/v1/models/price/predict?product_id=K" .. math.random(0, 9999)"#;

/// The rows of the baseline, the noise floor and the hot key; and the baseline
/// run, which other rows compare with.
pub async fn noise_floor_and_hot_key(
    run: &Run,
    system: &System,
) -> anyhow::Result<(Vec<Row>, Measured)> {
    let port = system.port;
    // The throughput ratios alternate the scenario with its baseline (see
    // `load::interleaved`), the hot key's baseline being the table's. First the
    // baseline against itself.
    run.say("noise floor: GET /healthz alternating with itself");
    let noise = load::interleaved(
        port,
        &run.round_load(HEALTHZ),
        |_| run.round_load(HEALTHZ),
        run.rounds,
    )?;
    check_clean("healthz", &noise.scenario)?;

    run.say("cache hit, one hot key, in-process tier, alternating with GET /healthz");
    fill(port, 1, 1, |_| {
        "/v1/models/price/predict?product_id=ETH%2FEUR".into()
    })
    .await?;
    let hot = load::interleaved(
        port,
        &run.round_load(HEALTHZ),
        |_| run.round_load(HOT_KEY),
        run.rounds,
    )?;
    let healthz = hot.baseline.clone();
    check_clean("healthz", &healthz)?;
    check_clean("hot key", &hot.scenario)?;
    let mut noise_row = paired_row(
        "noise floor: GET /healthz against itself",
        &noise,
        run.connections,
        None,
    );
    // Its latencies are the baseline's again: kept out of the table and chart.
    noise_row.latency_ms = None;
    let rows = vec![
        row_from(
            "baseline: GET /healthz",
            &healthz,
            run.connections,
            None,
            ("", None),
        ),
        noise_row,
        paired_row(
            "cache hit, 1 hot key, in-process tier",
            &hot,
            run.connections,
            Some(("≥ 0.85×", 0.85)),
        ),
    ];
    Ok((rows, healthz))
}

/// A gateway without its in-process tier (key prefix `b:`), its cache warmed
/// with 10 000 keys: every hit is a Redis read. Also the baseline of the
/// Redis Cluster rows.
pub async fn redis_only_gateway(run: &Run, system: &System) -> anyhow::Result<(Process, u16)> {
    run.say("cache hit, 10 000 keys, Redis only: warming");
    let (gateway, port) = stack::gateway(
        &system.nats.url(),
        &system.redis.url(),
        &[
            "--cache-ttl",
            "30m",
            "--key-prefix",
            "b:",
            "--local-capacity",
            "0",
        ],
    )
    .await?;
    fill(port, 10_000, 64, |i| {
        format!("/v1/models/price/predict?product_id=K{i}")
    })
    .await?;
    Ok((gateway, port))
}

/// The row of Redis-only hits on the gateway at `port`.
pub fn redis_only(run: &Run, port: u16) -> anyhow::Result<Row> {
    run.say("cache hit, 10 000 keys, Redis only, alternating with GET /healthz");
    let spread = load::interleaved(
        port,
        &run.round_load(HEALTHZ),
        |_| run.round_load(TEN_THOUSAND_KEYS),
        run.rounds,
    )?;
    check_clean("10k keys", &spread.scenario)?;
    Ok(paired_row(
        "cache hit, 10 000 keys, Redis only",
        &spread,
        run.connections,
        Some(("≥ 0.6×", 0.6)),
    ))
}
