//! Load from wrk, the HTTP benchmarking tool from the distribution, driven by a
//! Lua script that builds each request (or prepares one for all) and reports
//! its latency percentiles as JSON.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;

/// What one wrk run measured.
#[derive(Debug, Clone, Deserialize)]
pub struct Measured {
    pub requests: u64,
    pub duration_us: u64,
    /// Connect, read, write and timeout errors.
    pub errors: u64,
    /// Responses with a status >= 400.
    pub status_errors: u64,
    /// Responses with a 5xx status, counted only when [`Load::count_server_errors`].
    #[serde(default)]
    pub server_errors: u64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
}

impl Measured {
    pub fn throughput(&self) -> f64 {
        self.requests as f64 / (self.duration_us as f64 / 1e6)
    }

    /// Several runs of one load as one: requests, time and errors summed (so the
    /// throughput is over all of them), latency percentiles the median of the
    /// runs' (percentiles of separate runs cannot be merged exactly), the
    /// maximum the largest.
    pub fn combine(runs: &[Measured]) -> Measured {
        let median = |pick: fn(&Measured) -> f64| {
            let mut values: Vec<f64> = runs.iter().map(pick).collect();
            values.sort_by(f64::total_cmp);
            values[values.len() / 2]
        };
        Measured {
            requests: runs.iter().map(|r| r.requests).sum(),
            duration_us: runs.iter().map(|r| r.duration_us).sum(),
            errors: runs.iter().map(|r| r.errors).sum(),
            status_errors: runs.iter().map(|r| r.status_errors).sum(),
            server_errors: runs.iter().map(|r| r.server_errors).sum(),
            p50_us: median(|r| r.p50_us),
            p90_us: median(|r| r.p90_us),
            p99_us: median(|r| r.p99_us),
            max_us: runs.iter().map(|r| r.max_us).fold(0.0, f64::max),
        }
    }
}

/// A scenario measured alternately with its baseline (see [`interleaved`]).
#[derive(Debug, Clone)]
pub struct Paired {
    pub baseline: Measured,
    pub scenario: Measured,
    /// Each round's scenario throughput over that of the baseline run just
    /// before it: their spread shows how far the machine's speed moved while
    /// the ratio was measured.
    pub round_ratios: Vec<f64>,
}

impl Paired {
    /// The lowest and the highest of the rounds' ratios.
    pub fn round_ratio_range(&self) -> (f64, f64) {
        self.round_ratios
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(low, high), &ratio| {
                (low.min(ratio), high.max(ratio))
            })
    }
}

/// Runs a scenario and its baseline alternately (baseline, scenario, baseline,
/// ...), `rounds` times each, and returns both combined (see
/// [`Measured::combine`]) with each round's ratio. On a shared machine whose
/// speed drifts over seconds, a baseline measured once, earlier, would credit or
/// blame the scenario for the drift; alternating puts both through the same
/// stretch. `scenario` gets the round number, for loads whose requests must
/// differ from one run to the next.
pub fn interleaved(
    port: u16,
    baseline: &Load,
    scenario: impl Fn(usize) -> Load,
    rounds: usize,
) -> anyhow::Result<Paired> {
    interleaved_between((port, |_| baseline.clone()), port, scenario, rounds)
}

/// [`interleaved`], with the baseline measured on one gateway and the scenario
/// on another (the same load against two deployments, say).
pub fn interleaved_between(
    (baseline_port, baseline): (u16, impl Fn(usize) -> Load),
    port: u16,
    scenario: impl Fn(usize) -> Load,
    rounds: usize,
) -> anyhow::Result<Paired> {
    let mut baselines = Vec::with_capacity(rounds);
    let mut scenarios = Vec::with_capacity(rounds);
    for round in 0..rounds.max(1) {
        baselines.push(run(baseline_port, &baseline(round))?);
        scenarios.push(run(port, &scenario(round))?);
    }
    Ok(Paired {
        round_ratios: baselines
            .iter()
            .zip(&scenarios)
            .map(|(baseline, scenario)| scenario.throughput() / baseline.throughput())
            .collect(),
        baseline: Measured::combine(&baselines),
        scenario: Measured::combine(&scenarios),
    })
}

