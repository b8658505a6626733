//! `make bench`: the whole system under load on this machine, each scenario next to
//! a baseline measured in the same run. Prints a Markdown table (also written to
//! `bench/results.md`) and draws `bench/latency.svg`.
//!
//! Settings: `BENCH_SECONDS` (per wrk run, default 3), `BENCH_ROUNDS` (how many
//! times each throughput ratio alternates its scenario with its baseline,
//! default 15), `BENCH_ROUND_SECONDS` (each of those runs, default 1),
//! `BENCH_CONNECTIONS` (default 64), `BENCH_RUST_LOG` (the services' log level,
//! default `info`); see [`settings`].
//!
//! The scenario groups, one file each, in the order of the table: [`hits`]
//! (noise floor, hot key, Redis only), [`nginx`] (the hit path against nginx's
//! `proxy_cache`), [`traced`], [`cluster`], [`misses`],
//! [`llm`] (the OpenAI API), [`tensors`] (the Open Inference Protocol), [`memory`], [`demo`] (the original demo and the stampede), [`scale_out`]
//! and [`inference`] (the ONNX worker). They run on [`stack`] (the release
//! binaries and their servers) with [`load`] (wrk) and [`traffic`] (warm-ups,
//! counters, the NATS floor), and [`report`] writes the table.
//!
//! `bench soak` (`make soak`) runs the long mixed load instead; see [`soak`].
//! `bench inference` runs only the ONNX worker's scenarios, `bench llm` only
//! the OpenAI API's, `bench tensors` only the Open Inference Protocol's,
//! `bench nginx` only the comparison with nginx.
//! `bench callgrind` (`make callgrind`) counts the gateway's instructions per
//! request instead; see [`callgrind`].

mod callgrind;
mod cluster;
mod demo;
mod floor;
mod hits;
mod inference;
mod llm;
mod load;
mod memory;
mod misses;
mod nginx;
mod report;
mod scale_out;
mod settings;
mod soak;
mod stack;
mod tensors;
mod traced;
mod traffic;

use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};
use report::version_of;
use settings::Run;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Stopped by Ctrl-C or SIGTERM, the bench drops the run, and with it every server
    // and service it started (their handles kill them when dropped), rather than
    // leaving them running. A wrk run in progress finishes first (at most its
    // duration; Ctrl-C in a terminal stops wrk too).
    tokio::select! {
        result = dispatch() => result,
        () = prediction_runtime::shutdown::shutdown_signal() => {
            bail!("interrupted; every process the bench started is stopped")
        }
    }
}

