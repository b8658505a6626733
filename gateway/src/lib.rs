//! The prediction gateway: an HTTP server that answers predictions from a Redis
//! cache and asks NATS model workers only on a miss.
//!
//! Modules, in the order a request flows through them:
//!
//! - [`config`]: the command line and environment settings;
//! - [`startup`]: builds the [`Application`] (listener, router, clients) and runs it;
//! - [`auth`]: the bearer tokens in front of the prediction and purge routes;
//! - [`routes`]: the HTTP handlers: predictions, purges, health, readiness, metrics;
//! - [`freshness`]: the client's `Cache-Control` directives;
//! - [`input`]: the input as sent, and the memo of its cache key;
//! - [`prediction`]: the read-through cache with coalescing, stale-while-revalidate
//!   and stale-if-error, built on
//! - [`cache`]: the in-process tier, Redis, and the cross-gateway compute lock,
//! - [`coalesce`]: identical requests in flight sharing one computation, and
//! - [`model_client`]: the NATS request to a model's workers, who are found by
//! - [`discovery`]: the models served right now, from the workers' service info;
//! - [`purge`]: purges broadcast to every gateway;
//! - [`error`]: [`ApiError`](error::ApiError), every failure mapped to one status
//!   and a JSON body;
//! - [`request_log`] and [`metrics`]: one log line per request, Prometheus metrics;
//! - [`openapi`]: the OpenAPI document, generated from the handlers.

pub mod auth;
pub mod cache;
pub mod coalesce;
pub mod config;
pub mod discovery;
pub mod error;
pub mod freshness;
pub mod input;
pub mod metrics;
pub mod model_client;
pub mod openapi;
pub mod prediction;
pub mod purge;
pub mod request_log;
pub mod routes;
pub mod startup;

pub use config::GatewayConfig;
pub use startup::Application;
