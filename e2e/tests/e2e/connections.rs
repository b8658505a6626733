//! Slow clients cannot hold the gateway, and shutdown finishes what is in flight.

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{StubModel, spawn_app, start_worker};

fn address(app: &crate::helpers::TestApp) -> String {
    app.address.trim_start_matches("http://").to_owned()
}

/// Reads until the server closes the connection; returns what it sent. The test
/// gives up (fails) after five seconds.
async fn read_until_closed(stream: &mut TcpStream) -> String {
    let mut received = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut received))
        .await
        .expect("the gateway closed the connection")
        .ok();
    String::from_utf8_lossy(&received).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_its_headers_is_disconnected() {
    let app = spawn_app(&["--client-timeout", "500ms"]).await;
    let mut slowloris = TcpStream::connect(address(&app)).await.unwrap();
    slowloris
        .write_all(b"POST /predict HTTP/1.1\r\nHost: gateway\r\nX-Slow: ")
        .await
        .unwrap();

    read_until_closed(&mut slowloris).await;
    // Others are still served.
    assert_eq!(app.get("/healthz").await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_trickled_too_slowly_is_refused_with_a_json_error() {
    let app = spawn_app(&["--client-timeout", "500ms"]).await;
    let mut trickle = TcpStream::connect(address(&app)).await.unwrap();
    trickle
        .write_all(
            b"POST /v1/models/echo/predict HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\nContent-Length: 100\r\nConnection: close\r\n\r\n{\"a\":",
        )
        .await
        .unwrap();

    let response = read_until_closed(&mut trickle).await;
    assert!(response.starts_with("HTTP/1.1 400"), "{response}");
    let body = response.split("\r\n\r\n").nth(1).unwrap();
    let body: Value = serde_json::from_str(body).unwrap();
    assert_eq!(body["error"]["code"], "body_unreadable");
    assert_eq!(app.echo.calls(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_shutdown_the_gateway_finishes_requests_in_flight_and_takes_no_new_ones() {
    let mut app = spawn_app(&[]).await;
    let slow = StubModel::slow("lingering", Duration::from_millis(700));
    app.workers
        .push(start_worker(&app.nats.url(), vec![slow.clone()]).await);

    let in_flight = tokio::spawn({
        let http = app.http.clone();
        let url = app.url("/v1/models/lingering/predict");
        async move { http.post(url).body("{}").send().await }
    });
    slow.wait_until_called().await;
    app.stop_gateway();

    let response = in_flight
        .await
        .unwrap()
        .expect("the request in flight is answered");
    assert_eq!(response.status(), 200);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let fresh = reqwest::Client::new().get(app.url("/healthz")).send().await;
    assert!(
        fresh.is_err(),
        "a stopped gateway accepts no new connection"
    );
}

/// Sends raw request bytes and returns the status line of the answer.
async fn status_line_of(app: &crate::helpers::TestApp, request: Vec<u8>) -> String {
    let mut stream = TcpStream::connect(address(app)).await.unwrap();
    // The gateway may answer (and close) before it has read everything we send.
    let _ = stream.write_all(&request).await;
    let response = read_until_closed(&mut stream).await;
    response
        .lines()
        .next()
        .unwrap_or_default()
        .chars()
        .take(80)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_and_query_strings_are_refused_before_any_work() {
    let app = spawn_app(&[]).await;
    let long_query = format!(
        "GET /v1/models/echo/predict?q={} HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n\r\n",
        "x".repeat(100_000)
    );
    assert_eq!(
        status_line_of(&app, long_query.into_bytes()).await,
        "HTTP/1.1 431 Request Header Fields Too Large"
    );
    let huge_header = format!(
        "GET /healthz HTTP/1.1\r\nHost: gateway\r\nX-Padding: {}\r\nConnection: close\r\n\r\n",
        "y".repeat(100_000)
    );
    assert_eq!(
        status_line_of(&app, huge_header.into_bytes()).await,
        "HTTP/1.1 431 Request Header Fields Too Large"
    );
    assert_eq!(app.echo.calls(), 0);
    assert_eq!(app.get("/healthz").await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deeply_nested_input_is_a_bad_request() {
    let app = spawn_app(&[]).await;
    let nested = format!("{{\"a\":{}1{}}}", "[".repeat(10_000), "]".repeat(10_000));
    let response = app.post("/v1/models/echo/predict", &nested).await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_json");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("recursion limit"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_is_closed_after_its_last_request_and_says_so() {
    let app = spawn_app(&["--max-requests-per-connection", "3"]).await;
    let mut stream = TcpStream::connect(address(&app)).await.unwrap();
    // Three requests at once on one connection: all three answered, the
    // last saying it closes the connection, which then ends.
    let request = "GET /healthz HTTP/1.1\r\nhost: gateway\r\n\r\n";
    stream
        .write_all(request.repeat(3).as_bytes())
        .await
        .unwrap();
    let received = read_until_closed(&mut stream).await.to_ascii_lowercase();
    assert_eq!(received.matches("http/1.1 200 ok").count(), 3, "{received}");
    assert_eq!(
        received.matches("connection: close").count(),
        1,
        "{received}"
    );
    let last = received.rfind("http/1.1 200 ok").unwrap();
    assert!(received[last..].contains("connection: close"), "{received}");
    // A client that keeps its connections goes on, on a new one.
    for _ in 0..5 {
        assert_eq!(app.get("/healthz").await.status(), 200);
    }
}
