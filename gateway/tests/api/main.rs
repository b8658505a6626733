//! Integration tests of the gateway against real NATS, Redis and workers.

mod helpers;

mod cache;
mod capacity;
mod compatibility;
mod connections;
mod errors;
mod failover;
mod freshness;
mod hostile;
mod metrics;
mod onnx;
mod outage;
mod prometheus;
mod purge;
mod python_workers;
mod readiness;
mod redis_modes;
mod security;
mod stampede;
mod workers;
