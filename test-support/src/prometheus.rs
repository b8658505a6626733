//! A real Prometheus server for tests, scraping the targets a test names every
//! second, and its HTTP query API.

use std::path::PathBuf;
use std::time::Duration;

use crate::{ServerProcess, binary, temp_dir};

/// How often the test Prometheus scrapes.
pub const SCRAPE_INTERVAL: Duration = Duration::from_secs(1);

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
        Self { dir, process }
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
