//! `bench callgrind` (`make callgrind`): the gateway's instructions per request,
//! counted by valgrind's callgrind, for `/healthz`, a hot-key hit, a Redis-only
//! hit and a miss.
//!
//! Instruction counts, unlike throughput, repeat to within a fraction of a percent
//! for the same binary and inputs, whatever else the machine does: they tell
//! whether a change made a path cheaper or dearer where the throughput ratios of
//! `make bench` move by a few hundredths from run to run. The gateway runs under
//! callgrind; its counters are zeroed before each scenario and dumped after it
//! (`callgrind_control -z`, `-d`), and the total is divided by the requests sent.
//! Settings: `CALLGRIND_REQUESTS` (per scenario, default 2000), `CALLGRIND_OUT_DIR`
//! (keep the dumps there, for `callgrind_annotate`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use test_support::{NatsServer, RedisServer};

use crate::stack;

/// Requests in flight at once: enough to keep the gateway busy, as under load.
const CONCURRENCY: usize = 8;

/// One scenario's count.
struct Counted {
    scenario: &'static str,
    instructions_per_request: f64,
}

pub async fn run() -> anyhow::Result<()> {
    for tool in ["valgrind", "callgrind_control"] {
        if Command::new(tool).arg("--version").output().is_err() {
            bail!("{tool} is not installed: apt-get install -y valgrind");
        }
    }
    let requests = crate::settings::env_number("CALLGRIND_REQUESTS", 2_000) as usize;
    let run_id = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis();
    // CALLGRIND_OUT_DIR keeps the dumps, for `callgrind_annotate`.
    let kept = std::env::var_os("CALLGRIND_OUT_DIR").map(std::path::PathBuf::from);
    let out_dir = kept
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("bench-callgrind-{run_id}")));
    std::fs::create_dir_all(&out_dir)?;
    let nats = NatsServer::start();
    let redis = RedisServer::start();
    let _workers = [
        stack::worker(&nats.url(), &["--latency-ms", "0"]).await?,
        stack::worker(&nats.url(), &["--latency-ms", "0"]).await?,
    ];
    let mut counted = Vec::new();

    eprintln!("gateway under callgrind: /healthz, hot-key hits, misses");
    {
        let gateway =
            Callgrind::start(&out_dir, "a", &nats, &redis, &["--local-capacity", "10000"]).await?;
        gateway.send(200, |_| "/healthz".into()).await?;
        counted.push(
            gateway
                .count("GET /healthz", requests, |_| "/healthz".into())
                .await?,
        );
        let hot = "/v1/models/price/predict?product_id=ETH%2FEUR".to_owned();
        gateway.send(100, |_| hot.clone()).await?;
        counted.push(
            gateway
                .count("cache hit, 1 hot key, in-process tier", requests, |_| {
                    hot.clone()
                })
                .await?,
        );
        counted.push(
            gateway
                .count("cache miss, distinct inputs, model 0 ms", requests, |i| {
                    format!("/v1/models/price/predict?product_id=M{run_id}-{i}")
                })
                .await?,
        );
    }
    eprintln!("gateway under callgrind without its in-process tier: Redis-only hits");
    {
        let gateway =
            Callgrind::start(&out_dir, "b", &nats, &redis, &["--local-capacity", "0"]).await?;
        let path = |i: usize| format!("/v1/models/price/predict?product_id=K{run_id}-{}", i % 1000);
        gateway.send(1000, path).await?;
        counted.push(
            gateway
                .count("cache hit, 1 000 keys, Redis only", requests, path)
                .await?,
        );
    }
    if kept.is_none() {
        let _ = std::fs::remove_dir_all(&out_dir);
    }

    println!("| scenario | gateway instructions per request |");
    println!("|---|---:|");
    for row in &counted {
        println!("| {} | {:.0} |", row.scenario, row.instructions_per_request);
    }
    println!(
        "\n{requests} requests per scenario, {CONCURRENCY} at a time; `make callgrind` (valgrind {})",
        crate::report::version_of("valgrind", "--version")
    );
    Ok(())
}

