//! Real `nats-server` and `redis-server` processes for tests.
//!
//! Each server runs on a free loopback port of its own, so tests run in parallel,
//! and is killed when its handle is dropped. A test can [`stop`](NatsServer::stop)
//! and [`restart`](NatsServer::restart) one on the same port to inject an outage.

pub mod example_models;
mod nats_cluster;
mod processes;
mod prometheus;
mod redis_access;
mod redis_cluster;
mod redis_sentinel;

pub use nats_cluster::NatsCluster;
pub use processes::{WorkerProcess, eventually};
pub use prometheus::{PrometheusServer, SCRAPE_INTERVAL};
pub use redis_access::RedisAccess;
pub use redis_cluster::RedisCluster;
pub use redis_sentinel::{RedisSentinels, SENTINEL_MASTER_NAME};

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// How long a server may take to accept connections.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);

/// The workspace's binary `name` (`gateway`, `worker`) of the profile the
/// running test was built with, built first (once per test process) so that it
/// is never older than the code under test: `cargo test -p e2e` builds the
/// crates' libraries, not their binaries. With `cargo test --workspace` they
/// are built already, and the build is a no-op.
pub fn built_binary(name: &str) -> PathBuf {
    static BUILT: std::sync::Once = std::sync::Once::new();
    let test = std::env::current_exe().expect("the test knows its own path");
    // target/<profile>/deps/<test>: the binaries are in target/<profile>.
    let profile_dir = test
        .parent()
        .and_then(Path::parent)
        .expect("a test binary lives in target/<profile>/deps")
        .to_path_buf();
    BUILT.call_once(|| {
        let mut build = Command::new(env!("CARGO"));
        build.args(["build", "--quiet", "--bin", "gateway", "--bin", "worker"]);
        if profile_dir.file_name().is_some_and(|dir| dir == "release") {
            build.arg("--release");
        }
        let status = build
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .status()
            .expect("cargo runs");
        assert!(
            status.success(),
            "building the gateway and worker binaries failed"
        );
    });
    let path = profile_dir.join(name);
    assert!(path.is_file(), "no {} after the build", path.display());
    path
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("binding an ephemeral port")
        .port()
}

/// Finds `name` on PATH or in the sbin folders Debian installs servers into; an
/// environment variable (`NATS_SERVER_BIN`, `REDIS_SERVER_BIN`) overrides both.
pub(crate) fn binary(name: &str, env_override: &str) -> PathBuf {
    if let Ok(path) = std::env::var(env_override) {
        return PathBuf::from(path);
    }
    let path_dirs = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .unwrap_or_default();
    path_dirs
        .into_iter()
        .chain(["/usr/sbin", "/usr/bin", "/usr/local/bin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            let package = match name {
                "redis-cli" => "redis-tools",
                other => other,
            };
            panic!("{name} is not installed; run `.ci/run` or `apt-get install -y {package}` (or set {env_override})")
        })
}

/// A server process bound to one port, restartable on that port.
#[derive(Debug)]
pub(crate) struct ServerProcess {
    program: PathBuf,
    args: Vec<String>,
    pub(crate) port: u16,
    pub(crate) child: Option<Child>,
}

impl ServerProcess {
    /// Starts the server on a free port, retrying with another port if the chosen
    /// one is taken by the time the server binds it.
    pub(crate) fn start(program: PathBuf, args_for_port: impl Fn(u16) -> Vec<String>) -> Self {
        let mut last_error = String::new();
        for _ in 0..5 {
            let port = free_port();
            let mut server = Self {
                program: program.clone(),
                args: args_for_port(port),
                port,
                child: None,
            };
            match server.spawn_and_wait() {
                Ok(()) => return server,
                Err(err) => last_error = err,
            }
        }
        panic!("could not start {}: {last_error}", program.display());
    }

