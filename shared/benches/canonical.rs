//! The hot pure function of every request: canonical form and cache key.

use criterion::{Criterion, criterion_group, criterion_main};
use prediction_contract::{CacheKey, CanonicalInput, ModelName};
use std::hint::black_box;

fn canonical_key(c: &mut Criterion) {
    let model = ModelName::parse("price").unwrap();
    let original = br#"{"product_id": "ETH/EUR"}"#;
    let typical = br#"{"features": [2301.5, 2299.75, 2302.0, 2300.25, 2298.5, 2297.0, 2301.25, 2303.5, 2304.0, 2302.75], "product_id": "ETH/EUR", "horizon": "5m"}"#;
    c.bench_function("cache key of the original input", |b| {
        b.iter(|| {
            let input = CanonicalInput::from_json_slice(black_box(original)).unwrap();
            CacheKey::new("", &model, &input)
        })
    });
    c.bench_function("cache key of a 10-feature input", |b| {
        b.iter(|| {
            let input = CanonicalInput::from_json_slice(black_box(typical)).unwrap();
            CacheKey::new("", &model, &input)
        })
    });
    c.bench_function("cache key of a GET query", |b| {
        b.iter(|| {
            let input = CanonicalInput::from_pairs(black_box([("product_id", "ETH/EUR")])).unwrap();
            CacheKey::new("", &model, &input)
        })
    });
}

criterion_group!(benches, canonical_key);
criterion_main!(benches);
