//! The hostile-client probes of sockets and connections: silent, half-spoken
//! and idle connections, trickled bodies, connections past the cap, a gateway
//! out of file descriptors, a worker's metrics listener past its cap.

use std::time::Duration;

use test_support::NatsServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{GatewayProcess, StubModel, body_when_answered, spawn_app};
use crate::hostile::{Deployment, address, closed_within};
use crate::prometheus::start_worker_with_metrics;

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
    let mut gateway = GatewayProcess::start_with(with_open_file_limit(64), &args, &[]).await;
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
    let logs = gateway.stop().await;
    let failed = logs
        .lines()
        .filter(|line| line.contains("could not accept"))
        .count();
    assert!(failed >= 1, "the accepts did fail:\n{logs}");
    assert!(failed <= 20, "{failed} log lines for failed accepts");
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
