//! `--redis-mode`: a setting that does not match the servers stops the gateway
//! at startup, with exit code 1 and a message naming the problem.

use std::time::Duration;

use test_support::{
    NatsServer, RedisCluster, RedisSentinels, RedisServer, SENTINEL_MASTER_NAME, free_port,
};

/// Runs the gateway binary with `args`; returns its exit code and what it wrote.
async fn gateway_exit(nats: &NatsServer, args: &[&str]) -> (Option<i32>, String) {
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
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

#[tokio::test]
async fn a_cluster_that_requires_a_password_serves_with_it_and_refuses_a_wrong_one() {
    let nats = NatsServer::start();
    let cluster = RedisCluster::start_with_password(Some("s3cret"));
    let _worker =
        crate::helpers::start_worker(&nats.url(), vec![crate::helpers::StubModel::new("echo")])
            .await;
    let (gateway, _stop) = crate::helpers::launch_gateway(
        &nats.url(),
        &[
            "--redis-mode".into(),
            "cluster".into(),
            "--redis-url".into(),
            cluster.urls(),
        ],
        "auth:",
        &[],
    )
    .await;
    let http = reqwest::Client::new();
    for expected in ["MISS", "HIT"] {
        let response = http
            .post(format!("{gateway}/v1/models/echo/predict"))
            .body(r#"{"x":1}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(crate::helpers::header(&response, "x-cache"), expected);
    }
    let wrong = cluster.urls().replace("s3cret", "wrong");
    let (code, text) =
        gateway_exit(&nats, &["--redis-mode", "cluster", "--redis-url", &wrong]).await;
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("refused the credentials"), "{text}");
    assert!(
        !text.contains("wrong@"),
        "the password is not shown: {text}"
    );
}
