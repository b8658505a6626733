//! The gateway's connection to Redis: one server, a Redis Cluster, or the master
//! a set of sentinels names; and the checks at startup that what `--redis-url`
//! points at is what `--redis-mode` says, so a wrong setting stops the gateway
//! with a message instead of caching nothing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{Context, bail};
use prediction_contract::time::{millis, unix_now_ms};
use prediction_runtime::telemetry::redact_url;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{Cmd, IntoConnectionInfo, Pipeline, RedisFuture, RedisResult, Value};
use tracing::{info, warn};

use super::RedisSettings;

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

/// The shortest time between two questions to the sentinels after a failure.
const SENTINEL_ASK_EVERY: Duration = Duration::from_millis(200);

/// A connection to Redis however it is deployed. Cheap to clone: every kind
/// multiplexes one connection per node and reconnects by itself.
#[derive(Clone)]
pub enum Connection {
    Standalone(ConnectionManager),
    Cluster(ClusterConnection),
    Sentinel(SentinelConnection),
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
        Ok(cluster_masters(&nodes)
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

/// The masters in a `CLUSTER NODES` listing that are not failing.
fn cluster_masters(listing: &str) -> Vec<(String, u16)> {
    listing
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let flags = fields.get(2)?;
            if !flags.split(',').any(|flag| flag == "master") || flags.contains("fail") {
                return None;
            }
            // `host:port@cluster-port[,hostname]`
            let address = fields.get(1)?.split(['@', ',']).next()?;
            let (host, port) = address.rsplit_once(':')?;
            Some((host.to_owned(), port.parse().ok()?))
        })
        .collect()
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
        RedisMode::Cluster => open_cluster(settings, &urls).await,
        RedisMode::Sentinel => open_sentinel(settings, &urls).await,
    }
}

async fn open_cluster(settings: &RedisSettings, urls: &[&str]) -> anyhow::Result<Connection> {
    if settings.key_prefix.contains(['{', '}']) {
        bail!(
            "--key-prefix {:?} holds a brace: in a Redis Cluster it would become the hash tag of every key",
            settings.key_prefix
        );
    }
    let mut answered = 0;
    for url in urls {
        let client = client(settings, url)?;
        let Some(info) = probe(&client, settings.timeout).await.answered(url)? else {
            continue;
        };
        answered += 1;
        if matches!(info, ServerKind::Server | ServerKind::Sentinel) {
            bail!(
                "{} is not a Redis Cluster node (cluster_enabled:0): set --redis-mode {} or list cluster nodes",
                redact_url(url),
                if info == ServerKind::Sentinel {
                    "sentinel"
                } else {
                    "standalone"
                }
            );
        }
    }
    if answered == 0 {
        bail!(
            "no node of the Redis Cluster answers at {} within {:?}",
            redact_url(&settings.url),
            settings.timeout
        );
    }
    let nodes = urls
        .iter()
        .map(|url| url.into_connection_info())
        .collect::<RedisResult<Vec<_>>>()?
        .into_iter()
        .map(|info| info.set_tcp_settings(nodelay()));
    let mut builder = ClusterClientBuilder::new(nodes)
        .connection_timeout(settings.timeout)
        .response_timeout(settings.timeout)
        .retries(1);
    if let Some(certificates) = certificates(settings)? {
        builder = builder.certs(certificates);
    }
    let connection = tokio::time::timeout(
        settings.timeout * 8,
        builder.build()?.get_async_connection(),
    )
    .await
    .context("the Redis Cluster did not answer in time")?
    .context("connecting to the Redis Cluster")?;
    Ok(Connection::Cluster(connection))
}

