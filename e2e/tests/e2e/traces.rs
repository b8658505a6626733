//! Traces from the gateway through NATS to the worker: a real OTLP receiver
//! (HTTP/protobuf, decoded with the OpenTelemetry protocol's definitions)
//! collects the spans of an in-process gateway and of the worker binary, and
//! the test follows one request's trace through both. Its own test binary:
//! it installs the process's global subscriber.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use clap::Parser;
use gateway::{Application, GatewayConfig};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prediction_runtime::telemetry::{LogFormat, init_tracing};
use prediction_runtime::traces::{OtlpProtocol, TraceArgs};
use prost::Message;
use test_support::{NatsServer, RedisServer, WorkerProcess, eventually};

/// A span as the receiver got it.
#[derive(Debug, Clone)]
struct ReceivedSpan {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    links: Vec<(String, String)>,
}

/// An OTLP/HTTP receiver: `POST /v1/traces` with an `ExportTraceServiceRequest`.
async fn start_receiver() -> (String, Arc<Mutex<Vec<ReceivedSpan>>>) {
    let spans = Arc::new(Mutex::new(Vec::new()));
    let store = Arc::clone(&spans);
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: Bytes| {
            let store = Arc::clone(&store);
            async move {
                let request = ExportTraceServiceRequest::decode(body).expect("valid OTLP");
                store.lock().unwrap().extend(received(request));
                ""
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (address, spans)
}

/// The spans of one export, each with its service's name.
fn received(request: ExportTraceServiceRequest) -> Vec<ReceivedSpan> {
    let mut spans = Vec::new();
    for resource_spans in request.resource_spans {
        let service = resource_spans
            .resource
            .iter()
            .flat_map(|resource| &resource.attributes)
            .find(|attribute| attribute.key == "service.name")
            .and_then(|attribute| attribute.value.as_ref())
            .map(|value| format!("{:?}", value.value))
            .unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                spans.push(ReceivedSpan {
                    service: service.clone(),
                    name: span.name,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    links: span
                        .links
                        .iter()
                        .map(|link| (hex(&link.trace_id), hex(&link.span_id)))
                        .collect(),
                });
            }
        }
    }
    spans
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The worker binary exporting to `receiver` over OTLP (`protocol`).
/// A worker process exporting its spans to `receiver` over `protocol`.
async fn start_worker(
    nats_url: &str,
    receiver: &str,
    protocol: &str,
    args: &[&str],
) -> WorkerProcess {
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
        ("OTEL_BSP_SCHEDULE_DELAY", "50"),
    ];
    WorkerProcess::spawn(nats_url, args, &env).await
}

/// Waits until the receiver holds spans for which `done` holds.
async fn spans_until(
    spans: &Arc<Mutex<Vec<ReceivedSpan>>>,
    what: &str,
    done: impl Fn(&[ReceivedSpan]) -> bool,
) -> Vec<ReceivedSpan> {
    eventually(Duration::from_secs(20), what, || {
        let now = spans.lock().unwrap().clone();
        let found = if done(&now) { Ok(now) } else { Err(now) };
        async move { found }
    })
    .await
}

