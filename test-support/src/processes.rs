//! Waiting for something to become true, and the worker binary as a process.

use std::future::Future;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How often [`eventually`] looks again.
const EVERY: Duration = Duration::from_millis(20);

/// Looks with `check` until it finds something (`Some`), every 20 ms, for at
/// most `within`; fails the test, saying `what` was awaited and the last `Err`
/// `check` gave, otherwise. For whatever a test waits on that comes by itself
/// (a server ready, a process gone, a counter moved).
pub async fn eventually<T, E, Fut>(
    within: Duration,
    what: &str,
    mut check: impl FnMut() -> Fut,
) -> T
where
    Fut: Future<Output = Result<T, E>>,
    E: std::fmt::Debug,
{
    let started = Instant::now();
    loop {
        match check().await {
            Ok(found) => return found,
            Err(last) => assert!(
                started.elapsed() < within,
                "{what}: not within {within:?}; last: {last:?}"
            ),
        }
        tokio::time::sleep(EVERY).await;
    }
}

/// A `worker` process of the built binary, killed when dropped.
#[derive(Debug)]
pub struct WorkerProcess {
    child: Child,
    id_file: PathBuf,
}

impl WorkerProcess {
    /// Starts `worker --nats-url <nats_url> <args>` with `env`, and waits until
    /// it serves (it writes its `--id-file` then).
    pub async fn spawn(nats_url: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        static STARTED: AtomicUsize = AtomicUsize::new(0);
        let id_file = std::env::temp_dir().join(format!(
            "worker-{}-{}.id",
            std::process::id(),
            STARTED.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_file(&id_file);
        let child = Command::new(crate::built_binary("worker"))
            .args(["--nats-url", nats_url, "--id-file"])
            .arg(&id_file)
            .args(args)
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the worker binary starts");
        let mut worker = Self { child, id_file };
        let id_file = worker.id_file.clone();
        eventually(Duration::from_secs(20), "the worker serving", || {
            let ready = id_file.exists();
            let exited = worker.child.try_wait().ok().flatten();
            async move {
                match (ready, exited) {
                    (_, Some(status)) => panic!("the worker exited at startup: {status}"),
                    (true, None) => Ok(()),
                    (false, None) => Err("no id file yet"),
                }
            }
        })
        .await;
        worker
    }

    /// Sends SIGTERM, as `docker stop` or Kubernetes do.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    /// SIGKILL: the worker dies holding whatever it had.
    pub fn kill(&mut self) {
        self.child.kill().expect("SIGKILL is delivered");
    }

    /// Its exit status, once it has exited (within 20 s).
    pub async fn exit_status(&mut self) -> ExitStatus {
        let child = &mut self.child;
        eventually(Duration::from_secs(20), "the worker exiting", || {
            let status = child.try_wait().unwrap();
            async move { status.ok_or("still running") }
        })
        .await
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.id_file);
    }
}