    fn spawn_and_wait(&mut self) -> Result<(), String> {
        let mut child = Command::new(&self.program)
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|err| format!("spawning {}: {err}", self.program.display()))?;
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("exited with {status} (port {} taken?)", self.port));
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                self.child = Some(child);
                return Ok(());
            }
            if started.elapsed() > STARTUP_TIMEOUT {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "not listening on {} after {STARTUP_TIMEOUT:?}",
                    self.port
                ));
            }
            sleep(Duration::from_millis(20));
        }
    }

    pub(crate) fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub(crate) fn restart(&mut self) {
        self.stop();
        // The port was ours a moment ago; the kernel may need a moment to free it.
        let started = Instant::now();
        while let Err(err) = self.spawn_and_wait() {
            assert!(
                started.elapsed() < STARTUP_TIMEOUT,
                "restarting {}: {err}",
                self.program.display()
            );
            sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A `nats-server` of the test's own.
#[derive(Debug)]
pub struct NatsServer(ServerProcess);

impl NatsServer {
    pub fn start() -> Self {
        Self::start_with_args(&[])
    }

    /// Starts with extra command line arguments (auth, limits, ...).
    pub fn start_with_args(extra: &[&str]) -> Self {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        Self(ServerProcess::start(
            binary("nats-server", "NATS_SERVER_BIN"),
            move |port| {
                let mut args = vec![
                    "-a".into(),
                    "127.0.0.1".into(),
                    "-p".into(),
                    port.to_string(),
                ];
                args.extend(extra.iter().cloned());
                args
            },
        ))
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.0.port)
    }

    /// The server's port, for URLs with credentials.
    pub fn port(&self) -> u16 {
        self.0.port
    }

    pub fn stop(&mut self) {
        self.0.stop();
    }

    pub fn restart(&mut self) {
        self.0.restart();
    }
}

/// A `redis-server` of the test's own, keeping nothing on disk.
#[derive(Debug)]
pub struct RedisServer {
    process: ServerProcess,
    access: RedisAccess,
}

/// What every test Redis server is told: keep nothing on disk, and listen on
/// loopback only.
pub(crate) fn ephemeral_server_args() -> Vec<String> {
    [
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--protected-mode",
        "no",
    ]
    .map(String::from)
    .to_vec()
}

impl RedisServer {
    pub fn start() -> Self {
        Self::start_with_args(&[])
    }

    /// Starts with extra command line arguments (`--maxmemory`, ...).
    pub fn start_with_args(extra: &[&str]) -> Self {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        Self::start_with(RedisAccess::default(), extra)
    }

    /// Starts one that only `access` lets in.
    pub fn start_with_access(access: RedisAccess) -> Self {
        Self::start_with(access, Vec::new())
    }

    /// Starts one that speaks only TLS, with `certificates`' server certificate.
    pub fn start_tls(certificates: &Certificates) -> Self {
        Self::start_with_access(RedisAccess::default().over_tls(certificates))
    }

    fn start_with(access: RedisAccess, extra: Vec<String>) -> Self {
        let listen = access.clone();
        let process =
            ServerProcess::start(binary("redis-server", "REDIS_SERVER_BIN"), move |port| {
                let mut args = redis_access::as_arguments(listen.server_directives(port));
                args.extend(ephemeral_server_args());
                args.extend(extra.iter().cloned());
                args
            });
        Self { process, access }
    }

    /// The server's port, for URLs with credentials.
    pub fn port(&self) -> u16 {
        self.process.port
    }

    /// Its URL, with the credentials of its access.
    pub fn url(&self) -> String {
        self.access.url(self.process.port)
    }

    /// Its URL with another password, to be refused.
    pub fn url_with_password(&self, password: &str) -> String {
        self.access.url_with_password(self.process.port, password)
    }

    /// The CA file a client needs, when it speaks TLS.
    pub fn tls_ca(&self) -> Option<&str> {
        self.access.tls_ca()
    }

    pub fn stop(&mut self) {
        self.process.stop();
    }

    pub fn restart(&mut self) {
        self.process.restart();
    }
}

/// A throwaway certificate authority and a server certificate it signed for
/// `localhost` and `127.0.0.1`, made with the `openssl` command.
#[derive(Debug)]
pub struct Certificates {
    dir: PathBuf,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

impl Certificates {
    pub fn generate() -> Self {
        static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "test-certs-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).expect("a temporary folder");
        let openssl = |args: &[&str]| {
            let status = Command::new("openssl")
                .args(args)
                .current_dir(&dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("openssl is installed");
            assert!(status.success(), "openssl {args:?} failed");
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=test-ca",
        ]);
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ]);
        std::fs::write(
            dir.join("san.cnf"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
        )
        .unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "san.cnf",
        ]);
        Self {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            dir,
        }
    }
}

impl Drop for Certificates {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A new empty folder under the system's temporary folder, for a test's files.
pub(crate) fn temp_dir(purpose: &str) -> PathBuf {
    static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "test-{purpose}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).expect("a temporary folder");
    dir
}

/// What `redis-cli -p <port> <auth…> <args…>` prints (empty if it cannot run).
pub(crate) fn redis_cli(port: u16, auth: &[String], args: &[&str]) -> String {
    let output = Command::new(binary("redis-cli", "REDIS_CLI_BIN"))
        .args(auth)
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli runs");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Waits, polling every 100 ms, until `done` holds; panics naming `what` after
/// `timeout`.
pub(crate) fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(
            started.elapsed() < timeout,
            "not done after {timeout:?}: {what}"
        );
        sleep(Duration::from_millis(100));
    }
}
