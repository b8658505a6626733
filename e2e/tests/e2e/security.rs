//! Credentials reach NATS and Redis and never the logs; foreign cache values are
//! never served.

use std::process::{Command, Stdio};

use clap::Parser;
use gateway::cache::CacheKey;
use prediction_contract::{CanonicalInput, ModelName};
use test_support::{NatsServer, RedisAccess, RedisServer};

use crate::helpers::{
    RedisMode, StubModel, TestRedis, assert_error, body_when_answered, header, spawn_app,
    start_gateway_on, start_worker,
};
use crate::in_every_redis_mode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_value_under_a_cache_key_is_a_miss_and_is_overwritten() {
    let app = spawn_app(&["--local-capacity", "0"]).await;
    let key = CacheKey::new(
        &app.key_prefix,
        &ModelName::parse("echo").unwrap(),
        &CanonicalInput::from_json_slice(br#"{"c":1}"#).unwrap(),
    );
    let mut redis = app.redis_connection().await;
    for foreign in [
        &b"\xff\x00garbage"[..],
        br#"{"prediction":"not an entry"}"#,
        &[b'x'; 100_000],
    ] {
        redis::cmd("SET")
            .arg(key.as_str())
            .arg(foreign)
            .query_async::<()>(&mut redis)
            .await
            .unwrap();
        let response = app.post("/v1/models/echo/predict", r#"{"c":1}"#).await;
        assert_eq!(response.status(), 200);
        assert_eq!(header(&response, "x-cache"), "MISS");
        let again = app.post("/v1/models/echo/predict", r#"{"c":1}"#).await;
        assert_eq!(
            header(&again, "x-cache"),
            "HIT",
            "the foreign value was overwritten"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_in_urls_authenticate_and_never_reach_the_logs() {
    const NATS_SECRET: &str = "n4ts-s3cret-pw";
    const REDIS_SECRET: &str = "r3dis-s3cret-pw";
    let nats = NatsServer::start_with_args(&["--user", "gateway", "--pass", NATS_SECRET]);
    let redis = RedisServer::start_with_args(&["--requirepass", REDIS_SECRET]);
    let nats_url = format!("nats://gateway:{NATS_SECRET}@127.0.0.1:{}", nats.port());
    let redis_url = format!("redis://:{REDIS_SECRET}@127.0.0.1:{}", redis.port());
    let _worker = start_worker(&nats_url, vec![StubModel::new("echo")]).await;

    let port = test_support::free_port();
    let log_path = std::env::temp_dir().join(format!("gateway-secrets-{}.log", std::process::id()));
    let mut gateway = Command::new(test_support::built_binary("gateway"))
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--nats-url",
            &nats_url,
            "--redis-url",
            &redis_url,
        ])
        .stdout(std::fs::File::create(&log_path).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}");
    body_when_answered(&format!("{url}/healthz"), "the gateway starting").await;

    assert_ready_and_caching(&http, &url, r#"{"s":1}"#, "both credentials were accepted").await;
    let metrics = body_when_answered(&format!("{url}/metrics"), "the metrics").await;

    let _ = Command::new("kill")
        .args(["-TERM", &gateway.id().to_string()])
        .status();
    gateway.wait().unwrap();
    let logs = std::fs::read_to_string(&log_path).unwrap();
    let _ = std::fs::remove_file(&log_path);
    assert!(
        logs.contains("gateway ready"),
        "these are the gateway's logs:\n{logs}"
    );
    assert!(
        logs.contains("***@127.0.0.1"),
        "the URLs are logged redacted:\n{logs}"
    );
    for secret in [NATS_SECRET, REDIS_SECRET] {
        assert!(
            !logs.contains(secret),
            "a secret leaked into the logs:\n{logs}"
        );
        assert!(!metrics.contains(secret), "a secret leaked into /metrics");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tokens_configured_each_route_asks_for_the_right_one() {
    let app = spawn_app(&[
        "--api-token",
        "api-one,api-two",
        "--admin-token",
        "admin-s3cret",
        "--protect-metrics",
    ])
    .await;
    let predict = |token: Option<&str>| {
        let mut request = app
            .http
            .post(app.url("/v1/models/echo/predict"))
            .body(r#"{"t":1}"#);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    let missing = predict(None).await.unwrap();
    assert_eq!(
        header(&missing, "www-authenticate"),
        r#"Bearer realm="prediction-gateway""#
    );
    assert_error(missing, 401, "unauthorized").await;
    assert_error(
        predict(Some("api-thre")).await.unwrap(),
        401,
        "unauthorized",
    )
    .await;
    for token in ["api-one", "api-two"] {
        assert_eq!(predict(Some(token)).await.unwrap().status(), 200, "{token}");
    }
    assert_eq!(
        app.echo.calls(),
        1,
        "refused requests never reached the model"
    );
    // The original route as well, which without tokens is answered ahead of
    // the router.
    let original = |token: Option<&str>| {
        let mut request = app
            .http
            .post(app.url("/predict"))
            .body(r#"{"product_id":"ETH/EUR"}"#);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    assert_error(original(None).await.unwrap(), 401, "unauthorized").await;
    assert_eq!(original(Some("api-two")).await.unwrap().status(), 200);

    let purge = |token: &str| {
        app.http
            .delete(app.url("/v1/models/echo/cache"))
            .bearer_auth(token)
            .send()
    };
    let forbidden = purge("api-one").await.unwrap();
    assert!(header(&forbidden, "www-authenticate").contains("insufficient_scope"));
    assert_error(forbidden, 403, "forbidden").await;
    assert_eq!(purge("admin-s3cret").await.unwrap().status(), 200);

    for open in ["/healthz", "/health", "/readyz"] {
        assert_eq!(app.get(open).await.status(), 200, "{open} stays open");
    }
    assert_error(app.get("/metrics").await, 401, "unauthorized").await;
    assert_error(app.get("/openapi.json").await, 401, "unauthorized").await;
    let metrics = app
        .http
        .get(app.url("/metrics"))
        .bearer_auth("api-two")
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_and_redis_over_tls_with_a_private_ca() {
    let certificates = test_support::Certificates::generate();
    let (cert, key, ca) = (
        certificates.server_cert.to_str().unwrap(),
        certificates.server_key.to_str().unwrap(),
        certificates.ca.to_str().unwrap(),
    );
    let nats = NatsServer::start_with_args(&["--tls", "--tlscert", cert, "--tlskey", key]);
    let redis = RedisServer::start_tls(&certificates);
    let nats_url = format!("tls://127.0.0.1:{}", nats.port());
    let redis_url = format!("rediss://127.0.0.1:{}", redis.port());

    let worker_config = worker::WorkerConfig::try_parse_from([
        "worker",
        "--nats-url",
        &nats_url,
        "--nats-tls-ca",
        ca,
    ])
    .unwrap();
    let worker = worker::Worker::build_with_models(&worker_config, vec![StubModel::new("echo")])
        .await
        .expect("the worker connects over TLS");
    let (stop_worker, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker_task = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));

    let config = gateway::GatewayConfig::try_parse_from([
        "gateway",
        "--listen",
        "127.0.0.1:0",
        "--nats-url",
        &nats_url,
        "--nats-tls-ca",
        ca,
        "--redis-url",
        &redis_url,
        "--redis-tls-ca",
        ca,
    ])
    .unwrap();
    let app = gateway::Application::build(config).await.unwrap();
    let url = format!("http://127.0.0.1:{}", app.port());
    let (stop_gateway, gateway_stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(app.run(async {
        let _ = gateway_stopped.await;
    }));

    let http = reqwest::Client::new();
    assert_ready_and_caching(
        &http,
        &url,
        r#"{"tls":true}"#,
        "both TLS connections are up",
    )
    .await;
    let _ = stop_gateway.send(());
    let _ = stop_worker.send(());
    worker_task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_and_gateways_authenticate_with_an_nkey() {
    let user = nkeys::KeyPair::new_user();
    let seed = user.seed().unwrap();
    let config_file = std::env::temp_dir().join(format!("nats-nkey-{}.conf", std::process::id()));
    std::fs::write(
        &config_file,
        format!(
            "authorization {{ users = [ {{ nkey: \"{}\" }} ] }}\n",
            user.public_key()
        ),
    )
    .unwrap();
    let nats = NatsServer::start_with_args(&["-c", config_file.to_str().unwrap()]);
    let redis = RedisServer::start();

    let refused =
        worker::WorkerConfig::try_parse_from(["worker", "--nats-url", &nats.url()]).unwrap();
    let err = worker::Worker::build_with_models(&refused, vec![StubModel::new("echo")])
        .await
        .expect_err("without the NKey the server refuses the worker");
    assert!(format!("{err:#}").contains("authorization"), "{err:#}");

    let worker_config = worker::WorkerConfig::try_parse_from([
        "worker",
        "--nats-url",
        &nats.url(),
        "--nats-nkey",
        &seed,
    ])
    .unwrap();
    let worker = worker::Worker::build_with_models(&worker_config, vec![StubModel::new("echo")])
        .await
        .expect("with the NKey the worker connects");
    let (stop_worker, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker_task = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));
    let (address, _stop_gateway) =
        crate::helpers::start_gateway(&nats.url(), &redis.url(), "nkey:", &["--nats-nkey", &seed])
            .await;
    let response = reqwest::Client::new()
        .post(format!("{address}/v1/models/echo/predict"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let _ = stop_worker.send(());
    worker_task.await.unwrap().unwrap();
    let _ = std::fs::remove_file(config_file);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_token_in_the_url_authenticates() {
    let nats = NatsServer::start_with_args(&["--auth", "t0ken-s3cret"]);
    let redis = RedisServer::start();
    let url = format!("nats://t0ken-s3cret@127.0.0.1:{}", nats.port());
    let _worker = start_worker(&url, vec![StubModel::new("echo")]).await;
    let (address, _stop) = crate::helpers::start_gateway(&url, &redis.url(), "token:", &[]).await;
    let response = reqwest::Client::new()
        .post(format!("{address}/v1/models/echo/predict"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

/// Exactly the rights SECURITY.md tells operators to give the gateways' Redis
/// user, in every mode, on the key prefix `acl:`.
fn gateway_rights(mode: RedisMode) -> Vec<&'static str> {
    let mut rights = vec![
        "~acl:*",
        "+get",
        "+set",
        "+getdel",
        "+del",
        "+unlink",
        "+scan",
        "+evalsha",
        "+eval",
        "+script|load",
        "+pexpire",
        "+pttl",
        "+ping",
    ];
    match mode {
        RedisMode::Standalone => {}
        RedisMode::Cluster => rights.extend(["+cluster|slots", "+cluster|nodes"]),
        RedisMode::Sentinel => rights.push("+role"),
    }
    rights
}

async fn a_redis_acl_user_with_only_the_documented_rights_serves(mode: RedisMode) {
    let redis = TestRedis::start_with(
        mode,
        RedisAccess::user("gateway", "acl-s3cret").with_rules(&gateway_rights(mode)),
    );
    let nats = NatsServer::start();
    let _worker = start_worker(&nats.url(), vec![StubModel::new("echo")]).await;
    let (address, _stop) = start_gateway_on(&nats.url(), &redis, "acl:", &[]).await;
    let http = reqwest::Client::new();
    assert_ready_and_caching(&http, &address, r#"{"acl":1}"#, "the ACL user was accepted").await;
}

in_every_redis_mode!(a_redis_acl_user_with_only_the_documented_rights_serves);

/// `/readyz` says ok, and the same input twice is a MISS then a HIT: NATS, Redis
/// and a worker all work over whatever connection settings the test chose.
async fn assert_ready_and_caching(http: &reqwest::Client, url: &str, input: &str, what: &str) {
    let ready: serde_json::Value = http
        .get(format!("{url}/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["status"], "ok", "{what}: {ready}");
    for expected in ["MISS", "HIT"] {
        let response = http
            .post(format!("{url}/v1/models/echo/predict"))
            .body(input.to_owned())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(header(&response, "x-cache"), expected, "{what}");
    }
}