fn find<'a>(spans: &'a [ReceivedSpan], trace: &str, name: &str) -> Option<&'a ReceivedSpan> {
    spans
        .iter()
        .find(|span| span.trace_id == trace && span.name == name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_runs_from_the_client_through_the_gateway_and_nats_to_the_worker() {
    let (receiver, spans) = start_receiver().await;
    let _guard = init_tracing(
        LogFormat::Text,
        &TraceArgs {
            otlp_endpoint: Some(receiver.clone()),
            otlp_protocol: OtlpProtocol::HttpProtobuf,
            service_name: None,
            // Export at once: the SDK batches spans for 5 s by default.
            trace_export_delay_ms: 50,
        },
        None,
        "gateway",
    )
    .unwrap();

    let nats = NatsServer::start();
    let redis = RedisServer::start();
    let models = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/models.toml");
    let _worker = start_worker(
        &nats.url(),
        &receiver,
        "http/protobuf",
        &[
            "--model",
            "echo",
            "--model-config",
            models,
            "--batch-window",
            "20ms",
        ],
    )
    .await;
    let config = GatewayConfig::try_parse_from([
        "gateway",
        "--listen",
        "127.0.0.1:0",
        "--nats-url",
        &nats.url(),
        "--redis-url",
        &redis.url(),
        "--key-prefix",
        "traces:",
    ])
    .unwrap();
    let app = Application::build(config).await.unwrap();
    let gateway = format!("http://127.0.0.1:{}", app.port());
    tokio::spawn(app.run(std::future::pending()));
    let http = reqwest::Client::new();

    // A miss, in the client's trace.
    let miss_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_span = "00f067aa0ba902b7";
    let response = http
        .post(format!("{gateway}/v1/models/echo/predict"))
        .header("traceparent", format!("00-{miss_trace}-{client_span}-01"))
        .body(r#"{"traced":1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-cache"], "MISS");
    // The same input again, in another trace: a hit.
    let hit_trace = "5bf92f3577b34da6a3ce929d0e0e4737";
    let response = http
        .post(format!("{gateway}/v1/models/echo/predict"))
        .header("traceparent", format!("00-{hit_trace}-{client_span}-01"))
        .body(r#"{"traced":1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-cache"], "HIT");

    let got = spans_until(
        &spans,
        "the miss's worker span and the hit's spans",
        |spans| {
            find(spans, miss_trace, "predict").is_some()
                && find(spans, hit_trace, "POST /v1/models/echo/predict").is_some()
                && find(spans, hit_trace, "cache.lookup").is_some()
        },
    )
    .await;
    let request =
        find(&got, miss_trace, "POST /v1/models/echo/predict").expect("the gateway's request span");
    assert_eq!(
        request.parent_span_id, client_span,
        "continues the client's span"
    );
    assert!(request.service.contains("gateway"), "{request:?}");
    let lookup = find(&got, miss_trace, "cache.lookup").expect("a cache lookup span");
    assert_eq!(lookup.parent_span_id, request.span_id);
    let call = find(&got, miss_trace, "model.call").expect("a model call span");
    assert_eq!(call.parent_span_id, request.span_id);
    let predict = find(&got, miss_trace, "predict").expect("the worker's span");
    assert_eq!(
        predict.parent_span_id, call.span_id,
        "continues the gateway's call over NATS"
    );
    assert!(predict.service.contains("worker"), "{predict:?}");
    assert!(
        find(&got, hit_trace, "model.call").is_none(),
        "a hit calls no model: {got:#?}"
    );

    // A caller that did not sample its trace (flags 00): neither the gateway
    // nor the worker records a span of it.
    let unsampled = "8bf92f3577b34da6a3ce929d0e0e4739";
    let response = http
        .post(format!("{gateway}/v1/models/echo/predict"))
        .header("traceparent", format!("00-{unsampled}-{client_span}-00"))
        .body(r#"{"unsampled":1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-cache"], "MISS");

    // A batch: concurrent requests for a batching ONNX model share one call,
    // whose span links to each request's span.
    let features = |i: u32| {
        let row: Vec<String> = (0..10).map(|k| format!("{}.5", 2000 + i + k)).collect();
        format!(r#"{{"features":[{}]}}"#, row.join(","))
    };
    let traces: Vec<String> = (0..4)
        .map(|i| format!("6bf92f3577b34da6a3ce929d0e0e47{i:02}"))
        .collect();
    let requests = traces.iter().enumerate().map(|(i, trace)| {
        let http = &http;
        let gateway = &gateway;
        async move {
            http.post(format!("{gateway}/v1/models/price-mlp/predict"))
                .header("traceparent", format!("00-{trace}-{client_span}-01"))
                .body(features(i as u32))
                .send()
                .await
                .unwrap()
                .status()
        }
    });
    for status in futures::future::join_all(requests).await {
        assert_eq!(status, 200);
    }
    let got = spans_until(&spans, "the batch span", |spans| {
        spans.iter().any(|span| span.name == "batch")
            && traces
                .iter()
                .all(|trace| find(spans, trace, "predict").is_some())
    })
    .await;
    let request_spans: Vec<(String, String)> = traces
        .iter()
        .map(|trace| {
            let span = find(&got, trace, "predict").unwrap();
            (span.trace_id.clone(), span.span_id.clone())
        })
        .collect();
    let linked: Vec<(String, String)> = got
        .iter()
        .filter(|span| span.name == "batch")
        .flat_map(|span| span.links.clone())
        .collect();
    for request in &request_spans {
        assert!(
            linked.contains(request),
            "the batch links to {request:?}: {linked:?}"
        );
    }
    // By now the worker has exported the batch's spans, sent after the
    // unsampled request's would have been.
    assert!(
        got.iter().all(|span| span.trace_id != unsampled),
        "spans of an unsampled trace: {got:#?}"
    );
}

/// An OTLP/gRPC receiver (the collector's `TraceService`), collecting spans.
#[derive(Clone)]
struct GrpcReceiver(Arc<Mutex<Vec<ReceivedSpan>>>);

#[tonic::async_trait]
impl opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceService
    for GrpcReceiver
{
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<
        tonic::Response<
            opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse,
        >,
        tonic::Status,
    > {
        self.0
            .lock()
            .unwrap()
            .extend(received(request.into_inner()));
        Ok(tonic::Response::new(Default::default()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_exports_over_grpc_continuing_a_traceparent_sent_over_nats() {
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceServiceServer;

    let spans = Arc::new(Mutex::new(Vec::new()));
    let port = test_support::free_port();
    let server = tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(GrpcReceiver(Arc::clone(&spans))))
        .serve(([127, 0, 0, 1], port).into());
    tokio::spawn(server);
    let nats = NatsServer::start();
    let _worker = start_worker(
        &nats.url(),
        &format!("http://127.0.0.1:{port}"),
        "grpc",
        &["--model", "echo"],
    )
    .await;
    let client = async_nats::connect(nats.url()).await.unwrap();
    let trace = "7bf92f3577b34da6a3ce929d0e0e4738";
    let caller = "10f067aa0ba902b8";
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("traceparent", format!("00-{trace}-{caller}-01").as_str());
    let reply = client
        .request_with_headers("predict.echo", headers, r#"{"grpc":1}"#.into())
        .await
        .unwrap();
    assert_eq!(&reply.payload[..], br#"{"echo":{"grpc":1}}"#);
    let got = spans_until(&spans, "the worker's span over gRPC", |spans| {
        find(spans, trace, "predict").is_some()
    })
    .await;
    let predict = find(&got, trace, "predict").unwrap();
    assert_eq!(predict.parent_span_id, caller);
    assert!(predict.service.contains("worker"), "{predict:?}");
}
