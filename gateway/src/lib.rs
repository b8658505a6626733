//! The prediction gateway: an HTTP server that answers predictions from a Redis
//! cache and asks NATS model workers only on a miss.
//!
//! A prediction request enters [`routes::predict`] (`predict_from_body`,
//! `predict_from_query` or `predict_default_model`), whose arguments come from
//! [`routes::extract`] (the model, the input as sent, the cache directives read
//! by [`freshness`]), and then passes, each module calling only the ones after it:
//!
//! 1. [`prediction`]: `Predictor::predict`, the request's cache policy: the key
//!    (remembered for hot inputs by [`input`]), the lookup, a hit, a stale answer
//!    with a refresh in the background, or a miss, which joins the computation in
//!    flight here ([`coalesce`]) or starts one;
//! 2. [`prediction`]'s `computation`: the miss computed once for every gateway:
//!    the key's lock or lease, a wait for the gateway that holds it, the entry
//!    stored and the outcome announced;
//! 3. [`model_call`]: the model call: admission (a worker serves the model, found
//!    by [`discovery`]; room under `--max-inflight`), backlog redirects, busy
//!    backoff and the hedged second attempt; then [`model_client`], the NATS
//!    request itself;
//! 4. [`cache`]: the in-process tier and Redis, the one component that sends
//!    Redis commands (with its keys and breaker), used by steps 1 and 2.
//!
//! Around them: [`config`] (flags and environment), [`startup`] (builds the
//! [`Application`] and runs it), [`state`] (what handlers share), [`auth`] (bearer
//! tokens in front of the routes), [`request_log`] and [`metrics`] (one log line
//! per request, Prometheus metrics), [`purge`] (purges broadcast to every
//! gateway), [`error`] ([`ApiError`](error::ApiError): every failure mapped to one
//! status and a JSON body). The other routes: [`routes::admin`] (purges),
//! [`routes::health`], [`routes::operations`] (metrics, models) and
//! [`routes::openapi`].

pub mod auth;
pub mod cache;
pub mod coalesce;
pub mod config;
pub mod discovery;
pub mod error;
pub mod freshness;
pub mod input;
pub mod metrics;
pub mod model_call;
pub mod nats;
pub mod prediction;
pub mod purge;
pub mod request_log;
pub mod routes;
pub mod startup;
pub mod state;

pub use config::GatewayConfig;
pub use startup::Application;
