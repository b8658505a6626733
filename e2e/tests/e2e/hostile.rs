//! A hostile but fair client, replayed: every probe that once found a gateway
//! resource without a bound (metric series, log lines, sockets, file
//! descriptors) or a door that opened for nothing (an empty token), and the
//! bound or refusal that holds now. Loopback only; each probe bounded in time.

use std::time::{Duration, Instant};

use serde_json::Value;
use test_support::{NatsServer, RedisServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{
    GatewayProcess, StubModel, assert_error, body_when_answered, header, spawn_app, start_worker,
};
use crate::prometheus::start_worker_with_metrics;

fn address(url: &str) -> String {
    url.trim_start_matches("http://").to_owned()
}

/// Reads until the peer closes the connection (or resets it); fails the test
/// after `within`. Returns what was received.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> Vec<u8> {
    let mut received = Vec::new();
    let read = tokio::time::timeout(within, stream.read_to_end(&mut received)).await;
    assert!(
        read.is_ok(),
        "the gateway kept the connection open past {within:?}"
    );
    received
}

/// A gateway process in front of its own NATS and Redis, and a worker of `echo`.
struct Deployment {
    nats: NatsServer,
    redis: RedisServer,
    _worker: crate::helpers::RunningWorker,
}

impl Deployment {
    async fn start() -> Self {
        let nats = NatsServer::start();
        let redis = RedisServer::start();
        let worker = start_worker(&nats.url(), vec![StubModel::new("echo")]).await;
        Self {
            nats,
            redis,
            _worker: worker,
        }
    }

    fn args(&self) -> Vec<String> {
        vec![
            "--nats-url".into(),
            self.nats.url(),
            "--redis-url".into(),
            self.redis.url(),
        ]
    }

