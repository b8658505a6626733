//! The gateway binary as a process, and waiting for an HTTP endpoint to answer.

use std::time::Duration;

use super::unique_suffix;

/// The gateway binary in a process of its own, its log lines in a file: for
/// what only a process shows (its exit code, its logs, its open-file limit).
pub struct GatewayProcess {
    child: std::process::Child,
    log_path: std::path::PathBuf,
    pub url: String,
}

impl GatewayProcess {
    /// Starts `gateway` with `args` (after `--listen` on a free port) and `env`,
    /// and waits until it answers `/healthz`.
    pub async fn start(args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_with(
            std::process::Command::new(test_support::built_binary("gateway")),
            args,
            env,
        )
        .await
    }

    /// The same, run by `command` (`prlimit ... gateway`, say).
    pub async fn start_with(
        mut command: std::process::Command,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let port = test_support::free_port();
        let log_path =
            std::env::temp_dir().join(format!("gateway-process-{}.log", unique_suffix()));
        if !env.iter().any(|(name, _)| *name == "LOG_FORMAT") {
            command.env("GATEWAY_LOG_FORMAT", "text");
        }
        let child = command
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(args)
            .envs(env.iter().copied())
            .stdout(std::fs::File::create(&log_path).unwrap())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("the gateway binary starts");
        let url = format!("http://127.0.0.1:{port}");
        let process = Self {
            child,
            log_path,
            url,
        };
        let what = format!("the gateway at {} answering", process.url);
        body_when_answered(&format!("{}/healthz", process.url), &what).await;
        process.logs_containing("gateway ready").await;
        process
    }

    /// What it has logged so far. Lines reach the file in batches, up to 100 ms
    /// after they are logged: to read a line, wait for it with
    /// [`Self::logs_containing`] or stop the gateway with [`Self::stop`].
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Its log, once it holds `needle` (within 10 s).
    pub async fn logs_containing(&self, needle: &str) -> String {
        let what = format!("the gateway logging {needle:?}");
        test_support::eventually(Duration::from_secs(10), &what, || async {
            let logs = self.logs();
            if logs.contains(needle) {
                Ok(logs)
            } else {
                Err(logs)
            }
        })
        .await
    }

    /// Stops it with SIGTERM and returns all it logged (its last lines are
    /// written as it exits).
    pub async fn stop(&mut self) -> String {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
        let child = &mut self.child;
        test_support::eventually(Duration::from_secs(20), "the gateway exiting", || {
            std::future::ready(child.try_wait().unwrap().ok_or("running"))
        })
        .await;
        self.logs()
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log_path);
    }
}

/// The body of `GET url` once it answers 200 (within 10 s): for a server
/// starting, or slots coming free.
pub async fn body_when_answered(url: &str, what: &str) -> String {
    let http = reqwest::Client::new();
    test_support::eventually(Duration::from_secs(10), what, || async {
        let response = http.get(url).send().await.map_err(|err| err.to_string())?;
        if response.status() != 200 {
            return Err(format!("status {}", response.status()));
        }
        response.text().await.map_err(|err| err.to_string())
    })
    .await
}
