//! The prediction gateway: an HTTP server that answers predictions from a Redis
//! cache and asks NATS model workers only on a miss.
//!
//! A request comes in through a front door, one module per protocol under
//! [`routes`], which only translates between its wire format and the core:
//! [`routes::native`] (`/v1/models/{model}/predict`) and [`routes::original`]
//! (the original `POST /predict`). The next two protocols go there beside them,
//! as `routes::openai` (the OpenAI API) and `routes::oip` (the Open Inference
//! Protocol), calling the same core; adding a protocol adds a module there and
//! edits nothing below. The arguments come from [`routes::extract`], and each
//! passes, each module calling only the ones after it:
//!
//! 1. [`prediction`]: the protocol-free core, `Predictor::predict`: the key
//!    (remembered for hot inputs by [`input`]), one look at the model directory
//!    ([`discovery`]), one lookup, and the cache policy decided in one pure
//!    function (`prediction::policy`): a hit, a stale answer with a refresh, or
//!    a computation, joined when one is in flight here (`prediction::coalesce`)
//!    and otherwise computed once for every gateway (the key's lock or lease, a
//!    wait for the gateway that holds it, the entry stored and the outcome
//!    announced);
//! 2. [`model_call`]: the model call: admission (NATS up, a worker serves the
//!    model, room under `--max-inflight`), backlog redirects, busy backoff, and a
//!    request sent again only when its worker falls silent (heartbeats);
//! 3. [`nats`] and [`cache`], the two doors to the outside: every NATS message
//!    (model requests and their replies, discovery, announcements, purges) goes
//!    through the first, every Redis command through the second (with its keys,
//!    the contract's, and its breaker).
//!
//! Around them: [`config`] (flags and environment), [`startup`] (builds the
//! [`Application`] and runs it on the runtime's bounded HTTP server), [`state`]
//! (what handlers share), [`auth`] (bearer tokens in front of the routes),
//! [`request_log`] and [`metrics`] (one log line per request, Prometheus
//! metrics), [`purge`] (purges broadcast to every gateway), [`freshness`] (the
//! client's `Cache-Control`), [`error`] ([`ApiError`](error::ApiError): every
//! failure mapped to one status and a JSON body). The other routes:
//! [`routes::admin`] (purges), [`routes::health`], [`routes::operations`]
//! (metrics, models) and [`routes::openapi`].

pub mod auth;
pub mod cache;
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
