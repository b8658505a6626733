//! The hit path against nginx: what a team would put in front of a slow model
//! API instead, nginx's `proxy_cache` keyed on the POST body with
//! `proxy_cache_lock on` and its access log buffered (as a user would set it
//! up), in front of the same model, against the gateway's hot-key hit on
//! `POST /predict`: throughput alternating rounds, and the median latency at
//! one request at a time.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::floor;
use crate::load::{self, Load, Paired, RequestBody};
use crate::report::{Row, versus};
use crate::settings::Run;
use crate::stack::{Process, System};
use crate::traffic::check_clean;

const BODY: &str = r#"{"product_id":"ETH/EUR"}"#;

/// nginx from Debian (`apt-get install nginx-light`), wherever it is.
fn nginx_binary() -> anyhow::Result<PathBuf> {
    for candidate in ["/usr/sbin/nginx", "/usr/bin/nginx"] {
        if Path::new(candidate).is_file() {
            return Ok(candidate.into());
        }
    }
    bail!(
        "nginx is not installed: apt-get install -y nginx-light (make bench does this when run as root)"
    )
}

/// nginx caching `POST /predict` of the gateway on `upstream`, listening on
/// `port`, its files in a folder of its own.
fn start_nginx(upstream: u16, port: u16) -> anyhow::Result<(Process, PathBuf)> {
    let dir = std::env::temp_dir().join(format!("bench-nginx-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("cache"))?;
    let d = dir.display();
    let config = format!(
        r#"worker_processes auto;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log {d}/access.log combined buffer=64k flush=1s;
  proxy_cache_path {d}/cache levels=1:2 keys_zone=predictions:10m max_size=100m inactive=10m use_temp_path=off;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  upstream model {{ server 127.0.0.1:{upstream}; keepalive 32; }}
  server {{
    listen 127.0.0.1:{port};
    client_body_buffer_size 16k;
    location / {{
      proxy_cache predictions;
      proxy_cache_methods POST;
      proxy_cache_key "$request_uri|$request_body";
      proxy_cache_lock on;
      proxy_cache_valid 200 60s;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      add_header X-Cache-Status $upstream_cache_status;
      proxy_pass http://model;
    }}
  }}
}}
"#
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, config)?;
    let mut command = Command::new(nginx_binary()?);
    command
        .arg("-p")
        .arg(&dir)
        .arg("-c")
        .arg(&path)
        .args(["-g", "daemon off;"]);
    Ok((Process::spawn(command)?, dir))
}

