//! A hostile but fair client, replayed: every probe that once found a gateway
//! resource without a bound (metric series, log lines, sockets, file
//! descriptors) or a door that opened for nothing (an empty token), and the
//! bound or refusal that holds now. Loopback only; each probe bounded in time.
//! The probes of sockets and connections are in `hostile_connections`.

use std::time::{Duration, Instant};

use serde_json::Value;
use test_support::{NatsServer, RedisServer};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::helpers::{
    GatewayProcess, StubModel, assert_error, body_when_answered, header, spawn_app, start_worker,
};

pub(crate) fn address(url: &str) -> String {
    url.trim_start_matches("http://").to_owned()
}

/// Reads until the peer closes the connection (or resets it); fails the test
/// after `within`. Returns what was received.
pub(crate) async fn closed_within(stream: &mut TcpStream, within: Duration) -> Vec<u8> {
    let mut received = Vec::new();
    let read = tokio::time::timeout(within, stream.read_to_end(&mut received)).await;
    assert!(
        read.is_ok(),
        "the gateway kept the connection open past {within:?}"
    );
    received
}

/// A gateway process in front of its own NATS and Redis, and a worker of `echo`.
pub(crate) struct Deployment {
    nats: NatsServer,
    redis: RedisServer,
    _worker: crate::helpers::RunningWorker,
}

impl Deployment {
    pub(crate) async fn start() -> Self {
        let nats = NatsServer::start();
        let redis = RedisServer::start();
        let worker = start_worker(&nats.url(), vec![StubModel::new("echo")]).await;
        Self {
            nats,
            redis,
            _worker: worker,
        }
    }

    pub(crate) fn args(&self) -> Vec<String> {
        vec![
            "--nats-url".into(),
            self.nats.url(),
            "--redis-url".into(),
            self.redis.url(),
        ]
    }

    pub(crate) async fn gateway(&self, extra: &[&str]) -> GatewayProcess {
        let mut args = self.args();
        args.extend(extra.iter().map(|arg| (*arg).to_owned()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        GatewayProcess::start(&args, &[]).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_model_names_add_no_metric_series_and_few_log_lines() {
    let deployment = Deployment::start().await;
    let mut gateway = deployment.gateway(&[]).await;
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
    let before = body_when_answered(&format!("{}/metrics", gateway.url), "the metrics").await;

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

    let after = body_when_answered(&format!("{}/metrics", gateway.url), "the metrics").await;
    assert!(!after.contains("model=\"u") && !after.contains("model=\"g"));
    assert!(after.contains(r#"model="_other""#), "{after}");
    // A few `_other` series, whatever the number of names.
    assert!(
        after.len() < before.len() + 8 * 1024,
        "/metrics grew from {} to {} bytes",
        before.len(),
        after.len()
    );
    let logs = gateway.stop().await;
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
    let mut gateway = deployment.gateway(&[]).await;
    let http = reqwest::Client::new();
    let huge = "r".repeat(10_000);
    for sent in [huge.as_str(), "has space", "tab\there"] {
        let response = http
            .get(format!("{}/v1/models", gateway.url))
            .header("x-request-id", sent)
            .send()
            .await
            .unwrap();
        let echoed = header(&response, "x-request-id");
        assert_eq!(echoed.len(), 36, "a UUID of the gateway's: {echoed:?}");
    }
    let kept = http
        .get(format!("{}/v1/models", gateway.url))
        .header("x-request-id", "client-chosen-id-42")
        .send()
        .await
        .unwrap();
    assert_eq!(header(&kept, "x-request-id"), "client-chosen-id-42");
    let logs = gateway.stop().await;
    assert!(!logs.contains(&huge[..200]));
    assert!(logs.contains("client-chosen-id-42"), "{logs}");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_and_scrapes_are_logged_at_debug_and_predictions_at_info() {
    let deployment = Deployment::start().await;
    let args = deployment.args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let probe_paths = [
        "/healthz",
        "/readyz",
        "/health",
        "/metrics",
        "/v2/health/ready",
    ];
    for level in ["info", "debug"] {
        let mut gateway = GatewayProcess::start(&args, &[("RUST_LOG", level)]).await;
        let http = reqwest::Client::new();
        for path in probe_paths {
            for _ in 0..3 {
                let response = http
                    .get(format!("{}{path}", gateway.url))
                    .header("x-request-id", format!("{path}-probe"))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200, "{path}");
            }
        }
        let prediction = http
            .post(format!("{}/v1/models/echo/predict", gateway.url))
            .json(&serde_json::json!({"x": 1}))
            .send()
            .await
            .unwrap();
        assert_eq!(prediction.status(), 200);
        let logs = gateway.stop().await;
        assert!(
            logs.contains(r#"path="/v1/models/echo/predict""#),
            "{level}: {logs}"
        );
        for path in probe_paths {
            let lines = logs
                .lines()
                .filter(|line| line.contains(&format!("{path}-probe")))
                .count();
            let expected = if level == "debug" { 3 } else { 0 };
            assert_eq!(lines, expected, "{level}: lines for {path}");
        }
    }
}
