//! The Redis-only hits and the misses with the cache in a Redis Cluster of
//! three masters, against the standalone Redis in the same run: first without
//! replicas, like the standalone server, for what the cluster client costs;
//! then the misses again with a replica per master, for what replication adds
//! when every server shares this machine's cores.

use test_support::RedisCluster;

use crate::hits::TEN_THOUSAND_KEYS;
use crate::load;
use crate::report::{Row, versus};
use crate::settings::Run;
use crate::stack::{self, System};
use crate::traffic::{check_clean, fill};

/// The rows; `standalone_port` is the Redis-only gateway on the standalone
/// Redis, the baseline.
pub async fn rows(run: &Run, system: &System, standalone_port: u16) -> anyhow::Result<Vec<Row>> {
    type StartCluster = fn() -> RedisCluster;
    let shapes: [(&str, StartCluster, bool); 2] = [
        ("3 masters", RedisCluster::start_without_replicas, true),
        ("3 masters, a replica each", RedisCluster::start, false),
    ];
    let mut rows = Vec::new();
    for (index, (shape, start, is_goal)) in shapes.into_iter().enumerate() {
        run.say(&format!("Redis Cluster ({shape}): warming 10 000 keys"));
        let cluster = start();
        let key_prefix = format!("c{index}:");
        let (_cluster_gateway, cluster_port) = stack::gateway(
            &system.nats.url(),
            &cluster.urls(),
            &[
                "--redis-mode",
                "cluster",
                "--cache-ttl",
                "30m",
                "--key-prefix",
                &key_prefix,
                "--local-capacity",
                "0",
            ],
        )
        .await?;
        let goal = if is_goal {
            ("≥ 0.9× standalone", Some(0.9))
        } else {
            ("–", None)
        };
        if is_goal {
            fill(cluster_port, 10_000, 64, |i| {
                format!("/v1/models/price/predict?product_id=K{i}")
            })
            .await?;
            run.say(&format!(
                "cache hit, 10 000 keys: Redis Cluster ({shape}) alternating with standalone Redis"
            ));
            let cluster_hits = load::interleaved_between(
                (standalone_port, |_| run.round_load(TEN_THOUSAND_KEYS)),
                cluster_port,
                |_| run.round_load(TEN_THOUSAND_KEYS),
                run.rounds,
            )?;
            check_clean("cluster hits", &cluster_hits.scenario)?;
            rows.push(versus(
                &format!("cache hit, 10 000 keys, Redis Cluster ({shape})"),
                &cluster_hits,
                run.connections,
                "standalone Redis",
                goal,
            ));
        }
        run.say(&format!(
            "cache miss, distinct inputs: Redis Cluster ({shape}) alternating with standalone Redis"
        ));
        let cluster_misses = load::interleaved_between(
            (standalone_port, |round| {
                run.distinct_round(&format!("S{index}M"), round)
            }),
            cluster_port,
            |round| run.distinct_round(&format!("C{index}M"), round),
            run.rounds,
        )?;
        check_clean("cluster misses", &cluster_misses.scenario)?;
        rows.push(versus(
            &format!("cache miss, distinct inputs, Redis Cluster ({shape})"),
            &cluster_misses,
            run.connections,
            "standalone Redis",
            goal,
        ));
    }
    Ok(rows)
}
