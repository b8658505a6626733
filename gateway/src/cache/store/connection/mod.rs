//! The gateway's connection to Redis: one server, a Redis Cluster, or the master
//! a set of sentinels names; and the checks at startup that what `--redis-url`
//! points at is what `--redis-mode` says, so a wrong setting stops the gateway
//! with a message instead of caching nothing.

//!
//! Submodules: `probe` (what a server is, asked before connecting), `cluster`
//! and `sentinel` (their connections).

mod cluster;
mod probe;
mod sentinel;

use std::time::Duration;

use anyhow::{Context, bail};
use prediction_runtime::telemetry::redact_url;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{Cmd, IntoConnectionInfo, Pipeline, RedisFuture, RedisResult, Value};

use super::RedisSettings;
use probe::{ServerKind, probe};

/// How the Redis of `--redis-url` is deployed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RedisMode {
    /// One server (or a proxy in front of many): `--redis-url` names it.
    Standalone,
    /// Redis Cluster: `--redis-url` lists seed nodes; the gateway follows
    /// `MOVED`/`ASK` and topology changes.
    Cluster,
    /// A master and replicas watched by sentinels: `--redis-url` lists the
    /// sentinels, `--redis-sentinel-master` names the master.
    Sentinel,
}

/// A connection to Redis however it is deployed. Cheap to clone: every kind
/// multiplexes one connection per node and reconnects by itself.
#[derive(Clone)]
pub enum Connection {
    Standalone(ConnectionManager),
    Cluster(ClusterConnection),
    Sentinel(sentinel::SentinelConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Standalone(connection) => connection.req_packed_command(cmd),
            Self::Cluster(connection) => connection.req_packed_command(cmd),
            Self::Sentinel(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Standalone(connection) => connection.req_packed_commands(pipeline, offset, count),
            Self::Cluster(connection) => connection.req_packed_commands(pipeline, offset, count),
            Self::Sentinel(connection) => connection.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Standalone(connection) => connection.get_db(),
            Self::Cluster(connection) => connection.get_db(),
            Self::Sentinel(connection) => connection.get_db(),
        }
    }
}

/// Where a scan for keys runs: everywhere at once, or on one cluster master.
#[derive(Debug, Clone)]
pub enum ScanTarget {
    Everywhere,
    Node { host: String, port: u16 },
}

impl Connection {
    /// Where to scan so that every key is seen once: each master of a cluster,
    /// else the one server.
    pub async fn scan_targets(&mut self) -> RedisResult<Vec<ScanTarget>> {
        let Self::Cluster(cluster) = self else {
            return Ok(vec![ScanTarget::Everywhere]);
        };
        let nodes = cluster
            .route_command(
                redis::cmd("CLUSTER").arg("NODES").clone(),
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
            )
            .await?;
        let nodes: String = redis::from_redis_value(nodes)?;
        Ok(cluster::cluster_masters(&nodes)
            .into_iter()
            .map(|(host, port)| ScanTarget::Node { host, port })
            .collect())
    }

    /// One page of `SCAN cursor MATCH pattern` at `target`.
    pub async fn scan_page(
        &mut self,
        target: &ScanTarget,
        cursor: u64,
        pattern: &str,
    ) -> RedisResult<(u64, Vec<String>)> {
        let mut scan = redis::cmd("SCAN");
        scan.arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000);
        match (self, target) {
            (Self::Cluster(cluster), ScanTarget::Node { host, port }) => {
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                    host: host.clone(),
                    port: *port,
                });
                Ok(redis::from_redis_value(
                    cluster.route_command(scan, routing).await?,
                )?)
            }
            (connection, _) => scan.query_async(connection).await,
        }
    }

    /// Whether keys of different hash slots may go in one command (not in a
    /// cluster).
    pub fn takes_keys_of_any_slot(&self) -> bool {
        !matches!(self, Self::Cluster(_))
    }
}

/// Opens the connection `settings` describe, after checking that the servers
/// are of the kind `--redis-mode` says.
pub async fn open(settings: &RedisSettings) -> anyhow::Result<Connection> {
    let urls: Vec<&str> = settings
        .url
        .split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .collect();
    let shown = redact_url(&settings.url);
    match settings.mode {
        RedisMode::Standalone => {
            if urls.len() != 1 {
                bail!(
                    "--redis-url lists {} servers ({shown}); with --redis-mode standalone it names one (for a Redis Cluster or sentinels set --redis-mode cluster or sentinel)",
                    urls.len()
                );
            }
            let client = client(settings, urls[0])?;
            // Best effort: a server that does not answer yet is connected to
            // when it does, as ever; one that answers as the wrong kind, or
            // refuses the credentials, is a mistake no retry mends.
            if let Some(info) = probe(&client, settings.timeout).await.answered(urls[0])? {
                if info == ServerKind::ClusterNode {
                    bail!(
                        "{shown} is a Redis Cluster node: set --redis-mode cluster and list the cluster's nodes in --redis-url"
                    );
                }
                if info == ServerKind::Sentinel {
                    bail!(
                        "{shown} is a sentinel: set --redis-mode sentinel and --redis-sentinel-master"
                    );
                }
            }
            Ok(Connection::Standalone(
                ConnectionManager::new_lazy_with_config(client, manager_config(settings))?,
            ))
        }
        RedisMode::Cluster => cluster::open(settings, &urls).await,
        RedisMode::Sentinel => sentinel::open(settings, &urls).await,
    }
}

/// A client of the server at `url`, with TCP_NODELAY and the CA of `--redis-tls-ca`.
pub(super) fn client(settings: &RedisSettings, url: &str) -> anyhow::Result<redis::Client> {
    client_of(settings, connection_info(url)?)
}

/// The same client, sending no credentials.
pub(super) fn client_without_credentials(
    settings: &RedisSettings,
    url: &str,
) -> anyhow::Result<redis::Client> {
    client_of(
        settings,
        connection_info(url)?.set_redis_settings(redis::RedisConnectionInfo::default()),
    )
}

fn connection_info(url: &str) -> anyhow::Result<redis::ConnectionInfo> {
    Ok(url
        .into_connection_info()
        .with_context(|| format!("reading the Redis URL {}", redact_url(url)))?
        .set_tcp_settings(nodelay()))
}

fn client_of(
    settings: &RedisSettings,
    connection_info: redis::ConnectionInfo,
) -> anyhow::Result<redis::Client> {
    Ok(match certificates(settings)? {
        None => redis::Client::open(connection_info)?,
        Some(certificates) => redis::Client::build_with_tls(connection_info, certificates)?,
    })
}

/// Small commands pipelined on one connection: without TCP_NODELAY, Nagle's
/// algorithm holds each one back until the previous is acknowledged.
pub(super) fn nodelay() -> redis::io::tcp::TcpSettings {
    redis::io::tcp::TcpSettings::default().set_nodelay(true)
}

pub(super) fn certificates(
    settings: &RedisSettings,
) -> anyhow::Result<Option<redis::TlsCertificates>> {
    let Some(ca) = &settings.tls_ca else {
        return Ok(None);
    };
    let root_cert = std::fs::read(ca)
        .with_context(|| format!("cannot read the Redis CA file {}", ca.display()))?;
    Ok(Some(redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(root_cert),
    }))
}

pub(super) fn manager_config(settings: &RedisSettings) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(settings.timeout))
        .set_response_timeout(Some(settings.timeout))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(100))
}

pub(super) fn async_config(settings: &RedisSettings) -> redis::AsyncConnectionConfig {
    redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(settings.timeout))
        .set_response_timeout(Some(settings.timeout))
}
