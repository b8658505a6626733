//! The run's settings, from the environment, and what every scenario group
//! shares of it: the loads it runs and how it reports progress.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::load::Load;

/// A number from the environment variable `name`, else `default`.
pub fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One run of the bench.
#[derive(Debug)]
pub struct Run {
    /// `BENCH_SECONDS`: each single wrk run.
    pub seconds: Duration,
    /// `BENCH_ROUNDS`: how many times a throughput ratio alternates its
    /// scenario with its baseline.
    pub rounds: usize,
    /// `BENCH_ROUND_SECONDS`: each of those runs. The runs of a ratio are short
    /// and many: this VM's speed moves within seconds, and in rounds of 3 s
    /// /healthz against itself came out 0.94–1.10× (the later run of a pair
    /// mostly ahead), in rounds of 1 s 0.97–1.05×.
    pub round_seconds: Duration,
    /// `BENCH_CONNECTIONS`.
    pub connections: u32,
    /// Makes this run's inputs distinct from any earlier run's.
    pub id: u128,
    started: Instant,
}

impl Run {
    pub fn from_env() -> anyhow::Result<Self> {
        Ok(Self {
            seconds: Duration::from_secs(env_number("BENCH_SECONDS", 3)),
            rounds: env_number("BENCH_ROUNDS", 15) as usize,
            round_seconds: Duration::from_secs(env_number("BENCH_ROUND_SECONDS", 1)),
            connections: env_number("BENCH_CONNECTIONS", 64) as u32,
            id: SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis(),
            started: Instant::now(),
        })
    }

    /// Progress on stderr, with the time since the run began.
    pub fn say(&self, text: &str) {
        eprintln!("[{:>5.1}s] {text}", self.elapsed().as_secs_f64());
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// A wrk load of `path` (a Lua expression) for `BENCH_SECONDS`.
    pub fn load(&self, path: &str, connections: u32) -> Load {
        Load {
            connections,
            duration: self.seconds,
            threads: 1,
            prepared: false,
            path: path.to_owned(),
            count_server_errors: false,
            cpus: None,
            body: None,
        }
    }

    /// A round of a throughput ratio: `path` for `BENCH_ROUND_SECONDS` at
    /// `BENCH_CONNECTIONS`.
    pub fn round_load(&self, path: &str) -> Load {
        Load {
            duration: self.round_seconds,
            ..self.load(path, self.connections)
        }
    }

    /// A round of distinct inputs (misses): `product_id` made of `tag`, this
    /// run, the round and a counter.
    pub fn distinct_round(&self, tag: &str, round: usize) -> Load {
        self.round_load(&format!(
            r#""/v1/models/price/predict?product_id={tag}{}-{round}-" .. n"#,
            self.id
        ))
    }
}