/// How a run's requests are made.
#[derive(Debug, Clone)]
pub struct Load {
    pub connections: u32,
    pub duration: Duration,
    /// wrk's threads (`-t`).
    pub threads: u32,
    /// Every request the same, prepared once by wrk (its plain mode, as a load
    /// test of one URL is usually run), rather than made by Lua for each
    /// request: `path` is evaluated once. wrk then spends less per request,
    /// so more of the machine's two cores measure the server.
    pub prepared: bool,
    /// A Lua expression for the request path, evaluated per request; `n` counts
    /// this thread's requests (so `"/p?k=" .. n` makes every request distinct).
    pub path: String,
    /// Count 5xx responses apart from 4xx ones (slows wrk a little: it then looks
    /// at every response).
    pub count_server_errors: bool,
    /// The cores wrk runs on (`taskset -c`'s list); `None`: any.
    pub cpus: Option<String>,
    /// A body: the requests are `POST`s of it (else `GET`s).
    pub body: Option<RequestBody>,
}

/// The body of every request of a run, from a file (it may be binary), and
/// the headers that go with it.
#[derive(Debug, Clone)]
pub struct RequestBody {
    pub file: std::path::PathBuf,
    pub headers: Vec<(String, String)>,
}

impl RequestBody {
    /// `body` written to a file of the bench's, with `content_type` and any
    /// other `headers`.
    pub fn new(
        name: &str,
        body: &[u8],
        content_type: &str,
        headers: &[(&str, String)],
    ) -> anyhow::Result<Self> {
        let file = std::env::temp_dir().join(format!("bench-{}-{name}.body", std::process::id()));
        std::fs::write(&file, body)?;
        let mut all = vec![("Content-Type".to_owned(), content_type.to_owned())];
        all.extend(
            headers
                .iter()
                .map(|(name, value)| ((*name).to_owned(), value.clone())),
        );
        Ok(Self { file, headers: all })
    }
}

/// Runs wrk against `port` and returns what it measured.
pub fn run(port: u16, load: &Load) -> anyhow::Result<Measured> {
    let counting = if load.count_server_errors {
        r#"
local threads = {}
setup = function(thread) table.insert(threads, thread) end
server_errors = 0
response = function(status, headers, body)
  if status >= 500 then server_errors = server_errors + 1 end
end
local function all_server_errors()
  local sum = 0
  for _, thread in ipairs(threads) do sum = sum + tonumber(thread:get("server_errors")) end
  return sum
end
"#
    } else {
        ""
    };
    let server_errors = if load.count_server_errors {
        "all_server_errors()"
    } else {
        "0"
    };
    let (prelude, request) = match &load.body {
        Some(body) => {
            let headers: Vec<String> = body
                .headers
                .iter()
                .map(|(name, value)| format!("[\"{name}\"] = \"{value}\""))
                .collect();
            (
                format!(
                    "local file = io.open(\"{}\", \"rb\")\nlocal body = file:read(\"*a\")\nfile:close()\nlocal headers = {{{}}}",
                    body.file.display(),
                    headers.join(", ")
                ),
                format!(r#"wrk.format("POST", {}, headers, body)"#, load.path),
            )
        }
        None => (
            "local headers = {}\nlocal body = nil".to_owned(),
            format!(r#"wrk.format("GET", {})"#, load.path),
        ),
    };
    // Prepared: wrk's own request, set once, with no `request` function.
    let request = if load.prepared {
        let method = if load.body.is_some() { "POST" } else { "GET" };
        format!(
            "wrk.method = \"{method}\"\nwrk.path = {}\nwrk.body = body\nfor name, value in pairs(headers) do wrk.headers[name] = value end",
            load.path
        )
    } else {
        format!("request = function()\n  n = n + 1\n  return {request}\nend")
    };
    let script = format!(
        r#"
math.randomseed(os.time())
local n = 0
{prelude}
{counting}
{request}
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRKJSON {{"requests":%d,"duration_us":%d,"errors":%d,"status_errors":%d,"server_errors":%d,"p50_us":%f,"p90_us":%f,"p99_us":%f,"max_us":%f}}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status, {server_errors},
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"#
    );
    let script_path = std::env::temp_dir().join(format!("bench-{}.lua", std::process::id()));
    std::fs::write(&script_path, script)?;
    let mut command = match &load.cpus {
        Some(cpus) => {
            let mut taskset = Command::new("taskset");
            taskset.args(["-c", cpus, "wrk"]);
            taskset
        }
        None => Command::new("wrk"),
    };
    let output = command
        .args([
            &format!("-t{}", load.threads.max(1)),
            &format!("-c{}", load.connections.max(load.threads)),
            &format!("-d{}s", load.duration.as_secs().max(1)),
            "--timeout",
            "10s",
            "-s",
        ])
        .arg(&script_path)
        .arg(format!("http://127.0.0.1:{port}"))
        .output()
        .context("running wrk (apt-get install wrk)")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let Some(json) = stdout
        .lines()
        .find_map(|line| line.strip_prefix("WRKJSON "))
    else {
        bail!(
            "wrk printed no result:\n{stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    Ok(serde_json::from_str(json)?)
}
