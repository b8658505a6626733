//! `make bench`: the whole system under load on this machine, each scenario next to
//! a baseline measured in the same run. Prints a Markdown table (also written to
//! `bench/results.md`) and draws `bench/latency.svg`.
//!
//! Settings: `BENCH_SECONDS` (per wrk run, default 3), `BENCH_ROUNDS` (how many
//! times each throughput ratio alternates its scenario with its baseline,
//! default 15), `BENCH_ROUND_SECONDS` (each of those runs, default 1),
//! `BENCH_CONNECTIONS` (default 64), `BENCH_RUST_LOG` (the services' log level,
//! default `info`).
//!
//! `bench soak` (`make soak`) runs the long mixed load instead; see [`soak`].
//! `bench inference` runs only the ONNX worker's scenarios; see [`inference`].
//! `bench callgrind` (`make callgrind`) counts the gateway's instructions per
//! request instead; see [`callgrind`].

mod callgrind;
mod inference;
mod load;
mod report;
mod soak;
mod stack;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use futures::StreamExt;
use load::{Load, Measured, Paired};
use report::Row;
use test_support::{NatsServer, RedisCluster, RedisServer};

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn row_from(
    scenario: &str,
    measured: &Measured,
    connections: u32,
    baseline: Option<(&str, &Measured)>,
    goal: (&str, Option<f64>),
) -> Row {
    let ratio = baseline.map(|(_, base)| measured.throughput() / base.throughput());
    Row {
        scenario: scenario.to_owned(),
        load: format!("{connections} conns"),
        throughput: Some(measured.throughput()),
        latency_ms: Some([
            measured.p50_us / 1000.0,
            measured.p90_us / 1000.0,
            measured.p99_us / 1000.0,
            measured.max_us / 1000.0,
        ]),
        baseline: baseline.map_or("–".into(), |(name, base)| {
            format!("{name}: {:.0} req/s", base.throughput())
        }),
        ratio,
        goal: goal.0.to_owned(),
        met: goal.1.zip(ratio).map(|(target, ratio)| ratio >= target),
    }
}

/// The row of a scenario measured alternately with `/healthz`; the baseline
/// column also gives the spread of the rounds' ratios.
fn paired_row(scenario: &str, paired: &Paired, connections: u32, goal: Option<(&str, f64)>) -> Row {
    let mut row = row_from(
        scenario,
        &paired.scenario,
        connections,
        Some(("healthz", &paired.baseline)),
        goal.map_or(("–", None), |(text, target)| (text, Some(target))),
    );
    let (low, high) = paired.round_ratio_range();
    row.baseline
        .push_str(&format!("; rounds {low:.2}–{high:.2}×"));
    row
}

/// The row of a scenario on a Redis Cluster measured alternately with the same
/// load on the standalone Redis.
fn versus_standalone(
    scenario: &str,
    paired: &Paired,
    connections: u32,
    goal: (&str, Option<f64>),
) -> Row {
    let mut row = row_from(
        scenario,
        &paired.scenario,
        connections,
        Some(("standalone Redis", &paired.baseline)),
        goal,
    );
    let (low, high) = paired.round_ratio_range();
    row.baseline
        .push_str(&format!("; rounds {low:.2}–{high:.2}×"));
    row
}

/// The row of a scenario on a gateway tracing at 1%, measured alternately with
/// the same load on the gateway with tracing off.
fn versus_untraced(scenario: &str, paired: &Paired, connections: u32) -> Row {
    let mut row = row_from(
        scenario,
        &paired.scenario,
        connections,
        Some(("tracing off", &paired.baseline)),
        ("cost, reported", None),
    );
    let (low, high) = paired.round_ratio_range();
    row.baseline
        .push_str(&format!("; rounds {low:.2}–{high:.2}×"));
    row
}

/// An OTLP/HTTP endpoint that accepts every export and keeps nothing; returns
/// its base URL.
async fn otlp_sink() -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = format!("http://{}", listener.local_addr()?);
    let app = axum::Router::new().route("/v1/traces", axum::routing::post(|| async { "" }));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(address)
}

