//! The key of a request's input: computed (parse, canonical form, SHA-256) or
//! found in the memo by the bytes sent, as a repeated input's is.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use gateway::cache::CacheKey;
use gateway::input::{KeyMemo, RawInput};
use prediction_contract::ModelName;

fn input_key(c: &mut Criterion) {
    let model = ModelName::parse("price").unwrap();
    let inputs = [
        (
            "the original input",
            RawInput::Json(Bytes::from_static(br#"{"product_id": "ETH/EUR"}"#)),
        ),
        (
            "a 10-feature input",
            RawInput::Json(Bytes::from_static(
                br#"{"features": [2301.5, 2299.75, 2302.0, 2300.25, 2298.5, 2297.0, 2301.25, 2303.5, 2304.0, 2302.75], "product_id": "ETH/EUR", "horizon": "5m"}"#,
            )),
        ),
        (
            "a GET query",
            RawInput::Query("/v1/models/price/predict?product_id=ETH%2FEUR".parse().unwrap()),
        ),
    ];
    let memo = KeyMemo::new(1 << 20);
    for (name, input) in &inputs {
        let key = CacheKey::new("", &model, &input.canonical().unwrap());
        memo.remember(&model, input, &key);
        c.bench_function(&format!("key of {name}, computed"), |b| {
            b.iter(|| CacheKey::new("", &model, &black_box(input).canonical().unwrap()))
        });
        c.bench_function(&format!("key of {name}, from the memo"), |b| {
            b.iter(|| memo.get(&model, black_box(input)).unwrap())
        });
    }
}

criterion_group!(benches, input_key);
criterion_main!(benches);
