//! `--redis-mode`: a setting that does not match the servers stops the gateway
//! at startup, with exit code 1 and a message naming the problem.

use std::time::Duration;

use test_support::{
    Certificates, NatsServer, RedisAccess, RedisCluster, RedisSentinels, RedisServer,
    SENTINEL_MASTER_NAME, free_port,
};

use crate::helpers::{RedisMode, StubModel, TestRedis, header, start_gateway_on, start_worker};
use crate::in_every_redis_mode;

/// Runs the gateway binary with `args`; returns its exit code and what it wrote.
async fn gateway_exit(nats: &NatsServer, args: &[&str]) -> (Option<i32>, String) {
    let run = tokio::process::Command::new(test_support::built_binary("gateway"))
        .args(["--listen", "127.0.0.1:0", "--nats-url", &nats.url()])
        .args(args)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("the gateway stops by itself: it must not hang on a bad setting")
        .expect("the gateway binary runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code(), text)
}

async fn assert_refused(nats: &NatsServer, args: &[&str], names: &str) {
    let (code, text) = gateway_exit(nats, args).await;
    assert_eq!(code, Some(1), "exit code; output: {text}");
    assert!(text.contains(names), "{names:?} not in: {text}");
}

#[tokio::test]
async fn a_cluster_of_which_no_node_answers_is_refused() {
    let nats = NatsServer::start();
    let seeds = format!(
        "redis://127.0.0.1:{},redis://127.0.0.1:{}",
        free_port(),
        free_port()
    );
    assert_refused(
        &nats,
        &["--redis-mode", "cluster", "--redis-url", &seeds],
        "no node of the Redis Cluster answers",
    )
    .await;
}

#[tokio::test]
async fn a_cluster_seed_that_is_not_in_cluster_mode_is_refused() {
    let nats = NatsServer::start();
    let redis = RedisServer::start();
    assert_refused(
        &nats,
        &["--redis-mode", "cluster", "--redis-url", &redis.url()],
        "is not a Redis Cluster node",
    )
    .await;
}

#[tokio::test]
async fn a_cluster_node_given_as_a_standalone_server_is_refused() {
    let nats = NatsServer::start();
    let cluster = RedisCluster::start();
    let one = cluster.urls().split(',').next().unwrap().to_owned();
    assert_refused(
        &nats,
        &["--redis-url", &one],
        "is a Redis Cluster node: set --redis-mode cluster",
    )
    .await;
}

#[tokio::test]
async fn several_urls_in_standalone_mode_are_refused() {
    let nats = NatsServer::start();
    let redis = RedisServer::start();
    let two = format!("{},{}", redis.url(), redis.url());
    assert_refused(&nats, &["--redis-url", &two], "lists 2 servers").await;
}

#[tokio::test]
async fn an_unknown_sentinel_master_name_is_refused() {
    let nats = NatsServer::start();
    let sentinels = RedisSentinels::start();
    assert_refused(
        &nats,
        &[
            "--redis-mode",
            "sentinel",
            "--redis-url",
            &sentinels.urls(),
            "--redis-sentinel-master",
            "no-such-master",
        ],
        "monitor no master named \"no-such-master\"",
    )
    .await;
    assert_refused(
        &nats,
        &["--redis-mode", "sentinel", "--redis-url", &sentinels.urls()],
        "needs --redis-sentinel-master",
    )
    .await;
}

#[tokio::test]
async fn a_redis_server_given_as_a_sentinel_is_refused() {
    let nats = NatsServer::start();
    let redis = RedisServer::start();
    assert_refused(
        &nats,
        &[
            "--redis-mode",
            "sentinel",
            "--redis-url",
            &redis.url(),
            "--redis-sentinel-master",
            SENTINEL_MASTER_NAME,
        ],
        "is not a sentinel",
    )
    .await;
}

/// A gateway in front of `redis` serves a miss then a hit, and one given a
/// wrong password stops at startup saying `refusal`, the password unshown.
async fn serves_and_refuses_a_wrong_password(redis: &TestRedis, key_prefix: &str, refusal: &str) {
    let nats = NatsServer::start();
    let _worker = start_worker(&nats.url(), vec![StubModel::new("echo")]).await;
    let (gateway, _stop) = start_gateway_on(&nats.url(), redis, key_prefix, &[]).await;
    let http = reqwest::Client::new();
    for expected in ["MISS", "HIT"] {
        let response = http
            .post(format!("{gateway}/v1/models/echo/predict"))
            .body(r#"{"x":1}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(header(&response, "x-cache"), expected);
    }
    let wrong = redis.gateway_args_with_password("wrong");
    let wrong: Vec<&str> = wrong.iter().map(String::as_str).collect();
    let (code, text) = gateway_exit(&nats, &wrong).await;
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains(refusal), "{text}");
    assert!(
        !text.contains("wrong@"),
        "the password is not shown: {text}"
    );
}

/// An ACL user over TLS with a private CA: the gateway serves through it in
/// every mode (for sentinels, the same user and CA reach the sentinels and
/// the master they name), and a wrong password stops it at startup, unshown.
async fn an_acl_user_over_tls_serves_and_a_wrong_password_is_refused(mode: RedisMode) {
    let certificates = Certificates::generate();
    let redis = TestRedis::start_with(
        mode,
        RedisAccess::user("gateway", "s3cret").over_tls(&certificates),
    );
    serves_and_refuses_a_wrong_password(&redis, "acl:", "refused the credentials").await;
}

in_every_redis_mode!(an_acl_user_over_tls_serves_and_a_wrong_password_is_refused);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_sentinels_before_a_protected_master_are_asked_without_credentials() {
    let sentinels = RedisSentinels::start_with_separate(
        RedisAccess::user("gateway", "s3cret"),
        RedisAccess::default(),
    );
    serves_and_refuses_a_wrong_password(
        &TestRedis::Sentinel(sentinels),
        "open-sentinels:",
        "the sentinels name refused the credentials",
    )
    .await;
}