/// A gateway running under callgrind.
struct Callgrind {
    process: stack::Process,
    port: u16,
    out_file: PathBuf,
}

impl Callgrind {
    async fn start(
        out_dir: &Path,
        name: &str,
        nats: &NatsServer,
        redis: &RedisServer,
        args: &[&str],
    ) -> anyhow::Result<Self> {
        let out_file = out_dir.join(format!("{name}.out"));
        let out_arg = format!("--callgrind-out-file={}", out_file.display());
        let prefix = format!("callgrind-{name}:");
        // No rescan of the workers' service info during a count: each is a burst
        // of work on a timer, which would land in whichever count it fell in.
        let mut gateway_args = vec![
            "--cache-ttl",
            "30m",
            "--discovery-interval",
            "1h",
            "--key-prefix",
            &prefix,
        ];
        gateway_args.extend_from_slice(args);
        let (process, port) = stack::gateway_wrapped(
            &["valgrind", "--tool=callgrind", &out_arg],
            &nats.url(),
            &redis.url(),
            &gateway_args,
        )
        .await?;
        Ok(Self {
            process,
            port,
            out_file,
        })
    }

    /// Sends `count` GET requests for the paths `path` makes, [`CONCURRENCY`] at
    /// a time; every one must succeed.
    async fn send(&self, count: usize, path: impl Fn(usize) -> String) -> anyhow::Result<()> {
        crate::traffic::fill(self.port, count, CONCURRENCY, path).await
    }

    /// The gateway's instructions per request over `count` requests.
    async fn count(
        &self,
        scenario: &'static str,
        count: usize,
        path: impl Fn(usize) -> String,
    ) -> anyhow::Result<Counted> {
        self.control("-z")?;
        self.send(count, path).await?;
        let before = self.dumps()?;
        self.control("-d")?;
        let total = self.newest_total(before.len()).await?;
        eprintln!(
            "  {scenario}: {:.0} per request",
            total as f64 / count as f64
        );
        Ok(Counted {
            scenario,
            instructions_per_request: total as f64 / count as f64,
        })
    }

    fn control(&self, option: &str) -> anyhow::Result<()> {
        let status = Command::new("callgrind_control")
            .args([option, &self.process.pid().to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .context("running callgrind_control")?;
        if !status.success() {
            bail!("callgrind_control {option} failed");
        }
        Ok(())
    }

    /// The dump files written so far (`<out>.1`, `<out>.2`, ...).
    fn dumps(&self) -> anyhow::Result<Vec<PathBuf>> {
        let name = self
            .out_file
            .file_name()
            .context("an out file name")?
            .to_string_lossy()
            .into_owned();
        let dir = self.out_file.parent().context("an out folder")?;
        let mut dumps: Vec<PathBuf> = std::fs::read_dir(dir)?
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .filter(|path| {
                path.file_name()
                    .and_then(|file| file.to_str())
                    .and_then(|file| file.strip_prefix(&name))
                    .is_some_and(|rest| rest.starts_with('.'))
            })
            .collect();
        dumps.sort();
        Ok(dumps)
    }

    /// The `totals:` of the dump after the first `known` ones, once written.
    async fn newest_total(&self, known: usize) -> anyhow::Result<u64> {
        let started = Instant::now();
        loop {
            let dumps = self.dumps()?;
            if dumps.len() > known {
                let newest = dumps.iter().max_by_key(|path| dump_number(path));
                if let Some(newest) = newest
                    && let Ok(text) = std::fs::read_to_string(newest)
                    && let Some(total) = text
                        .lines()
                        .find_map(|line| line.strip_prefix("totals:"))
                        .and_then(|total| total.trim().parse().ok())
                {
                    return Ok(total);
                }
            }
            if started.elapsed() > Duration::from_secs(60) {
                bail!("callgrind wrote no dump");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The number a dump file ends with (`a.out.3` → 3).
fn dump_number(path: &Path) -> u64 {
    path.extension()
        .and_then(|ext| ext.to_str())
        .and_then(|ext| ext.parse().ok())
        .unwrap_or(0)
}
