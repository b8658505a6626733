//! Opening the gateway's connection to Redis from its settings.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::RedisSettings;

/// A connection to the Redis `settings` name, opened lazily (the gateway starts,
/// and answers from the workers, while Redis is down) and reopened by itself.
pub fn open(settings: &RedisSettings) -> Result<ConnectionManager, redis::RedisError> {
    // Small commands pipelined on one connection: without TCP_NODELAY, Nagle's
    // algorithm holds each one back until the previous is acknowledged.
    let connection_info = redis::IntoConnectionInfo::into_connection_info(settings.url.as_str())?
        .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
    let client = match &settings.tls_ca {
        None => redis::Client::open(connection_info)?,
        Some(ca) => {
            let root_cert = std::fs::read(ca).map_err(|err| {
                redis::RedisError::from((
                    redis::ErrorKind::Io,
                    "cannot read the Redis CA file",
                    format!("{}: {err}", ca.display()),
                ))
            })?;
            redis::Client::build_with_tls(
                connection_info,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root_cert),
                },
            )?
        }
    };
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(settings.timeout))
        .set_response_timeout(Some(settings.timeout))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(100));
    ConnectionManager::new_lazy_with_config(client, config)
}
