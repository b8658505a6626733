//! The system under test: release binaries of the gateway and workers, in front of
//! a nats-server and a redis-server of the benchmark's own.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// The folder holding the release binaries (the benchmark's own folder).
fn release_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the bench binary")?;
    Ok(exe
        .parent()
        .context("the bench binary has a folder")?
        .to_path_buf())
}

fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let path = release_dir()?.join(name);
    if !path.is_file() {
        bail!(
            "{} is missing: run `make bench`, which builds it",
            path.display()
        );
    }
    Ok(path)
}

/// A running process, killed on drop.
#[derive(Debug)]
pub struct Process {
    child: Child,
}

impl Process {
    /// Runs `command` (its output discarded) until dropped.
    pub fn spawn(mut command: Command) -> anyhow::Result<Self> {
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {:?}", command.get_program()))?;
        Ok(Self { child })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Peak resident memory so far (`VmHWM`), in bytes.
    pub fn peak_rss(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        let line = status
            .lines()
            .find(|line| line.starts_with("VmHWM:"))
            .context("VmHWM in /proc status")?;
        let kib: u64 = line
            .split_whitespace()
            .nth(1)
            .context("a VmHWM value")?
            .parse()?;
        Ok(kib * 1024)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // SIGTERM first so the process stops cleanly, then make sure.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts one of the release binaries with `args`, its logs discarded; under
/// `wrapper` (a command and its arguments, such as valgrind's) if one is given.
fn spawn_wrapped(
    wrapper: &[&str],
    name: &str,
    args: &[&std::ffi::OsStr],
) -> anyhow::Result<Process> {
    let binary = binary(name)?;
    let mut command = match wrapper.split_first() {
        Some((program, wrapper_args)) => {
            let mut command = Command::new(program);
            command.args(wrapper_args).arg(&binary);
            command
        }
        None => Command::new(&binary),
    };
    let child = command
        .args(args)
        .env(
            "RUST_LOG",
            std::env::var("BENCH_RUST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting the {name}"))?;
    Ok(Process { child })
}

fn spawn(name: &str, args: &[&std::ffi::OsStr]) -> anyhow::Result<Process> {
    spawn_wrapped(&[], name, args)
}

/// Starts a gateway on a free port and waits until it answers `/healthz`.
pub async fn gateway(
    nats_url: &str,
    redis_url: &str,
    args: &[&str],
) -> anyhow::Result<(Process, u16)> {
    gateway_wrapped(&[], nats_url, redis_url, args).await
}

/// [`gateway`], run under `wrapper` (see [`spawn_wrapped`]).
pub async fn gateway_wrapped(
    wrapper: &[&str],
    nats_url: &str,
    redis_url: &str,
    args: &[&str],
) -> anyhow::Result<(Process, u16)> {
    let port = test_support::free_port();
    let listen = format!("127.0.0.1:{port}");
    let argv: Vec<&std::ffi::OsStr> = [
        "--listen",
        &listen,
        "--nats-url",
        nats_url,
        "--redis-url",
        redis_url,
    ]
    .into_iter()
    .chain(args.iter().copied())
    .map(std::ffi::OsStr::new)
    .collect();
    let process = spawn_wrapped(wrapper, "gateway", &argv)?;
    let http = reqwest::Client::new();
    let started = Instant::now();
    while http
        .get(format!("http://127.0.0.1:{port}/healthz"))
        .send()
        .await
        .is_err()
    {
        // Under valgrind a start takes many seconds.
        if started.elapsed() > Duration::from_secs(if wrapper.is_empty() { 10 } else { 120 }) {
            bail!("the gateway did not start");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok((process, port))
}

/// Starts a worker and waits until it serves.
pub async fn worker(nats_url: &str, args: &[&str]) -> anyhow::Result<Process> {
    static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let id_file = std::env::temp_dir().join(format!(
        "bench-worker-{}-{}.id",
        std::process::id(),
        COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    ));
    let _ = std::fs::remove_file(&id_file);
    let mut argv: Vec<&std::ffi::OsStr> = ["--nats-url", nats_url, "--id-file"]
        .into_iter()
        .map(std::ffi::OsStr::new)
        .collect();
    argv.push(id_file.as_os_str());
    argv.extend(args.iter().map(std::ffi::OsStr::new));
    let process = spawn("worker", &argv)?;
    let started = Instant::now();
    while !id_file.exists() {
        if started.elapsed() > Duration::from_secs(10) {
            bail!("a worker did not start");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = std::fs::remove_file(&id_file);
    Ok(process)
}

/// Total requests the workers of `nats` have answered, from `$SRV.STATS`.
pub async fn worker_requests(nats: &async_nats::Client) -> anyhow::Result<u64> {
    use futures::StreamExt;
    let inbox = nats.new_inbox();
    let mut replies = nats.subscribe(inbox.clone()).await?;
    nats.publish_with_reply("$SRV.STATS.prediction-worker", inbox, "".into())
        .await?;
    let mut total = 0;
    while let Ok(Some(reply)) =
        tokio::time::timeout(Duration::from_millis(300), replies.next()).await
    {
        let stats: serde_json::Value = serde_json::from_slice(&reply.payload)?;
        for endpoint in stats["endpoints"].as_array().into_iter().flatten() {
            total += endpoint["num_requests"].as_u64().unwrap_or(0);
        }
    }
    Ok(total)
}

/// What most scenarios share: NATS, Redis, two workers of the stand-in at 0 ms,
/// and a gateway with a long TTL (key prefix `a:`).
#[derive(Debug)]
pub struct System {
    pub nats: test_support::NatsServer,
    pub redis: test_support::RedisServer,
    pub workers: [Process; 2],
    pub gateway: Process,
    pub port: u16,
}

impl System {
    pub async fn start() -> anyhow::Result<Self> {
        let nats = test_support::NatsServer::start();
        let redis = test_support::RedisServer::start();
        let workers = [
            worker(&nats.url(), &["--latency-ms", "0"]).await?,
            worker(&nats.url(), &["--latency-ms", "0"]).await?,
        ];
        let (gateway, port) = gateway(
            &nats.url(),
            &redis.url(),
            &["--cache-ttl", "30m", "--key-prefix", "a:"],
        )
        .await?;
        Ok(Self {
            nats,
            redis,
            workers,
            gateway,
            port,
        })
    }
}
