//! A real Prometheus server for tests, scraping the targets a test names every
//! second, and its HTTP query API.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::{ServerProcess, binary, temp_dir};

/// How often the test Prometheus scrapes.
pub const SCRAPE_INTERVAL: Duration = Duration::from_secs(1);

/// How long Prometheus may take to be ready once it listens.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The status `GET /-/ready` answers with, if it answers.
fn ready_status(port: u16) -> Option<u16> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream
        .write_all(b"GET /-/ready HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .ok()?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply).ok()?;
    reply.split_whitespace().nth(1)?.parse().ok()
}

/// `prometheus` on a free port, keeping its data in a temporary folder.
#[derive(Debug)]
pub struct PrometheusServer {
    dir: PathBuf,
    process: ServerProcess,
}

impl PrometheusServer {
    /// Starts one scraping, for each job name, its targets (`host:port`, each
    /// serving `/metrics`).
    pub fn start(jobs: &[(&str, Vec<String>)]) -> Self {
        let dir = temp_dir("prometheus");
        let config = dir.join("prometheus.yml");
        let mut text = format!(
            "global:\n  scrape_interval: {interval}s\n  evaluation_interval: {interval}s\nscrape_configs:\n",
            interval = SCRAPE_INTERVAL.as_secs()
        );
        for (job, targets) in jobs {
            let targets = targets
                .iter()
                .map(|target| format!("'{target}'"))
                .collect::<Vec<_>>()
                .join(", ");
            text.push_str(&format!(
                "  - job_name: '{job}'\n    static_configs:\n      - targets: [{targets}]\n"
            ));
        }
        std::fs::write(&config, text).expect("writing prometheus.yml");
        let data = dir.join("data");
        let process = ServerProcess::start(binary("prometheus", "PROMETHEUS_BIN"), move |port| {
            vec![
                format!("--config.file={}", config.display()),
                format!("--storage.tsdb.path={}", data.display()),
                format!("--web.listen-address=127.0.0.1:{port}"),
                "--log.level=warn".into(),
            ]
        });
        let server = Self { dir, process };
        server.wait_until_ready();
        server
    }

    /// Waits for `/-/ready`: Prometheus listens before it can answer queries,
    /// and answers them with a plain-text 503 meanwhile.
    fn wait_until_ready(&self) {
        let started = Instant::now();
        while ready_status(self.process.port) != Some(200) {
            assert!(
                started.elapsed() < READY_TIMEOUT,
                "prometheus not ready after {READY_TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The base URL of its HTTP API.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.process.port)
    }
}

impl Drop for PrometheusServer {
    fn drop(&mut self) {
        self.process.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