async fn dispatch() -> anyhow::Result<()> {
    match std::env::args().nth(1).as_deref() {
        Some("soak") => soak::run().await,
        Some("callgrind") => callgrind::run().await,
        // Only the ONNX scenarios (quick, while working on the worker).
        Some("inference") => {
            let run = Run::from_env()?;
            let seconds = std::time::Duration::from_secs(settings::env_number("BENCH_SECONDS", 5));
            let rows = inference::scenarios(seconds, &|text: &str| run.say(text)).await?;
            println!("{}", report::markdown("## ONNX scenarios", &rows));
            Ok(())
        }
        // Only the OpenAI API's scenarios.
        Some("llm") => {
            let run = Run::from_env()?;
            let system = stack::System::start().await?;
            let rows = llm::rows(&run, &system).await?;
            println!("{}", report::markdown("## OpenAI API scenarios", &rows));
            Ok(())
        }
        // Only the comparison with nginx.
        Some("nginx") => {
            let run = Run::from_env()?;
            let system = stack::System::start().await?;
            let rows = nginx::rows(&run, &system).await?;
            println!(
                "{}",
                report::markdown("## The hit path against nginx", &rows)
            );
            Ok(())
        }
        // Only the memory figures (and a /healthz run for their row's baseline).
        Some("memory") => {
            let run = Run::from_env()?;
            let system = stack::System::start().await?;
            let healthz = load::run(system.port, &run.load(r#""/healthz""#, run.connections))?;
            let (wide, memory) = memory::measure(&run, &system, &healthz).await?;
            println!("{}", report::markdown("## Memory", &[wide]));
            for (what, bytes, limit) in memory {
                println!(
                    "{what}: {:.1} MiB (goal < {} MiB)",
                    bytes as f64 / 1048576.0,
                    limit >> 20
                );
            }
            Ok(())
        }
        // Only the Open Inference Protocol's scenarios.
        Some("tensors") => {
            let run = Run::from_env()?;
            let system = stack::System::start().await?;
            let rows = tensors::rows(&run, &system).await?;
            println!(
                "{}",
                report::markdown("## Open Inference Protocol scenarios", &rows)
            );
            Ok(())
        }
        _ => bench().await,
    }
}

/// Every scenario group, in the order of the table, then the report.
async fn bench() -> anyhow::Result<()> {
    if Command::new("wrk").arg("--version").output().is_err() {
        bail!(
            "wrk is not installed: apt-get install -y wrk (make bench does this when run as root)"
        );
    }
    let run = Run::from_env()?;
    let mut rows = Vec::new();
    let system = stack::System::start().await?;
    let (hit_rows, healthz) = hits::noise_floor_and_hot_key(&run, &system).await?;
    rows.extend(hit_rows);
    rows.extend(nginx::rows(&run, &system).await?);
    rows.extend(traced::rows(&run, &system).await?);
    let (redis_only, redis_port) = hits::redis_only_gateway(&run, &system).await?;
    rows.push(hits::redis_only(&run, redis_port)?);
    rows.extend(cluster::rows(&run, &system, redis_port).await?);
    drop(redis_only);
    rows.extend(misses::rows(&run, &system).await?);
    rows.extend(llm::rows(&run, &system).await?);
    rows.extend(tensors::rows(&run, &system).await?);
    drop(system);
    // Memory on a system of its own: the peak of a gateway that served every
    // scenario above would count their bodies and memos too.
    let system = stack::System::start().await?;
    let (wide, memory) = memory::measure(&run, &system, &healthz).await?;
    rows.push(wide);
    drop(system);
    rows.extend(demo::rows(&run).await?);
    rows.extend(scale_out::rows(&run).await?);
    rows.extend(inference::scenarios(run.seconds, &|text: &str| run.say(text)).await?);

    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let header = format!(
        "## Benchmark results\n\nMachine: {} cores ({cpu}); {}; {}; {}. Release builds; the services log at `{}`.\n\
         Load: `wrk -t1 -c<conns> -d{}s` per run (scale-out: {}s, 16 connections; the rows against nginx: `wrk -t2 -c32`,\n\
         one prepared request), every scenario against a\n\
         baseline measured in the same run; each throughput ratio alternates baseline and scenario {} times, {} s each\n\
         (throughputs over all of their runs, latencies of the median run; \"rounds\" gives the lowest and highest\n\
         ratio of one scenario run to the baseline run before it). Whole run: {:.0} s.",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        version_of("nats-server", "--version"),
        version_of("redis-server", "--version")
            .split(" sha=")
            .next()
            .unwrap_or(""),
        version_of("wrk", "--version")
            .split(" Copyright")
            .next()
            .unwrap_or(""),
        std::env::var("BENCH_RUST_LOG").unwrap_or_else(|_| "info".into()),
        run.seconds.as_secs(),
        scale_out::scale_seconds(&run).as_secs(),
        run.rounds,
        run.round_seconds.as_secs(),
        run.elapsed().as_secs_f64(),
    );
    let mut markdown = report::markdown(&header, &rows);
    markdown.push_str("\n| memory | measured | goal | met |\n|---|---:|---|---|\n");
    for (what, bytes, limit) in &memory {
        markdown.push_str(&format!(
            "| {what} | {:.1} MiB | < {} MiB | {} |\n",
            *bytes as f64 / (1 << 20) as f64,
            limit >> 20,
            if bytes < limit { "yes" } else { "**no**" }
        ));
    }
    println!("{markdown}");
    let out_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::write(out_dir.join("results.md"), &markdown).context("writing bench/results.md")?;
    report::latency_chart(&out_dir.join("latency.svg"), &rows)?;
    eprintln!("wrote bench/results.md and bench/latency.svg");
    Ok(())
}
