//! Distributed traces (W3C Trace Context, OpenTelemetry), off unless an OTLP
//! endpoint is given. The gateway continues a client's `traceparent` and puts
//! its own in the NATS request; the worker continues that. With tracing off no
//! span is made on the request path at all (see [`enabled`]), so the hit path
//! pays one relaxed atomic load.

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether traces are exported: spans on the request path are made only then.
#[inline]
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Whether a child span made now would be recorded: traces are on and the
/// current span is sampled. With sampling at 1%, the other 99% of requests
/// make only their root span, which propagation needs.
pub fn sampled_here() -> bool {
    enabled()
        && tracing::Span::current()
            .context()
            .span()
            .span_context()
            .is_sampled()
}

/// How the OTLP exporter sends spans.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OtlpProtocol {
    #[value(name = "grpc")]
    Grpc,
    #[value(name = "http/protobuf")]
    HttpProtobuf,
}

/// Trace settings, with the standard OpenTelemetry environment variables. The
/// sample ratio, not a standard variable, is each binary's own setting
/// (`GATEWAY_TRACE_SAMPLE_RATIO`, `WORKER_TRACE_SAMPLE_RATIO`).
#[derive(Debug, Clone, clap::Args)]
pub struct TraceArgs {
    /// Where to send traces over OTLP (e.g. `http://collector:4317` for gRPC,
    /// `http://collector:4318` for HTTP); tracing is off without it.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,

    /// `grpc` or `http/protobuf`.
    #[arg(
        long,
        env = "OTEL_EXPORTER_OTLP_PROTOCOL",
        value_enum,
        default_value = "grpc"
    )]
    pub otlp_protocol: OtlpProtocol,

    /// The `service.name` of the spans (default: `gateway` or `worker`).
    #[arg(long, env = "OTEL_SERVICE_NAME")]
    pub service_name: Option<String>,

    /// How long spans wait to be exported together, in milliseconds.
    #[arg(long, env = "OTEL_BSP_SCHEDULE_DELAY", default_value_t = 5000)]
    pub trace_export_delay_ms: u64,
}

/// Keeps the exporter running; dropping it sends the spans still buffered.
#[derive(Debug, Default)]
pub struct TracerGuard(Option<SdkTracerProvider>);

impl Drop for TracerGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.0.take() {
            let _ = provider.shutdown();
        }
    }
}

/// The tracing layer that exports spans as `args` say (none when tracing is
/// off), and the guard that flushes them at exit. Call within a tokio runtime
/// (the gRPC exporter's connection lives there).
pub fn otel_layer<S>(
    args: &TraceArgs,
    sample_ratio: Option<f64>,
    default_service_name: &str,
) -> anyhow::Result<(
    Option<tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>>,
    TracerGuard,
)>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    let Some(endpoint) = &args.otlp_endpoint else {
        return Ok((None, TracerGuard::default()));
    };
    let exporter = match args.otlp_protocol {
        OtlpProtocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint.clone())
            .build(),
        OtlpProtocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
            .build(),
    }
    .map_err(|err| anyhow::anyhow!("the OTLP exporter for {endpoint}: {err}"))?;
    let batches = opentelemetry_sdk::trace::BatchSpanProcessor::builder(exporter)
        .with_batch_config(
            opentelemetry_sdk::trace::BatchConfigBuilder::default()
                .with_scheduled_delay(std::time::Duration::from_millis(args.trace_export_delay_ms))
                .build(),
        )
        .build();
    let mut builder = SdkTracerProvider::builder()
        .with_span_processor(batches)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(
                    args.service_name
                        .clone()
                        .unwrap_or_else(|| default_service_name.to_owned()),
                )
                .build(),
        );
    if let Some(ratio) = sample_ratio {
        builder = builder.with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            ratio.clamp(0.0, 1.0),
        ))));
    }
    let provider = builder.build();
    let tracer = provider.tracer("prediction-cache");
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    ENABLED.store(true, Ordering::Relaxed);
    Ok((
        Some(tracing_opentelemetry::layer().with_tracer(tracer)),
        TracerGuard(Some(provider)),
    ))
}

/// Headers read through a lookup function (HTTP's or NATS's), borrowed for `'a`.
struct Lookup<'a, F>(F, std::marker::PhantomData<&'a ()>);

impl<'a, F: Fn(&str) -> Option<&'a str>> Extractor for Lookup<'a, F> {
    fn get(&self, key: &str) -> Option<&str> {
        (self.0)(key)
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent", "tracestate"]
    }
}

/// The trace a caller sent (`traceparent`/`tracestate`), read once.
#[derive(Debug)]
pub struct Caller(opentelemetry::Context);

impl Caller {
    /// Reads the caller's trace from the headers `header` looks up.
    pub fn from_headers<'a>(header: impl Fn(&str) -> Option<&'a str>) -> Self {
        Self(TraceContextPropagator::new().extract(&Lookup(header, std::marker::PhantomData)))
    }

    /// Whether the caller sampled its trace; `None` without a valid
    /// `traceparent` (this service's sampler decides).
    pub fn sampled(&self) -> Option<bool> {
        let span = self.0.span();
        let context = span.span_context();
        context.is_valid().then(|| context.is_sampled())
    }

    /// Makes `span` continue the caller's trace, if it sent one.
    pub fn continued_by(self, span: &tracing::Span) {
        if self.sampled().is_some() {
            let _ = span.set_parent(self.0);
        }
    }
}

/// The W3C headers (`traceparent`, `tracestate`) that continue `span`'s trace.
pub fn trace_headers(span: &tracing::Span) -> Vec<(String, String)> {
    struct Collect(Vec<(String, String)>);
    impl Injector for Collect {
        fn set(&mut self, key: &str, value: String) {
            self.0.push((key.to_owned(), value));
        }
    }
    let mut headers = Collect(Vec::new());
    TraceContextPropagator::new().inject_context(&span.context(), &mut headers);
    headers.0
}

/// `span`'s trace id, for the log line, when it belongs to a valid trace.
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context
        .is_valid()
        .then(|| span_context.trace_id().to_string())
}

/// `span`'s own context, to link a batch's span to each of its requests.
pub fn span_context(span: &tracing::Span) -> opentelemetry::trace::SpanContext {
    span.context().span().span_context().clone()
}

/// Links `span` to `linked` (a batch to each request it computes).
pub fn add_link(span: &tracing::Span, linked: opentelemetry::trace::SpanContext) {
    if linked.is_valid() {
        span.add_link(linked);
    }
}