async fn open_sentinel(settings: &RedisSettings, urls: &[&str]) -> anyhow::Result<Connection> {
    let Some(master) = settings.sentinel_master.as_deref() else {
        bail!(
            "--redis-mode sentinel needs --redis-sentinel-master NAME, the master the sentinels monitor"
        );
    };
    let mut answering = None;
    let mut sentinels_take_credentials = true;
    for url in urls {
        let mut client = client(settings, url)?;
        let mut probed = probe(&client, settings.timeout).await;
        if matches!(probed, Probe::Refused(_)) {
            // The common deployment protects the master and leaves the
            // sentinels open: a sentinel that lets the gateway in without the
            // URL's credentials is asked without them.
            let anonymous = client_without_credentials(settings, url)?;
            if let Probe::Answered(info) = probe(&anonymous, settings.timeout).await {
                sentinels_take_credentials = false;
                probed = Probe::Answered(info);
                client = anonymous;
            }
        }
        let Some(info) = probed.answered(url)? else {
            continue;
        };
        if matches!(info, ServerKind::Server | ServerKind::ClusterNode) {
            bail!(
                "{} is not a sentinel: with --redis-mode sentinel, --redis-url lists the sentinels{}",
                redact_url(url),
                if info == ServerKind::ClusterNode {
                    " (it is a Redis Cluster node: --redis-mode cluster)"
                } else {
                    ""
                }
            );
        }
        answering.get_or_insert(client);
    }
    let Some(sentinel) = answering else {
        bail!(
            "no sentinel answers at {} within {:?}",
            redact_url(&settings.url),
            settings.timeout
        );
    };
    let mut connection = sentinel
        .get_multiplexed_async_connection_with_config(&async_config(settings))
        .await?;
    let address: Option<(String, u16)> = redis::cmd("SENTINEL")
        .arg("get-master-addr-by-name")
        .arg(master)
        .query_async(&mut connection)
        .await?;
    let Some((host, port)) = address else {
        bail!(
            "the sentinels at {} monitor no master named {master:?}",
            redact_url(&settings.url)
        );
    };
    let connection = SentinelConnection::connect(settings, urls, master, sentinels_take_credentials)
        .await
        .map_err(|err| match err.downcast_ref::<redis::RedisError>() {
            Some(redis_error) if redis_error.kind() == redis::ErrorKind::AuthenticationFailed => {
                anyhow::anyhow!(
                    "the master {host}:{port} the sentinels name refused the credentials of {}: {redis_error}",
                    redact_url(&settings.url)
                )
            }
            _ => err,
        })?;
    Ok(Connection::Sentinel(connection))
}

/// The master the sentinels name, followed through failovers: redis-rs keeps a
/// connection on the address it opened (redis-rs issue #1438), so on an error
/// that says the master moved (`READONLY`, a lost or refused connection, a
/// timeout) the sentinels are asked again and a connection to the master they
/// name replaces the old one.
#[derive(Clone)]
pub struct SentinelConnection {
    shared: Arc<SentinelShared>,
    /// The connection this clone uses; renewed from `shared` when it moves.
    current: ConnectionManager,
    generation: u64,
}

struct SentinelShared {
    sentinel: tokio::sync::Mutex<SentinelClient>,
    current: RwLock<(ConnectionManager, u64, String)>,
    config: ConnectionManagerConfig,
    last_asked_ms: AtomicU64,
}

