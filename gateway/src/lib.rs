//! The prediction gateway: an HTTP server that answers predictions from a Redis
//! cache and asks NATS model workers only on a miss.
//!
//! Modules, in the order a request flows through them:
//!
//! - [`config`]: the command line and environment settings;
//! - [`startup`]: builds the [`Application`] (listener, router, clients) and runs it;
//! - [`routes`]: the HTTP handlers: predictions, health and readiness;
//! - [`cache`]: the [`PredictionCache`](cache::PredictionCache) in Redis and the
//!   encoding of its entries;
//! - [`model_client`]: the NATS request to a model's workers;
//! - [`error`]: [`ApiError`](error::ApiError), every failure mapped to one status
//!   and a JSON body;
//! - [`request_log`]: one log line per request.

pub mod cache;
pub mod config;
pub mod error;
pub mod model_client;
pub mod request_log;
pub mod routes;
pub mod startup;

pub use config::GatewayConfig;
pub use startup::Application;
