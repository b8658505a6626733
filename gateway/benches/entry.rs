//! Encoding and decoding a cache entry: done on every store and every Redis hit.

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use gateway::cache::CachedPrediction;

fn entry_codec(c: &mut Criterion) {
    let entry = CachedPrediction {
        prediction: Bytes::from_static(
            br#"{"predicted_price":2297.41,"product_id":"ETH/EUR","timestamp":1795694400000,"timestamp_sec":1795694400}"#,
        ),
        model_version: "1.0.0".into(),
        computed_at_ms: 1_795_694_400_123,
        fresh_for: Duration::from_secs(60),
    };
    let encoded = entry.encode();
    c.bench_function("encode a cache entry", |b| {
        b.iter(|| black_box(&entry).encode())
    });
    c.bench_function("decode a cache entry", |b| {
        b.iter(|| CachedPrediction::decode(black_box(&encoded)).unwrap())
    });
}

criterion_group!(benches, entry_codec);
criterion_main!(benches);
