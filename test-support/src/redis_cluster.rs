//! A real Redis Cluster for tests: three masters with a replica each, on free
//! loopback ports, made with `redis-cli --cluster create`.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::redis_access::as_arguments;
use crate::{RedisAccess, ServerProcess, binary, ephemeral_server_args, temp_dir};

/// How long the cluster may take to agree on its slots, or to fail over.
const CONVERGENCE_TIMEOUT: Duration = Duration::from_secs(30);

/// `redis-server`s in cluster mode: three masters, and a replica each unless
/// started without.
#[derive(Debug)]
pub struct RedisCluster {
    dir: PathBuf,
    nodes: Vec<ServerProcess>,
    /// Who may talk to every node, and how.
    access: RedisAccess,
}

impl RedisCluster {
    /// Starts the nodes, creates the cluster and waits until every node says its
    /// state is `ok`. A master that dies is failed over within about a second.
    pub fn start() -> Self {
        Self::start_with(RedisAccess::default())
    }

    /// A cluster whose nodes (and their replication and cluster bus) only
    /// `access` lets in.
    pub fn start_with(access: RedisAccess) -> Self {
        Self::start_nodes(access, 1)
    }

    /// Three masters and no replicas: what the cluster client costs, without
    /// the cost of replication, against one standalone server.
    pub fn start_without_replicas() -> Self {
        Self::start_nodes(RedisAccess::default(), 0)
    }

    fn start_nodes(access: RedisAccess, replicas_per_master: usize) -> Self {
        let dir = temp_dir("redis-cluster");
        let nodes: Vec<ServerProcess> = (0..3 * (1 + replicas_per_master))
            .map(|_| {
                let dir = dir.clone();
                let access = access.clone();
                ServerProcess::start(binary("redis-server", "REDIS_SERVER_BIN"), move |port| {
                    let mut args = as_arguments(access.server_directives(port));
                    args.extend(ephemeral_server_args());
                    args.extend(
                        [
                            "--cluster-enabled",
                            "yes",
                            "--cluster-config-file",
                            &format!("nodes-{port}.conf"),
                            "--cluster-node-timeout",
                            "1000",
                            // A replica fails over however long ago it last heard
                            // from its master: an idle test cluster's replicas
                            // would otherwise judge their data too old to serve.
                            "--cluster-replica-validity-factor",
                            "0",
                            "--dir",
                            &dir.display().to_string(),
                        ]
                        .map(String::from),
                    );
                    args
                })
            })
            .collect();
        let cluster = Self { dir, nodes, access };
        let mut create = vec!["--cluster".to_owned(), "create".to_owned()];
        create.extend(
            cluster
                .nodes
                .iter()
                .map(|n| format!("127.0.0.1:{}", n.port)),
        );
        create.extend([
            "--cluster-replicas".to_owned(),
            replicas_per_master.to_string(),
            "--cluster-yes".to_owned(),
        ]);
        let output = Command::new(binary("redis-cli", "REDIS_CLI_BIN"))
            .args(cluster.access.cli_args())
            .args(&create)
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli runs");
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let known = format!("cluster_known_nodes:{}", cluster.nodes.len());
        let replicas = 3 * replicas_per_master;
        cluster.wait_until(
            "every node agrees on the slots and the replicas",
            |cluster| {
                cluster.live_ports().iter().all(|&port| {
                    let info = cluster.cli(port, &["cluster", "info"]);
                    let nodes = cluster.cli(port, &["cluster", "nodes"]);
                    info.contains("cluster_state:ok")
                        && info.contains(&known)
                        && replicas_listed(&nodes) == replicas
                }) && cluster.masters().len() == 3
            },
        );
        cluster
    }

    /// The seed list for `--redis-url`: every node (with the credentials, if any).
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(|node| self.access.url(node.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The seed list with another password, to be refused.
    pub fn urls_with_password(&self, password: &str) -> String {
        self.nodes
            .iter()
            .map(|node| self.access.url_with_password(node.port, password))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The CA file a client needs, when the nodes speak TLS.
    pub fn tls_ca(&self) -> Option<&str> {
        self.access.tls_ca()
    }

    /// The port of the master serving `key` now.
    pub fn master_of(&self, key: &str) -> u16 {
        self.master_serving(key)
            .expect("every slot has a live master")
    }

    /// The live master serving `key`, if there is one now (not while a dead
    /// master's slots wait for their replica).
    fn master_serving(&self, key: &str) -> Option<u16> {
        let port = *self.live_ports().first()?;
        let slot: u16 = self
            .cli(port, &["cluster", "keyslot", key])
            .trim()
            .parse()
            .ok()?;
        self.masters()
            .into_iter()
            .find(|(_, ranges)| {
                ranges
                    .iter()
                    .any(|(low, high)| (*low..=*high).contains(&slot))
            })
            .map(|(port, _)| port)
    }

    /// The live masters: their ports and the slot ranges each serves.
    pub fn masters(&self) -> Vec<(u16, Vec<(u16, u16)>)> {
        let Some(&port) = self.live_ports().first() else {
            return Vec::new();
        };
        self.cli(port, &["cluster", "nodes"])
            .lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let flags = fields.get(2)?;
                if !flags.contains("master") || flags.contains("fail") {
                    return None;
                }
                let port = fields.get(1)?.split(['@', ':']).nth(1)?.parse().ok()?;
                let ranges = fields[8..]
                    .iter()
                    .filter_map(|range| {
                        let (low, high) = range.split_once('-').unwrap_or((range, range));
                        Some((low.parse().ok()?, high.parse().ok()?))
                    })
                    .collect::<Vec<_>>();
                (!ranges.is_empty()).then_some((port, ranges))
            })
            .collect()
    }

    /// Kills the node on `port` (a master, say).
    pub fn kill(&mut self, port: u16) {
        if let Some(node) = self.nodes.iter_mut().find(|node| node.port == port) {
            node.stop();
        }
    }

    /// Waits until a live master other than `old` serves `key` and the cluster
    /// is `ok` again; returns its port.
    pub fn wait_for_failover(&self, key: &str, old: u16) -> u16 {
        self.wait_until("a replica takes over the dead master's slots", |cluster| {
            let ok = cluster.live_ports().iter().all(|&port| {
                cluster
                    .cli(port, &["cluster", "info"])
                    .contains("cluster_state:ok")
            });
            ok && cluster.master_serving(key).is_some_and(|port| port != old)
        });
        self.master_of(key)
    }

    fn live_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|node| node.child.is_some())
            .map(|node| node.port)
            .collect()
    }

    fn cli(&self, port: u16, args: &[&str]) -> String {
        crate::redis_cli(port, &self.access.cli_args(), args)
    }

    fn wait_until(&self, what: &str, done: impl Fn(&Self) -> bool) {
        crate::wait_until(
            &format!("Redis Cluster: {what}"),
            CONVERGENCE_TIMEOUT,
            || done(self),
        );
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        self.nodes.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// How many replicas a `CLUSTER NODES` listing names.
fn replicas_listed(listing: &str) -> usize {
    listing
        .lines()
        .filter_map(|line| line.split_whitespace().nth(2))
        .filter(|flags| flags.split(',').any(|flag| flag == "slave"))
        .count()
}
