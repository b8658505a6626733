//! What the gateway's and the worker's Prometheus metrics share: the latency
//! buckets, so their histograms line up on one dashboard, and the text
//! exposition.

use prometheus::{Encoder, Registry, TextEncoder};

/// Latency buckets from 100 µs (a hit) to 30 s (a slow model).
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

/// A registry holding `collectors`.
pub fn registry_of(collectors: Vec<Box<dyn prometheus::core::Collector>>) -> Registry {
    let registry = Registry::new();
    for collector in collectors {
        registry
            .register(collector)
            .expect("metric names are unique");
    }
    registry
}

/// The Prometheus text exposition of every metric of `registry`.
pub fn render(registry: &Registry) -> String {
    let mut buffer = Vec::new();
    TextEncoder::new()
        .encode(&registry.gather(), &mut buffer)
        .expect("encoding to a Vec cannot fail");
    String::from_utf8(buffer).expect("the text format is UTF-8")
}
