//! A real Sentinel-managed Redis for tests: a master, a replica and three
//! sentinels on free loopback ports.

use std::path::PathBuf;
use std::time::Duration;

use crate::redis_access::{as_arguments, as_config_file};
use crate::{RedisAccess, ServerProcess, binary, ephemeral_server_args, temp_dir};

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
    /// Who may talk to the master and the replica, and how.
    access: RedisAccess,
    /// Who may talk to the sentinels.
    sentinel_access: RedisAccess,
}

impl RedisSentinels {
    /// Starts them and waits until every sentinel knows the replica and the two
    /// other sentinels, so a failover can happen.
    pub fn start() -> Self {
        Self::start_with(RedisAccess::default())
    }

    /// The same, with servers and sentinels that only `access` lets in.
    pub fn start_with(access: RedisAccess) -> Self {
        Self::start_with_separate(access.clone(), access)
    }

    /// The same, with servers that `access` lets in and sentinels that
    /// `sentinel_access` does (open sentinels before a protected master, say).
    pub fn start_with_separate(access: RedisAccess, sentinel_access: RedisAccess) -> Self {
        let dir = temp_dir("redis-sentinel");
        let server = |replica_of: Option<u16>| {
            let access = access.clone();
            let dir = dir.clone();
            ServerProcess::start(binary("redis-server", "REDIS_SERVER_BIN"), move |port| {
                let mut args = as_arguments(access.server_directives(port));
                args.extend(ephemeral_server_args());
                // A replica's full sync writes the master's snapshot to disk:
                // into the test's folder, not the current one (a crate's).
                args.extend([
                    "--dir".into(),
                    dir.display().to_string(),
                    "--dbfilename".into(),
                    format!("dump-{port}.rdb"),
                ]);
                if let Some(master) = replica_of {
                    args.extend(["--replicaof".into(), "127.0.0.1".into(), master.to_string()]);
                }
                args
            })
        };
        let master = server(None);
        let replica = server(Some(master.port));
        let master_port = master.port;
        let sentinels = (0..3)
            .map(|_| {
                let dir = dir.clone();
                let (access, sentinel_access) = (access.clone(), sentinel_access.clone());
                ServerProcess::start(binary("redis-server", "REDIS_SERVER_BIN"), move |port| {
                    // Sentinels rewrite their configuration file: one each.
                    let config = dir.join(format!("sentinel-{port}.conf"));
                    let monitor = format!(
                        "bind 127.0.0.1\nprotected-mode no\ndir {dir}\n\
                         sentinel monitor {SENTINEL_MASTER_NAME} 127.0.0.1 {master_port} 2\n\
                         sentinel down-after-milliseconds {SENTINEL_MASTER_NAME} 1000\n\
                         sentinel failover-timeout {SENTINEL_MASTER_NAME} 5000\n",
                        dir = dir.display()
                    );
                    let access = as_config_file(sentinel_access.sentinel_directives(
                        port,
                        SENTINEL_MASTER_NAME,
                        &access,
                    ));
                    std::fs::write(&config, monitor + &access)
                        .expect("writing a sentinel's configuration");
                    vec![config.display().to_string(), "--sentinel".into()]
                })
            })
            .collect();
        let sentinels = Self {
            dir,
            servers: vec![master, replica],
            sentinels,
            access,
            sentinel_access,
        };
        sentinels.wait_until("every sentinel knows the replica and the others", |s| {
            s.sentinels.iter().all(|sentinel| {
                let master =
                    s.sentinel_cli(sentinel.port, &["sentinel", "master", SENTINEL_MASTER_NAME]);
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

    /// The sentinels, for `--redis-url`, with the master's credentials (if any).
    pub fn urls(&self) -> String {
        self.urls_with(|port| self.access.url(port))
    }

    /// The sentinels with another password, to be refused.
    pub fn urls_with_password(&self, password: &str) -> String {
        self.urls_with(|port| self.access.url_with_password(port, password))
    }

    fn urls_with(&self, url: impl Fn(u16) -> String) -> String {
        self.sentinels
            .iter()
            .map(|sentinel| url(sentinel.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The CA file a client needs, when they speak TLS.
    pub fn tls_ca(&self) -> Option<&str> {
        self.access.tls_ca()
    }

    /// The master's port, as the sentinels see it now.
    pub fn master_port(&self) -> u16 {
        let live = self
            .sentinels
            .iter()
            .find(|sentinel| sentinel.child.is_some())
            .expect("a live sentinel");
        let reply = self.sentinel_cli(
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

    /// `redis-cli` against the master or the replica.
    fn cli(&self, port: u16, args: &[&str]) -> String {
        crate::redis_cli(port, &self.access.cli_args(), args)
    }

    fn sentinel_cli(&self, port: u16, args: &[&str]) -> String {
        crate::redis_cli(port, &self.sentinel_access.cli_args(), args)
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