    async fn gateway(&self, extra: &[&str]) -> GatewayProcess {
        let mut args = self.args();
        args.extend(extra.iter().map(|arg| (*arg).to_owned()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        GatewayProcess::start(&args, &[]).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_model_names_add_no_metric_series_and_few_log_lines() {
    let deployment = Deployment::start().await;
    let gateway = deployment.gateway(&[]).await;
    let http = reqwest::Client::new();
    assert_eq!(
        http.post(format!("{}/v1/models/echo/predict", gateway.url))
            .body("{}")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let before = http
        .get(format!("{}/metrics", gateway.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();

    let started = Instant::now();
    let names = 2_000;
    for batch in 0..names / 200 {
        let requests = (0..200).map(|i| {
            let n = batch * 200 + i;
            let request = if n % 2 == 0 {
                http.post(format!("{}/v1/models/u{n}/predict", gateway.url))
                    .body("{}")
            } else {
                http.get(format!("{}/v1/models/g{n}/predict?x=1", gateway.url))
            };
            request.send()
        });
        for response in futures::future::join_all(requests).await {
            assert_error(response.unwrap(), 503, "no_worker").await;
        }
    }
    let windows_spanned = started.elapsed().as_secs() / 10 + 2;

    let after = http
        .get(format!("{}/metrics", gateway.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!after.contains("model=\"u") && !after.contains("model=\"g"));
    assert!(after.contains(r#"model="_other""#), "{after}");
    // A few `_other` series, whatever the number of names.
    assert!(
        after.len() < before.len() + 8 * 1024,
        "/metrics grew from {} to {} bytes",
        before.len(),
        after.len()
    );
    let logs = gateway.logs();
    let refused = logs
        .lines()
        .filter(|line| line.contains("model call refused"))
        .count();
    assert!(
        refused as u64 <= 10 * windows_spanned,
        "{refused} log lines for {names} refused calls"
    );
    assert!(
        !logs
            .lines()
            .any(|line| line.contains("ERROR") && line.contains("no worker")),
        "a client's made-up model is not the gateway's error"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_tokens_stop_the_gateway_at_startup_saying_which_setting() {
    for (variable, value) in [
        ("GATEWAY_API_TOKENS", "tok1,"),
        ("GATEWAY_API_TOKENS", ""),
        ("GATEWAY_ADMIN_TOKEN", ""),
    ] {
        let run = tokio::process::Command::new(test_support::built_binary("gateway"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--nats-url",
                "nats://127.0.0.1:1",
            ])
            .env(variable, value)
            .env("RUST_BACKTRACE", "0")
            .output();
        let output = tokio::time::timeout(Duration::from_secs(20), run)
            .await
            .expect("the gateway stops at once")
            .unwrap();
        let said = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            output.status.code(),
            Some(1),
            "{variable}={value:?}: {said}"
        );
        assert!(
            said.contains(variable) && said.contains("empty token"),
            "{variable}={value:?}: {said}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_tokens_hold_over_http2_whatever_the_scheme_is_spelt_and_from_files() {
    let dir = std::env::temp_dir().join(format!("hostile-tokens-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let token_file = dir.join("api-tokens");
    std::fs::write(&token_file, "from-the-file\n").unwrap();
    let app = spawn_app(&[
        "--api-token",
        "a",
        "--api-token-file",
        token_file.to_str().unwrap(),
        "--admin-token",
        "b",
    ])
    .await;
    // HTTP/2 without TLS, where an empty token reaches the gateway as sent.
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let predict = |authorization: &'static str| {
        h2.post(app.url("/v1/models/echo/predict"))
            .header("authorization", authorization)
            .body("{}")
            .send()
    };
    for refused in ["Bearer ", "Bearer", "bearer  ", "Basic a", "Bearer a "] {
        let response = predict(refused).await.unwrap();
        assert_eq!(response.version(), reqwest::Version::HTTP_2);
        if refused == "Bearer a " {
            // Trailing spaces are not part of the token.
            assert_eq!(response.status(), 200, "{refused:?}");
        } else {
            assert_error(response, 401, "unauthorized").await;
        }
    }
    let purge = h2
        .delete(app.url("/v1/models/echo/cache"))
        .header("authorization", "Bearer ")
        .send()
        .await
        .unwrap();
    assert_error(purge, 401, "unauthorized").await;
    for accepted in ["bearer a", "BEARER a", "Bearer from-the-file"] {
        assert_eq!(predict(accepted).await.unwrap().status(), 200, "{accepted}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_closed_after_the_client_timeout() {
    let app = spawn_app(&["--client-timeout", "500ms"]).await;
    let mut silent = TcpStream::connect(address(&app.address)).await.unwrap();
    closed_within(&mut silent, Duration::from_secs(5)).await;
    assert_eq!(app.get("/healthz").await.status(), 200);
}

/// The HTTP/2 connection preface and an empty SETTINGS frame.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_client_that_stops_after_the_preface_or_half_a_header_block_is_disconnected() {
    let app = spawn_app(&["--client-timeout", "500ms"]).await;
    let mut preface_only = TcpStream::connect(address(&app.address)).await.unwrap();
    preface_only.write_all(H2_PREFACE).await.unwrap();

    let mut half_headers = TcpStream::connect(address(&app.address)).await.unwrap();
    half_headers.write_all(H2_PREFACE).await.unwrap();
    // HEADERS on stream 1 without END_HEADERS: the block never ends.
    // `:method: GET` (static table 2), then nothing more.
    half_headers
        .write_all(&[0x00, 0x00, 0x01, 0x01, 0x00, 0x00, 0x00, 0x00, 0x01, 0x82])
        .await
        .unwrap();

    closed_within(&mut preface_only, Duration::from_secs(5)).await;
    closed_within(&mut half_headers, Duration::from_secs(5)).await;
    assert_eq!(app.get("/healthz").await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let app = spawn_app(&["--idle-timeout", "500ms"]).await;
    let mut keep_alive = TcpStream::connect(address(&app.address)).await.unwrap();
    keep_alive
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n")
        .await
        .unwrap();
    let received = closed_within(&mut keep_alive, Duration::from_secs(5)).await;
    let received = String::from_utf8_lossy(&received);
    assert!(received.starts_with("HTTP/1.1 200"), "{received}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_trickled_a_byte_at_a_time_is_cut_off_at_the_client_timeout() {
    let app = spawn_app(&["--client-timeout", "1s"]).await;
    let mut trickle = TcpStream::connect(address(&app.address)).await.unwrap();
    trickle
        .write_all(
            b"POST /v1/models/echo/predict HTTP/1.1\r\nHost: gateway\r\nContent-Length: 100\r\n\r\n",
        )
        .await
        .unwrap();
    let (mut reader, mut writer) = trickle.into_split();
    // A byte every 100 ms: each arrives well within the timeout, the whole
    // body would take 10 s.
    let sender = tokio::spawn(async move {
        let mut sent = 0;
        while sent < 100 && writer.write_all(b" ").await.is_ok() {
            sent += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        sent
    });
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(15), reader.read_to_end(&mut response))
        .await
        .expect("the gateway answers and closes")
        .ok();
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 400"), "{response}");
    assert!(response.contains("body_unreadable"), "{response}");
    sender.abort();
    let sent = sender.await.unwrap_or(0);
    assert!(sent < 100, "the whole body was read: {sent} bytes");
    assert_eq!(app.echo.calls(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_max_connections_are_closed_at_once() {
    let app = spawn_app(&["--max-connections", "4"]).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(TcpStream::connect(address(&app.address)).await.unwrap());
    }
    // The accept loop sees the four before the fifth.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut beyond = TcpStream::connect(address(&app.address)).await.unwrap();
    let received = closed_within(&mut beyond, Duration::from_secs(2)).await;
    assert!(received.is_empty());
    drop(held);
    // Closed on our side; the gateway notices and frees the slots.
    let metrics = body_when_answered(&app.url("/metrics"), "a slot coming free").await;
    // The fifth, and any try of ours before the slots came free.
    assert!(refused_connections(&metrics) >= 1, "{metrics}");
}

fn refused_connections(metrics: &str) -> u64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix("gateway_connections_refused_total "))
        .and_then(|value| value.trim().parse().ok())
        .expect("the counter is exposed")
}

/// `prlimit`, from util-linux, to run the gateway with few file descriptors.
fn with_open_file_limit(limit: u32) -> std::process::Command {
    let mut command = std::process::Command::new("prlimit");
    command
        .arg(format!("--nofile={limit}:{limit}"))
        .arg(test_support::built_binary("gateway"));
    command
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_connection_cap_comes_from_the_open_file_limit_and_holds() {
    let deployment = Deployment::start().await;
    let args = deployment.args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let gateway = GatewayProcess::start_with(with_open_file_limit(256), &args, &[]).await;
    // 256 less an eighth, kept for NATS, Redis and files.
    assert!(
        gateway.logs().contains("max_connections=192"),
        "{}",
        gateway.logs()
    );
    let mut held = Vec::new();
    for _ in 0..230 {
        held.push(TcpStream::connect(address(&gateway.url)).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(held);
    let metrics =
        body_when_answered(&format!("{}/metrics", gateway.url), "a slot coming free").await;
    let refused = refused_connections(&metrics);
    assert!(refused >= 230 - 192, "{refused} refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_file_descriptors_the_accept_loop_backs_off_and_recovers() {
    let deployment = Deployment::start().await;
    let mut args = deployment.args();
    args.extend(["--max-connections".to_owned(), "100000".to_owned()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let gateway = GatewayProcess::start_with(with_open_file_limit(64), &args, &[]).await;
    let mut held = Vec::new();
    for _ in 0..150 {
        held.push(TcpStream::connect(address(&gateway.url)).await.unwrap());
    }
    // Accepts fail for a while: out of descriptors.
    tokio::time::sleep(Duration::from_secs(2)).await;
    drop(held);
    body_when_answered(
        &format!("{}/healthz", gateway.url),
        "the gateway recovering",
    )
    .await;
    let logs = gateway.logs();
    let failed = logs
        .lines()
        .filter(|line| line.contains("could not accept"))
        .count();
    assert!(failed >= 1, "the accepts did fail:\n{logs}");
    assert!(failed <= 20, "{failed} log lines for failed accepts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_escapes_that_do_not_decode_are_refused() {
    let app = spawn_app(&[]).await;
    for query in [
        "product_id=%ff",
        "product_id=%fe",
        "product_id=%zz",
        "product_id=%2",
    ] {
        let response = app.get(&format!("/v1/models/echo/predict?{query}")).await;
        assert_error(response, 400, "invalid_query").await;
    }
    assert_eq!(app.echo.calls(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_request_id_is_replaced_and_never_echoed_or_logged() {
    let deployment = Deployment::start().await;
    let gateway = deployment.gateway(&[]).await;
    let http = reqwest::Client::new();
    let huge = "r".repeat(10_000);
    for sent in [huge.as_str(), "has space", "tab\there"] {
        let response = http
            .get(format!("{}/healthz", gateway.url))
            .header("x-request-id", sent)
            .send()
            .await
            .unwrap();
        let echoed = header(&response, "x-request-id");
        assert_eq!(echoed.len(), 36, "a UUID of the gateway's: {echoed:?}");
    }
    let kept = http
        .get(format!("{}/healthz", gateway.url))
        .header("x-request-id", "client-chosen-id-42")
        .send()
        .await
        .unwrap();
    assert_eq!(header(&kept, "x-request-id"), "client-chosen-id-42");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let logs = gateway.logs();
    assert!(!logs.contains(&huge[..200]));
    assert!(logs.contains("client-chosen-id-42"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workers_metrics_listener_closes_connections_beyond_its_cap() {
    let nats = NatsServer::start();
    let (metrics, _stop) =
        start_worker_with_metrics(&nats.url(), vec![StubModel::new("m")], &[]).await;
    let mut held = Vec::new();
    for _ in 0..64 {
        held.push(TcpStream::connect(&metrics).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut beyond = TcpStream::connect(&metrics).await.unwrap();
    assert!(
        closed_within(&mut beyond, Duration::from_secs(2))
            .await
            .is_empty()
    );
    drop(held);
    let text = body_when_answered(&format!("http://{metrics}/metrics"), "a slot coming free").await;
    assert!(text.contains("# HELP"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_slower_than_the_attempt_timeout_is_asked_once() {
    let mut app = spawn_app(&["--request-timeout", "8s"]).await;
    let slow = StubModel::slow("llm-ish", Duration::from_secs(5));
    app.workers
        .push(start_worker(&app.nats.url(), vec![slow.clone()]).await);
    let response = app.post("/v1/models/llm-ish/predict", "{}").await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["call"], 1);
    // Past the 4 s attempt timeout, past the 2 s silence bound: asked once.
    assert_eq!(slow.calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renamed_variable_still_works_under_its_old_name_with_a_warning() {
    let deployment = Deployment::start().await;
    let args = deployment.args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // The helper sets the new name; the old one must be read only without it.
    let mut command = std::process::Command::new(test_support::built_binary("gateway"));
    command.env_remove("GATEWAY_LOG_FORMAT");
    let gateway = GatewayProcess::start_with(command, &args, &[("LOG_FORMAT", "json")]).await;
    let logs = gateway.logs();
    let first: Value = serde_json::from_str(logs.lines().next().unwrap_or_default())
        .unwrap_or_else(|_| panic!("JSON lines, as LOG_FORMAT asked:\n{logs}"));
    assert!(first.is_object());
    assert!(
        logs.contains("LOG_FORMAT is deprecated; set GATEWAY_LOG_FORMAT instead"),
        "{logs}"
    );
}