pub async fn rows(run: &Run, system: &System) -> anyhow::Result<Vec<Row>> {
    let nginx_port = test_support::free_port();
    let (nginx, dir) = start_nginx(system.port, nginx_port)?;
    let http = reqwest::Client::new();
    // nginx's first answer is its miss; the gateway's is warm from the
    // other scenarios, or from this.
    let mut cached = false;
    for _ in 0..100 {
        let answer = http
            .post(format!("http://127.0.0.1:{nginx_port}/predict"))
            .header("content-type", "application/json")
            .body(BODY)
            .send()
            .await;
        if let Ok(answer) = answer
            && answer
                .headers()
                .get("x-cache-status")
                .is_some_and(|status| status == "HIT")
        {
            cached = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if !cached {
        bail!(
            "nginx never answered from its cache (see {})",
            dir.display()
        );
    }
    // The floor replays the gateway's own hit, byte for byte but for the date
    // and length hyper writes itself.
    let hit = http
        .post(format!("http://127.0.0.1:{}/predict", system.port))
        .header("content-type", "application/json")
        .body(BODY)
        .send()
        .await?;
    let mut headers = hit.headers().clone();
    headers.remove("date");
    headers.remove("content-length");
    let recorded = floor::Recorded {
        status: hit.status(),
        headers,
        body: hit.bytes().await?,
    };
    let floor_port = test_support::free_port();
    floor::serve(
        floor_port,
        prediction_runtime::http_server::default_connection_threads(),
        recorded,
    )?;
    let body = RequestBody::new("nginx-predict", BODY.as_bytes(), "application/json", &[])?;
    // As the comparison was first measured: `wrk -t2 -c32`, one prepared request.
    let post = |threads: u32, connections: u32, duration: Duration| Load {
        connections,
        duration,
        threads,
        prepared: true,
        path: r#""/predict""#.into(),
        count_server_errors: false,
        cpus: None,
        body: Some(body.clone()),
    };

    // Each load alternates nginx's rounds with those of `port`.
    let against_nginx = |port: u16, load: &Load| {
        load::interleaved_between(
            (nginx_port, |_| load.clone()),
            port,
            |_| load.clone(),
            run.rounds,
        )
    };
    let load = post(2, 32, run.round_seconds);
    let single = post(1, 1, run.round_seconds.max(Duration::from_secs(2)));

    run.say("cache hit, hot key, POST /predict: the gateway alternating with nginx's proxy_cache");
    let paired = against_nginx(system.port, &load)?;
    check_clean("gateway", &paired.scenario)?;
    check_clean("nginx", &paired.baseline)?;
    let mut rows = vec![versus(
        "cache hit, hot key, POST /predict, against nginx proxy_cache",
        &paired,
        32,
        "nginx proxy_cache",
        ("≥ 1.1×", Some(1.1)),
    )];

    run.say("cache hit, hot key, POST /predict, one request at a time: the gateway alternating with nginx");
    rows.push(one_connection_row(
        "cache hit, hot key, POST /predict, 1 connection, against nginx",
        &against_nginx(system.port, &single)?,
        true,
    ));

    // One request at a time, a round trip is mostly two wake-ups, and on a
    // virtual machine waking an idle core is dear: where the scheduler puts
    // the server, beside wrk or apart, weighs more than what the server does.
    // Pinned alike, the two compare on their own work.
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    if cores >= 2 {
        let servers: Vec<u32> = std::iter::once(system.gateway.pid())
            .chain(nginx_workers(nginx.pid())?)
            .collect();
        for (wrk_core, server_core, placement) in [
            ("0", "1", "wrk on core 0, gateway and nginx on core 1"),
            ("0", "0", "wrk, gateway and nginx on core 0"),
        ] {
            run.say(&format!(
                "one request at a time, {placement}: the gateway alternating with nginx"
            ));
            pin(&servers, server_core)?;
            let pinned = Load {
                cpus: Some(wrk_core.into()),
                ..single.clone()
            };
            let paired = against_nginx(system.port, &pinned);
            pin(&servers, &format!("0-{}", cores - 1))?;
            rows.push(one_connection_row(
                &format!(
                    "cache hit, hot key, POST /predict, 1 connection, {placement}, against nginx"
                ),
                &paired?,
                false,
            ));
        }
    }

    run.say("hyper alone (the floor), the gateway's hit replayed: alternating with nginx, 32 connections, then 1");
    let floor_paired = against_nginx(floor_port, &load)?;
    check_clean("hyper floor", &floor_paired.scenario)?;
    rows.push(versus(
        "hyper alone, the same answer replayed (the floor), against nginx proxy_cache",
        &floor_paired,
        32,
        "nginx proxy_cache",
        ("reported", None),
    ));
    rows.push(one_connection_row(
        "hyper alone, the same answer replayed (the floor), 1 connection, against nginx",
        &against_nginx(floor_port, &single)?,
        false,
    ));
    let _ = std::fs::remove_dir_all(&dir).context("removing nginx's folder");
    Ok(rows)
}

/// Pins every thread of each of `pids` to `cores` (a `taskset -c` list).
fn pin(pids: &[u32], cores: &str) -> anyhow::Result<()> {
    for pid in pids {
        let status = Command::new("taskset")
            .args(["-a", "-p", "-c", cores, &pid.to_string()])
            .stdout(std::process::Stdio::null())
            .status()
            .context("running taskset (util-linux)")?;
        if !status.success() {
            bail!("taskset could not pin process {pid} to cores {cores}");
        }
    }
    Ok(())
}

/// nginx's worker processes: the children of its master process.
fn nginx_workers(master: u32) -> anyhow::Result<Vec<u32>> {
    let children = std::fs::read_to_string(format!("/proc/{master}/task/{master}/children"))
        .context("reading nginx's worker processes")?;
    Ok(children
        .split_whitespace()
        .filter_map(|pid| pid.parse().ok())
        .collect())
}

/// The row of a one-connection run against nginx: its latency next to
/// nginx's, with the goal of a median no slower than nginx's when `goal`.
fn one_connection_row(scenario: &str, paired: &Paired, goal: bool) -> Row {
    let nginx = &paired.baseline;
    let mut row = versus(
        scenario,
        paired,
        1,
        "nginx proxy_cache",
        (if goal { "p50 ≤ nginx's" } else { "reported" }, None),
    );
    row.baseline = format!(
        "nginx proxy_cache: p50 {:.3} ms, {:.0} req/s",
        nginx.p50_us / 1000.0,
        nginx.throughput()
    );
    row.met = goal.then_some(paired.scenario.p50_us <= nginx.p50_us);
    row
}
