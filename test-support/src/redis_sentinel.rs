//! A real Sentinel-managed Redis for tests: a master, a replica and three
//! sentinels on free loopback ports.

use std::path::PathBuf;
use std::time::Duration;

use crate::{ServerProcess, binary, temp_dir};

/// The name the sentinels monitor the master under.
pub const SENTINEL_MASTER_NAME: &str = "cache";

/// How long the sentinels may take to see everyone, or to fail over.
const CONVERGENCE_TIMEOUT: Duration = Duration::from_secs(30);

/// A master, its replica and three sentinels watching them (quorum 2, the master
/// declared down after one second).
#[derive(Debug)]
pub struct RedisSentinels {
    dir: PathBuf,
    servers: Vec<ServerProcess>,
    sentinels: Vec<ServerProcess>,
}

fn server_args(port: u16, extra: &[String]) -> Vec<String> {
    let mut args: Vec<String> = [
        "--port",
        &port.to_string(),
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
    .to_vec();
    args.extend(extra.iter().cloned());
    args
}

impl RedisSentinels {
    /// Starts them and waits until every sentinel knows the replica and the two
    /// other sentinels, so a failover can happen.
    pub fn start() -> Self {
        let dir = temp_dir("redis-sentinel");
        let master = ServerProcess::start(binary("redis-server", "REDIS_SERVER_BIN"), |port| {
            server_args(port, &[])
        });
        let master_port = master.port;
        let replica =
            ServerProcess::start(binary("redis-server", "REDIS_SERVER_BIN"), move |port| {
                server_args(
                    port,
                    &[
                        "--replicaof".into(),
                        "127.0.0.1".into(),
                        master_port.to_string(),
                    ],
                )
            });
        let sentinels = (0..3)
            .map(|_| {
                let dir = dir.clone();
                ServerProcess::start(binary("redis-server", "REDIS_SERVER_BIN"), move |port| {
                    // Sentinels rewrite their configuration file: one each.
                    let config = dir.join(format!("sentinel-{port}.conf"));
                    std::fs::write(
                        &config,
                        format!(
                            "port {port}\nbind 127.0.0.1\nprotected-mode no\ndir {dir}\n\
                             sentinel monitor {SENTINEL_MASTER_NAME} 127.0.0.1 {master_port} 2\n\
                             sentinel down-after-milliseconds {SENTINEL_MASTER_NAME} 1000\n\
                             sentinel failover-timeout {SENTINEL_MASTER_NAME} 5000\n",
                            dir = dir.display()
                        ),
                    )
                    .expect("writing a sentinel's configuration");
                    vec![config.display().to_string(), "--sentinel".into()]
                })
            })
            .collect();
        let sentinels = Self {
            dir,
            servers: vec![master, replica],
            sentinels,
        };
        sentinels.wait_until("every sentinel knows the replica and the others", |s| {
            s.sentinels.iter().all(|sentinel| {
                let master = s.cli(sentinel.port, &["sentinel", "master", SENTINEL_MASTER_NAME]);
                let field = |name: &str| {
                    let lines: Vec<&str> = master.lines().collect();
                    lines
                        .iter()
                        .position(|line| *line == name)
                        .and_then(|at| lines.get(at + 1))
                        .map(|value| value.trim().to_owned())
                };
                field("num-slaves").as_deref() == Some("1")
                    && field("num-other-sentinels").as_deref() == Some("2")
            }) && s
                .cli(s.servers[1].port, &["info", "replication"])
                .contains("master_link_status:up")
        });
        sentinels
    }

    /// The sentinels, for `--redis-url`.
    pub fn urls(&self) -> String {
        self.sentinels
            .iter()
            .map(|sentinel| format!("redis://127.0.0.1:{}", sentinel.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The master's port, as the sentinels see it now.
    pub fn master_port(&self) -> u16 {
        let live = self
            .sentinels
            .iter()
            .find(|sentinel| sentinel.child.is_some())
            .expect("a live sentinel");
        let reply = self.cli(
            live.port,
            &["sentinel", "get-master-addr-by-name", SENTINEL_MASTER_NAME],
        );
        reply
            .lines()
            .nth(1)
            .and_then(|port| port.trim().parse().ok())
            .expect("the sentinels name a master")
    }

    /// Kills the master; returns its port.
    pub fn kill_master(&mut self) -> u16 {
        let port = self.master_port();
        if let Some(server) = self.servers.iter_mut().find(|server| server.port == port) {
            server.stop();
        }
        port
    }

    /// Waits until the sentinels have promoted a new master; returns its port.
    pub fn wait_for_failover(&self, old: u16) -> u16 {
        self.wait_until("the sentinels promote the replica", |s| {
            let port = s.master_port();
            port != old
                && s.cli(port, &["info", "replication"])
                    .contains("role:master")
        });
        self.master_port()
    }

    fn cli(&self, port: u16, args: &[&str]) -> String {
        crate::redis_cli(port, &[], args)
    }

    fn wait_until(&self, what: &str, done: impl Fn(&Self) -> bool) {
        crate::wait_until(
            &format!("Redis Sentinel: {what}"),
            CONVERGENCE_TIMEOUT,
            || done(self),
        );
    }
}

impl Drop for RedisSentinels {
    fn drop(&mut self) {
        self.sentinels.clear();
        self.servers.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
