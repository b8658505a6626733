//! What the gateway and the worker both run, beside the wire contract
//! (`prediction-contract`), which stays free of runtime dependencies:
//!
//! - [`http_server`]: serving an axum router with every connection bounded
//!   (how many, how long silent or idle, how slow a request may arrive).

pub mod http_server;
