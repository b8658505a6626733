//! What the gateway and the worker both run, beside the wire contract
//! (`prediction-contract`), which stays free of runtime dependencies:
//!
//! - [`nats_connection`]: the NATS flags (`NatsArgs`), credentials taken out of
//!   URLs, the connection's name;
//! - [`nats_headers`]: the contract's headers read from and written to NATS
//!   messages;
//! - [`telemetry`]: log setup, URLs redacted for logs, log budgets;
//! - [`log_writer`]: log lines buffered and written by a thread of their own;
//! - [`traces`]: OpenTelemetry traces over OTLP, off unless asked for;
//! - [`metrics`]: the latency buckets and the Prometheus exposition;
//! - [`renamed_env`]: environment variables renamed, still read under their
//!   old name with a warning;
//! - [`shutdown`]: the signal both binaries stop on;
//! - [`http_server`]: serving an axum router with every connection bounded
//!   (how many, how long silent or idle, how slow a request may arrive).

pub mod http_server;
pub mod log_writer;
pub mod metrics;
pub mod nats_connection;
pub mod nats_headers;
pub mod renamed_env;
pub mod shutdown;
pub mod telemetry;
pub mod traces;
