//! The master a set of sentinels names, followed through failovers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{Context, bail};
use prediction_contract::time::{millis, unix_now_ms};
use prediction_runtime::telemetry::redact_url;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{Cmd, IntoConnectionInfo, Pipeline, RedisFuture, RedisResult, Value};
use tracing::{info, warn};

use super::probe::Probe;
use super::{
    Connection, RedisSettings, ServerKind, async_config, certificates, client,
    client_without_credentials, manager_config, nodelay, probe,
};

/// The shortest time between two questions to the sentinels after a failure.
const SENTINEL_ASK_EVERY: Duration = Duration::from_millis(200);

/// Connects to the master the sentinels at `urls` name.
pub(super) async fn open(settings: &RedisSettings, urls: &[&str]) -> anyhow::Result<Connection> {
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
