//! Redis Cluster: the connection (redis-rs `cluster-async`, which follows
//! `MOVED`/`ASK` and topology changes), after checking the seeds are cluster
//! nodes; and the masters a purge scans.

use anyhow::{Context, bail};
use prediction_runtime::telemetry::redact_url;
use redis::cluster::ClusterClientBuilder;
use redis::{IntoConnectionInfo, RedisResult};

use super::{Connection, RedisSettings, ServerKind, certificates, client, nodelay, probe};

/// Connects to the cluster whose seed nodes `urls` lists.
pub(super) async fn open(settings: &RedisSettings, urls: &[&str]) -> anyhow::Result<Connection> {
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

/// The masters in a `CLUSTER NODES` listing that are not failing and serve
/// slots. A master without slots holds no keys, and may be a node still
/// becoming a replica (just after the cluster is created, before every node
/// has heard), which the cluster client has no connection to.
pub(super) fn cluster_masters(listing: &str) -> Vec<(String, u16)> {
    listing
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let flags = fields.get(2)?;
            if !flags.split(',').any(|flag| flag == "master") || flags.contains("fail") {
                return None;
            }
            // Fields 8 and on are the slot ranges the node serves.
            if fields.len() <= 8 {
                return None;
            }
            // `host:port@cluster-port[,hostname]`
            let address = fields.get(1)?.split(['@', ',']).next()?;
            let (host, port) = address.rsplit_once(':')?;
            Some((host.to_owned(), port.parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_masters_to_scan_are_the_live_ones_serving_slots() {
        let listing = "\
07c37dfeb2352e0b 127.0.0.1:30004@31004 slave e7d1eecce10fd6bb 0 1426238317239 4 connected
67ed2db8d677e59e 127.0.0.1:30002@31002 master - 0 1426238316232 2 connected 5461-10922
292f8b365bb7edb5 127.0.0.1:30003@31003 master - 0 1426238318243 3 connected 10923-16383
6ec23923021cf3ff 127.0.0.1:30005@31005 master,fail - 1426238316232 0 5 connected
58c8b0e5a8fc2d3e 127.0.0.1:30006@31006 master - 0 1426238316232 6 connected
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
