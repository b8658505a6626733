//! Integration tests of the gateway against real NATS, Redis and workers.

mod helpers;

mod cache;
mod compatibility;
mod errors;
mod readiness;
mod workers;