fn check_clean(name: &str, measured: &Measured) -> anyhow::Result<()> {
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
async fn fill(
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
async fn redirected_requests(port: u16) -> anyhow::Result<f64> {
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
async fn nats_floor(url: &str, run_id: u128, count: usize) -> anyhow::Result<[f64; 4]> {
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

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn version_of(command: &str, arg: &str) -> String {
    Command::new(command)
        .arg(arg)
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_owned()
        })
        .unwrap_or_else(|_| "not found".into())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Stopped by Ctrl-C or SIGTERM, the bench drops the run, and with it every server
    // and service it started (their handles kill them when dropped), rather than
    // leaving them running. A wrk run in progress finishes first (at most its
    // duration; Ctrl-C in a terminal stops wrk too).
    tokio::select! {
        result = run() => result,
        () = prediction_runtime::shutdown::shutdown_signal() => {
            bail!("interrupted; every process the bench started is stopped")
        }
    }
}

async fn run() -> anyhow::Result<()> {
    match std::env::args().nth(1).as_deref() {
        Some("soak") => return soak::run().await,
        Some("callgrind") => return callgrind::run().await,
        // Only the ONNX scenarios (quick, while working on the worker).
        Some("inference") => {
            let started = Instant::now();
            let say = |text: &str| eprintln!("[{:>5.1}s] {text}", started.elapsed().as_secs_f64());
            let seconds = Duration::from_secs(env_number("BENCH_SECONDS", 5));
            let rows = inference::scenarios(seconds, &say).await?;
            println!("{}", report::markdown("## ONNX scenarios", &rows));
            return Ok(());
        }
        _ => {}
    }
    let seconds = Duration::from_secs(env_number("BENCH_SECONDS", 3));
    let rounds = env_number("BENCH_ROUNDS", 15) as usize;
    let round_seconds = Duration::from_secs(env_number("BENCH_ROUND_SECONDS", 1));
    let connections = env_number("BENCH_CONNECTIONS", 64) as u32;
    if Command::new("wrk").arg("--version").output().is_err() {
        bail!(
            "wrk is not installed: apt-get install -y wrk (make bench does this when run as root)"
        );
    }
    let run_id = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis();
    let started = Instant::now();
    let mut rows = Vec::new();
    let mut memory = Vec::new();
    let say = |text: &str| eprintln!("[{:>5.1}s] {text}", started.elapsed().as_secs_f64());

    // Stack A: two workers of the stand-in at 0 ms, gateways with a long TTL.
    let nats = NatsServer::start();
    let redis = RedisServer::start();
    let workers = [
        stack::worker(&nats.url(), &["--latency-ms", "0"]).await?,
        stack::worker(&nats.url(), &["--latency-ms", "0"]).await?,
    ];
    let (gateway, port) = stack::gateway(
        &nats.url(),
        &redis.url(),
        &["--cache-ttl", "30m", "--key-prefix", "a:"],
    )
    .await?;
    let load = |path: &str, connections: u32| Load {
        connections,
        duration: seconds,
        path: path.to_owned(),
        count_server_errors: false,
    };
    // The runs of a throughput ratio are short and many: this VM's speed moves
    // within seconds, and in rounds of 3 s /healthz against itself came out
    // 0.94–1.10× (the later run of a pair mostly ahead), in rounds of 1 s 0.97–1.05×.
    let round_load = |path: &str| Load {
        duration: round_seconds,
        ..load(path, connections)
    };

    // The throughput ratios alternate the scenario with its baseline (see
    // `load::interleaved`), the hot key's baseline being the table's. First the
    // baseline against itself: how far this machine alone moves a ratio.
    say("noise floor: GET /healthz alternating with itself");
    let noise = load::interleaved(
        port,
        &round_load(r#""/healthz""#),
        |_| round_load(r#""/healthz""#),
        rounds,
    )?;
    check_clean("healthz", &noise.scenario)?;

    say("cache hit, one hot key, in-process tier, alternating with GET /healthz");
    fill(port, 1, 1, |_| {
        "/v1/models/price/predict?product_id=ETH%2FEUR".into()
    })
    .await?;
    let hot = load::interleaved(
        port,
        &round_load(r#""/healthz""#),
        |_| round_load(r#""/v1/models/price/predict?product_id=ETH%2FEUR""#),
        rounds,
    )?;
    let healthz = hot.baseline.clone();
    check_clean("healthz", &healthz)?;
    check_clean("hot key", &hot.scenario)?;
    rows.push(row_from(
        "baseline: GET /healthz",
        &healthz,
        connections,
        None,
        ("", None),
    ));
    let mut noise_row = paired_row(
        "noise floor: GET /healthz against itself",
        &noise,
        connections,
        None,
    );
    // Its latencies are the baseline's again: kept out of the table and chart.
    noise_row.latency_ms = None;
    rows.push(noise_row);
    rows.push(paired_row(
        "cache hit, 1 hot key, in-process tier",
        &hot,
        connections,
        Some(("≥ 0.85×", 0.85)),
    ));

    // Tracing at 1% sampling, against the same hits and misses with tracing
    // off, exporting over OTLP/HTTP to a sink that accepts and drops spans.
    let sink = otlp_sink().await?;
    let (traced_gateway, traced_port) = stack::gateway(
        &nats.url(),
        &redis.url(),
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
    say("cache hit, one hot key: traced at 1% alternating with tracing off");
    let hot_key = r#""/v1/models/price/predict?product_id=ETH%2FEUR""#;
    let traced_hits = load::interleaved_between(
        (port, |_| round_load(hot_key)),
        traced_port,
        |_| round_load(hot_key),
        rounds,
    )?;
    check_clean("traced hits", &traced_hits.scenario)?;
    rows.push(versus_untraced(
        "cache hit, 1 hot key, traced at 1%",
        &traced_hits,
        connections,
    ));
    say("cache miss, distinct inputs: traced at 1% alternating with tracing off");
    let traced_misses = load::interleaved_between(
        (port, |round| {
            round_load(&format!(
                r#""/v1/models/price/predict?product_id=UT{run_id}-{round}-" .. n"#
            ))
        }),
        traced_port,
        |round| {
            round_load(&format!(
                r#""/v1/models/price/predict?product_id=TR{run_id}-{round}-" .. n"#
            ))
        },
        rounds,
    )?;
    check_clean("traced misses", &traced_misses.scenario)?;
    rows.push(versus_untraced(
        "cache miss, distinct inputs, traced at 1%",
        &traced_misses,
        connections,
    ));
    drop(traced_gateway);

    say("cache hit, 10 000 keys, Redis only: warming");
    let (redis_only, redis_port) = stack::gateway(
        &nats.url(),
        &redis.url(),
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
    fill(redis_port, 10_000, 64, |i| {
        format!("/v1/models/price/predict?product_id=K{i}")
    })
    .await?;
    say("cache hit, 10 000 keys, Redis only, alternating with GET /healthz");
    let spread = load::interleaved(
        redis_port,
        &round_load(r#""/healthz""#),
        |_| round_load(r#""/v1/models/price/predict?product_id=K" .. math.random(0, 9999)"#),
        rounds,
    )?;
    check_clean("10k keys", &spread.scenario)?;
    rows.push(paired_row(
        "cache hit, 10 000 keys, Redis only",
        &spread,
        connections,
        Some(("≥ 0.6×", 0.6)),
    ));

    // The same Redis-only hits and misses with the cache in a Redis Cluster of
    // three masters, against the standalone Redis in the same run: first
    // without replicas, like the standalone server, for what the cluster
    // client costs; then the misses again with a replica per master, for what
    // replication adds when every server shares this machine's cores.
    let keys = r#""/v1/models/price/predict?product_id=K" .. math.random(0, 9999)"#;
    let distinct = |tag: &str, round: usize| {
        round_load(&format!(
            r#""/v1/models/price/predict?product_id={tag}{run_id}-{round}-" .. n"#
        ))
    };
    type StartCluster = fn() -> RedisCluster;
    let shapes: [(&str, StartCluster, bool); 2] = [
        ("3 masters", RedisCluster::start_without_replicas, true),
        ("3 masters, a replica each", RedisCluster::start, false),
    ];
    for (index, (shape, start, is_goal)) in shapes.into_iter().enumerate() {
        say(&format!("Redis Cluster ({shape}): warming 10 000 keys"));
        let cluster = start();
        let key_prefix = format!("c{index}:");
        let (_cluster_gateway, cluster_port) = stack::gateway(
            &nats.url(),
            &cluster.urls(),
            &[
                "--redis-mode",
                "cluster",
                "--cache-ttl",
                "30m",
                "--key-prefix",
                &key_prefix,
                "--local-capacity",
                "0",
            ],
        )
        .await?;
        let goal = if is_goal {
            ("≥ 0.9× standalone", Some(0.9))
        } else {
            ("–", None)
        };
        if is_goal {
            fill(cluster_port, 10_000, 64, |i| {
                format!("/v1/models/price/predict?product_id=K{i}")
            })
            .await?;
            say(&format!(
                "cache hit, 10 000 keys: Redis Cluster ({shape}) alternating with standalone Redis"
            ));
            let cluster_hits = load::interleaved_between(
                (redis_port, |_| round_load(keys)),
                cluster_port,
                |_| round_load(keys),
                rounds,
            )?;
            check_clean("cluster hits", &cluster_hits.scenario)?;
            rows.push(versus_standalone(
                &format!("cache hit, 10 000 keys, Redis Cluster ({shape})"),
                &cluster_hits,
                connections,
                goal,
            ));
        }
        say(&format!(
            "cache miss, distinct inputs: Redis Cluster ({shape}) alternating with standalone Redis"
        ));
        let cluster_misses = load::interleaved_between(
            (redis_port, |round| distinct(&format!("S{index}M"), round)),
            cluster_port,
            |round| distinct(&format!("C{index}M"), round),
            rounds,
        )?;
        check_clean("cluster misses", &cluster_misses.scenario)?;
        rows.push(versus_standalone(
            &format!("cache miss, distinct inputs, Redis Cluster ({shape})"),
            &cluster_misses,
            connections,
            goal,
        ));
    }
    drop(redis_only);

    say("cache miss, all inputs distinct, model at 0 ms, alternating with GET /healthz");
    let miss = load::interleaved(
        port,
        &round_load(r#""/healthz""#),
        |round| {
            round_load(&format!(
                r#""/v1/models/price/predict?product_id=M{run_id}-{round}-" .. n"#
            ))
        },
        rounds,
    )?;
    check_clean("misses", &miss.scenario)?;
    rows.push(paired_row(
        "cache miss, distinct inputs, model 0 ms",
        &miss,
        connections,
        Some(("≥ 0.2×", 0.2)),
    ));

    say("NATS floor: a worker asked directly, one request at a time");
    let floor = nats_floor(&nats.url(), run_id, 2_000).await?;
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

    say("cache miss at concurrency 1");
    let miss_one = load::run(
        port,
        &load(
            &format!(r#""/v1/models/price/predict?product_id=S{run_id}-" .. n"#),
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

    say("memory: 100 000 cached keys, then 256 connections");
    fill(port, 100_000, 64, |i| {
        format!("/v1/models/price/predict?product_id=R{run_id}-{i}")
    })
    .await?;
    let wide = load::run(
        port,
        &Load {
            connections: 256,
            duration: seconds,
            path: format!(
                r#""/v1/models/price/predict?product_id=R{run_id}-" .. math.random(0, 99999)"#
            ),
            count_server_errors: false,
        },
    )?;
    check_clean("256 connections", &wide)?;
    rows.push(row_from(
        "cache hit, 100 000 keys, 256 conns",
        &wide,
        256,
        Some(("healthz", &healthz)),
        ("(memory below)", None),
    ));
    let gateway_rss = gateway.peak_rss()?;
    let worker_rss = workers
        .iter()
        .map(|w| w.peak_rss())
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .max()
        .unwrap_or(0);
    memory.push((
        "gateway peak RSS (100 000 keys cached, 256 conns)",
        gateway_rss,
        64u64 << 20,
    ));
    memory.push(("worker peak RSS", worker_rss, 32u64 << 20));
    drop(gateway);
    drop(workers);

    // Stack D: the original demo, the stand-in at 1000 ms.
    let demo_nats = NatsServer::start();
    let demo_redis = RedisServer::start();
    let demo_workers = [
        stack::worker(&demo_nats.url(), &["--latency-ms", "1000"]).await?,
        stack::worker(&demo_nats.url(), &["--latency-ms", "1000"]).await?,
    ];
    let (demo_gateway, demo_port) =
        stack::gateway(&demo_nats.url(), &demo_redis.url(), &[]).await?;
    say("the original demo: 100 sequential requests, model at 1000 ms");
    let http = reqwest::Client::new();
    let mut timings = Vec::new();
    for _ in 0..100 {
        let begun = Instant::now();
        let response = http
            .post(format!("http://127.0.0.1:{demo_port}/predict"))
            .json(&serde_json::json!({"product_id": format!("DEMO-{run_id}")}))
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

    say("stampede: 1000 concurrent identical cold requests");
    let demo_client = async_nats::connect(demo_nats.url()).await?;
    let before = stack::worker_requests(&demo_client).await?;
    let stampede_http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()?;
    let statuses = futures::future::join_all((0..1000).map(|_| {
        stampede_http
            .post(format!("http://127.0.0.1:{demo_port}/predict"))
            .json(&serde_json::json!({"product_id": format!("STAMPEDE-{run_id}")}))
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
    drop(demo_gateway);
    drop(demo_workers);

    // Stack E: scale-out, the stand-in at 100 ms, one prediction at a time per worker.
    let scale_nats = NatsServer::start();
    let scale_redis = RedisServer::start();
    let (scale_gateway, scale_port) = stack::gateway(
        &scale_nats.url(),
        &scale_redis.url(),
        &["--request-timeout", "30s"],
    )
    .await?;
    // Long enough for a few hundred 100 ms calls per worker count.
    let scale_seconds = (seconds * 2).max(Duration::from_secs(10));
    let mut one_worker = None;
    let mut scale_workers = Vec::new();
    // The last run turns the workers' backlog redirects off (a request then waits
    // wherever NATS delivers it), to show in the same run what they are worth.
    let runs = [(1usize, true), (2, true), (4, true), (4, false)];
    for (count, redirects) in runs {
        if !redirects {
            scale_workers.clear();
        }
        while scale_workers.len() < count {
            let mut args = vec!["--latency-ms", "100", "--concurrency", "1"];
            if !redirects {
                args.extend(["--redirect-backlog", "256"]);
            }
            scale_workers.push(stack::worker(&scale_nats.url(), &args).await?);
        }
        // Let the gateway's model directory see the new workers.
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        let variant = if redirects { "" } else { ", redirects off" };
        say(&format!(
            "scale-out: {count} worker(s){variant}, model at 100 ms"
        ));
        let redirected_before = redirected_requests(scale_port).await?;
        let measured = load::run(
            scale_port,
            &Load {
                connections: 16,
                duration: scale_seconds,
                path: format!(
                    r#""/v1/models/price/predict?product_id=W{run_id}-{count}-{redirects}-" .. n"#
                ),
                count_server_errors: false,
            },
        )?;
        check_clean("scale-out", &measured)?;
        let redirected = redirected_requests(scale_port).await? - redirected_before;
        let label = format!("scale-out: {count} worker(s) × concurrency 1, 100 ms model{variant}");
        let mut row = match &one_worker {
            None => row_from(&label, &measured, 16, None, ("", None)),
            Some(base) => row_from(
                &label,
                &measured,
                16,
                Some(("1 worker", base)),
                if count == 4 && redirects {
                    ("≥ 3.6×", Some(3.6))
                } else {
                    ("", None)
                },
            ),
        };
        // Approximate: the requests still in flight at the end were redirected too.
        row.load = format!(
            "16 conns; ~{:.1} redirects per request",
            redirected / measured.requests.max(1) as f64
        );
        rows.push(row);
        if one_worker.is_none() {
            one_worker = Some(measured);
        }
    }
    drop(scale_gateway);
    drop(scale_workers);

    // ONNX models: inference on one core, and dynamic batching in the worker.
    rows.extend(inference::scenarios(seconds, &say).await?);

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
         Load: `wrk -t1 -c<conns> -d{}s` per run (scale-out: {}s, 16 connections), every scenario against a\n\
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
        seconds.as_secs(),
        (seconds * 2).max(Duration::from_secs(10)).as_secs(),
        rounds,
        round_seconds.as_secs(),
        started.elapsed().as_secs_f64(),
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

#[cfg(test)]
mod tests {
    use super::load::{Measured, Paired};

    fn run_of(requests: u64) -> Measured {
        Measured {
            requests,
            duration_us: 1_000_000,
            errors: 0,
            status_errors: 0,
            server_errors: 0,
            p50_us: 1.0,
            p90_us: 1.0,
            p99_us: 1.0,
            max_us: 1.0,
        }
    }

    #[test]
    fn a_paired_row_gives_the_ratio_over_all_runs_and_the_range_of_the_rounds() {
        let paired = Paired {
            baseline: run_of(300),
            scenario: run_of(240),
            round_ratios: vec![0.9, 0.7, 0.8],
        };
        assert_eq!(paired.round_ratio_range(), (0.7, 0.9));
        let row = super::paired_row("s", &paired, 64, Some(("≥ 0.85×", 0.85)));
        assert_eq!(row.ratio, Some(0.8));
        assert_eq!(row.met, Some(false));
        assert!(
            row.baseline.ends_with("; rounds 0.70–0.90×"),
            "{}",
            row.baseline
        );
    }
}
