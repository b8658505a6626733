//! The hot pure function of every request whose key is not remembered: the
//! input's canonical form (its cache key is benched in the gateway's `input`).

use criterion::{Criterion, criterion_group, criterion_main};
use prediction_contract::CanonicalInput;
use std::hint::black_box;

fn canonical_form(c: &mut Criterion) {
    let original = br#"{"product_id": "ETH/EUR"}"#;
    let typical = br#"{"features": [2301.5, 2299.75, 2302.0, 2300.25, 2298.5, 2297.0, 2301.25, 2303.5, 2304.0, 2302.75], "product_id": "ETH/EUR", "horizon": "5m"}"#;
    c.bench_function("canonical form of the original input", |b| {
        b.iter(|| CanonicalInput::from_json_slice(black_box(original)).unwrap())
    });
    c.bench_function("canonical form of a 10-feature input", |b| {
        b.iter(|| CanonicalInput::from_json_slice(black_box(typical)).unwrap())
    });
    c.bench_function("canonical form of a GET query", |b| {
        b.iter(|| CanonicalInput::from_pairs(black_box([("product_id", "ETH/EUR")])).unwrap())
    });
}

criterion_group!(benches, canonical_form);
criterion_main!(benches);
