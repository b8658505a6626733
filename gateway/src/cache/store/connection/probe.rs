//! Asking a server what it is (a server, a cluster node, a sentinel) and
//! whether it takes the credentials, before the connection is opened.

use std::time::Duration;

use anyhow::bail;
use prediction_runtime::telemetry::redact_url;

/// What a server says it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ServerKind {
    /// A Redis server on its own, a master or a replica.
    Server,
    ClusterNode,
    Sentinel,
    /// One that lets the gateway's user in but not run `INFO` (an ACL user
    /// with only the commands the cache sends): taken for what the mode says.
    Unknown,
}

/// What asking a server what it is found.
pub(super) enum Probe {
    Answered(ServerKind),
    /// It did not answer in time.
    Unreachable,
    /// It answered, and refused the credentials (or their absence).
    Refused(String),
}

impl Probe {
    /// The server's kind, or `None` if it did not answer; refused credentials
    /// stop the startup.
    pub(super) fn answered(self, url: &str) -> anyhow::Result<Option<ServerKind>> {
        match self {
            Self::Answered(kind) => Ok(Some(kind)),
            Self::Unreachable => Ok(None),
            Self::Refused(reason) => bail!("{} refused the credentials: {reason}", redact_url(url)),
        }
    }
}

/// Asks the server of `client` what it is.
pub(super) async fn probe(client: &redis::Client, timeout: Duration) -> Probe {
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