impl SentinelConnection {
    /// Connects to the master the sentinels at `urls` name, with the URLs'
    /// credentials (given to the sentinels too when `sentinels_take_credentials`)
    /// and the CA of `--redis-tls-ca` for both.
    async fn connect(
        settings: &RedisSettings,
        urls: &[&str],
        master: &str,
        sentinels_take_credentials: bool,
    ) -> anyhow::Result<Self> {
        let infos = urls
            .iter()
            .map(|url| url.into_connection_info())
            .collect::<RedisResult<Vec<_>>>()?;
        let credentials = infos[0].redis_settings().clone();
        let tls = match infos[0].addr() {
            redis::ConnectionAddr::TcpTls { insecure: true, .. } => Some(redis::TlsMode::Insecure),
            redis::ConnectionAddr::TcpTls { .. } => Some(redis::TlsMode::Secure),
            _ => None,
        };
        let mut builder = SentinelClientBuilder::new(
            infos.iter().map(|info| info.addr().clone()),
            master,
            SentinelServerType::Master,
        )?
        .set_client_to_redis_db(credentials.db())
        .set_client_to_redis_tcp_settings(nodelay())
        .set_client_to_sentinel_tcp_settings(nodelay());
        if let Some(username) = credentials.username() {
            builder = builder.set_client_to_redis_username(username);
            if sentinels_take_credentials {
                builder = builder.set_client_to_sentinel_username(username);
            }
        }
        if let Some(password) = credentials.password() {
            builder = builder.set_client_to_redis_password(password);
            if sentinels_take_credentials {
                builder = builder.set_client_to_sentinel_password(password);
            }
        }
        if let Some(mode) = tls {
            builder = builder
                .set_client_to_redis_tls_mode(mode)
                .set_client_to_sentinel_tls_mode(mode);
            if let Some(certificates) = certificates(settings)? {
                builder = builder
                    .set_client_to_redis_certificates(certificates.clone())
                    .set_client_to_sentinel_certificates(certificates);
            }
        }
        let mut sentinel = builder.build()?;
        let client = sentinel
            .async_get_client()
            .await
            .context("asking the sentinels for the master")?;
        let address = client.get_connection_info().addr().to_string();
        let config = manager_config(settings);
        let manager = ConnectionManager::new_lazy_with_config(client, config.clone())?;
        info!(
            master = master,
            address, "following the master the sentinels name"
        );
        Ok(Self {
            shared: Arc::new(SentinelShared {
                sentinel: tokio::sync::Mutex::new(sentinel),
                current: RwLock::new((manager.clone(), 0, address)),
                config,
                last_asked_ms: AtomicU64::new(0),
            }),
            current: manager,
            generation: 0,
        })
    }

    /// The connection to use now: this clone's, unless a newer one was made.
    fn refresh(&mut self) {
        let shared = self.shared.current.read().expect("not poisoned");
        if shared.1 != self.generation {
            self.current = shared.0.clone();
            self.generation = shared.1;
        }
    }

    /// After an error that may mean a failover, asks the sentinels for the
    /// master (at most every [`SENTINEL_ASK_EVERY`], in the background) and
    /// connects to it if it moved.
    fn follow_failover(&self, err: &redis::RedisError) {
        let moved = matches!(
            err.kind(),
            redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
        ) || err.is_io_error()
            || err.is_connection_dropped()
            || err.is_connection_refusal()
            || err.is_timeout();
        if !moved {
            return;
        }
        let now = unix_now_ms();
        let last = self.shared.last_asked_ms.load(Ordering::Relaxed);
        if now < last.saturating_add(millis(SENTINEL_ASK_EVERY))
            || self
                .shared
                .last_asked_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let shared = Arc::clone(&self.shared);
        tokio::spawn(async move {
            let client = match shared.sentinel.lock().await.async_get_client().await {
                Ok(client) => client,
                Err(err) => {
                    warn!(error = %err, "the sentinels could not be asked for the master");
                    return;
                }
            };
            let address = client.get_connection_info().addr().to_string();
            if shared.current.read().expect("not poisoned").2 == address {
                return;
            }
            match ConnectionManager::new_lazy_with_config(client, shared.config.clone()) {
                Ok(manager) => {
                    warn!(address, "the sentinels name a new master; following it");
                    let mut current = shared.current.write().expect("not poisoned");
                    let generation = current.1 + 1;
                    *current = (manager, generation, address);
                }
                Err(err) => warn!(error = %err, "could not connect to the new master"),
            }
        });
    }
}

impl ConnectionLike for SentinelConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        self.refresh();
        Box::pin(async move {
            let result = self.current.req_packed_command(cmd).await;
            if let Err(err) = &result {
                self.follow_failover(err);
            }
            result
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        self.refresh();
        Box::pin(async move {
            let result = self
                .current
                .req_packed_commands(pipeline, offset, count)
                .await;
            if let Err(err) = &result {
                self.follow_failover(err);
            }
            result
        })
    }

    fn get_db(&self) -> i64 {
        self.current.get_db()
    }
}

