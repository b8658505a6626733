//! Memory: 100 000 keys cached, then 256 connections over them; the gateway's
//! and the workers' peak resident memory.

use crate::load::{self, Load, Measured};
use crate::report::{Row, row_from};
use crate::settings::Run;
use crate::stack::System;
use crate::traffic::{check_clean, fill};

/// A memory figure: what, how many bytes, and the goal's limit.
pub type Memory = (&'static str, u64, u64);

/// The row of the wide load (against `healthz`, the baseline run) and the
/// memory figures.
pub async fn measure(
    run: &Run,
    system: &System,
    healthz: &Measured,
) -> anyhow::Result<(Row, Vec<Memory>)> {
    run.say("memory: 100 000 cached keys, then 256 connections");
    fill(system.port, 100_000, 64, |i| {
        format!("/v1/models/price/predict?product_id=R{}-{i}", run.id)
    })
    .await?;
    let wide = load::run(
        system.port,
        &Load {
            connections: 256,
            duration: run.seconds,
            threads: 1,
            prepared: false,
            path: format!(
                r#""/v1/models/price/predict?product_id=R{}-" .. math.random(0, 99999)"#,
                run.id
            ),
            count_server_errors: false,
            cpus: None,
            body: None,
        },
    )?;
    check_clean("256 connections", &wide)?;
    let row = row_from(
        "cache hit, 100 000 keys, 256 conns",
        &wide,
        256,
        Some(("healthz", healthz)),
        ("(memory below)", None),
    );
    let gateway_rss = system.gateway.peak_rss()?;
    let worker_rss = system
        .workers
        .iter()
        .map(|w| w.peak_rss())
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .max()
        .unwrap_or(0);
    let memory = vec![
        (
            "gateway peak RSS (100 000 keys cached, 256 conns)",
            gateway_rss,
            64u64 << 20,
        ),
        ("worker peak RSS", worker_rss, 32u64 << 20),
    ];
    Ok((row, memory))
}