/// What a server says it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ServerKind {
    /// A Redis server on its own, a master or a replica.
    Server,
    ClusterNode,
    Sentinel,
    /// One that lets the gateway's user in but not run `INFO` (an ACL user
    /// with only the commands the cache sends): taken for what the mode says.
    Unknown,
}

/// What asking a server what it is found.
enum Probe {
    Answered(ServerKind),
    /// It did not answer in time.
    Unreachable,
    /// It answered, and refused the credentials (or their absence).
    Refused(String),
}

impl Probe {
    /// The server's kind, or `None` if it did not answer; refused credentials
    /// stop the startup.
    fn answered(self, url: &str) -> anyhow::Result<Option<ServerKind>> {
        match self {
            Self::Answered(kind) => Ok(Some(kind)),
            Self::Unreachable => Ok(None),
            Self::Refused(reason) => bail!("{} refused the credentials: {reason}", redact_url(url)),
        }
    }
}

/// Asks the server of `client` what it is.
async fn probe(client: &redis::Client, timeout: Duration) -> Probe {
    let refused = |err: &redis::RedisError| {
        matches!(
            err.kind(),
            redis::ErrorKind::AuthenticationFailed
                | redis::ErrorKind::Server(redis::ServerErrorKind::NoPerm)
        ) || err
            .code()
            .is_some_and(|code| code == "NOAUTH" || code == "WRONGPASS")
    };
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    let mut connection = match client
        .get_multiplexed_async_connection_with_config(&config)
        .await
    {
        Ok(connection) => connection,
        Err(err) if refused(&err) => return Probe::Refused(err.to_string()),
        Err(_) => return Probe::Unreachable,
    };
    match redis::cmd("INFO")
        .query_async::<String>(&mut connection)
        .await
    {
        Ok(info) => Probe::Answered(
            if info
                .lines()
                .any(|line| line.trim() == "redis_mode:sentinel")
            {
                ServerKind::Sentinel
            } else if info.lines().any(|line| line.trim() == "cluster_enabled:1") {
                ServerKind::ClusterNode
            } else {
                ServerKind::Server
            },
        ),
        Err(err) if err.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoPerm) => {
            Probe::Answered(ServerKind::Unknown)
        }
        Err(err) if refused(&err) => Probe::Refused(err.to_string()),
        Err(_) => Probe::Unreachable,
    }
}

/// A client of the server at `url`, with TCP_NODELAY and the CA of `--redis-tls-ca`.
fn client(settings: &RedisSettings, url: &str) -> anyhow::Result<redis::Client> {
    client_of(settings, connection_info(url)?)
}

/// The same client, sending no credentials.
fn client_without_credentials(
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
fn nodelay() -> redis::io::tcp::TcpSettings {
    redis::io::tcp::TcpSettings::default().set_nodelay(true)
}

fn certificates(settings: &RedisSettings) -> anyhow::Result<Option<redis::TlsCertificates>> {
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

fn manager_config(settings: &RedisSettings) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(settings.timeout))
        .set_response_timeout(Some(settings.timeout))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(100))
}

fn async_config(settings: &RedisSettings) -> redis::AsyncConnectionConfig {
    redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(settings.timeout))
        .set_response_timeout(Some(settings.timeout))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_masters_of_a_cluster_listing_are_the_live_ones() {
        let listing = "\
07c37dfeb2352e0b 127.0.0.1:30004@31004 slave e7d1eecce10fd6bb 0 1426238317239 4 connected
67ed2db8d677e59e 127.0.0.1:30002@31002 master - 0 1426238316232 2 connected 5461-10922
292f8b365bb7edb5 127.0.0.1:30003@31003 master - 0 1426238318243 3 connected 10923-16383
6ec23923021cf3ff 127.0.0.1:30005@31005 master,fail - 1426238316232 0 5 connected
e7d1eecce10fd6bb 127.0.0.1:30001@31001 myself,master - 0 0 1 connected 0-5460";
        assert_eq!(
            cluster_masters(listing),
            [
                ("127.0.0.1".to_owned(), 30002),
                ("127.0.0.1".to_owned(), 30003),
                ("127.0.0.1".to_owned(), 30001),
            ]
        );
    }
}
