//! ONNX inference of the example models, on one thread: a single row (what an
//! unbatched request costs) and a batch of 256 rows (throughput per row). JSON
//! inputs are read and outputs written as the worker does. `make bench-micro`.

use std::path::Path;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use serde_json::json;
use worker::Input;
use worker::manifest::{self, ModelEntry};
use worker::onnx::OnnxModel;

fn inputs(count: usize) -> Vec<Input> {
    (0..count)
        .map(|n| {
            let features: Vec<f64> = (0..10).map(|j| 2000.0 + (n * 7 + j) as f64 / 3.0).collect();
            json!({ "features": features }).as_object().unwrap().clone()
        })
        .collect()
}

fn example_models(c: &mut Criterion) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/models.toml");
    let entries = manifest::load(&path).expect("models/models.toml");
    let mut group = c.benchmark_group("onnx");
    for entry in &entries {
        let ModelEntry::Onnx(entry) = entry else {
            continue;
        };
        let model = OnnxModel::load(entry).expect("the example model loads");
        for rows in [1usize, 256] {
            let batch = inputs(rows);
            group.throughput(Throughput::Elements(rows as u64));
            group.bench_with_input(
                BenchmarkId::new(entry.name.as_str(), format!("{rows} rows")),
                &batch,
                |b, batch| b.iter(|| model.predict_blocking(batch)),
            );
        }
    }
    group.finish();
}

criterion_group!(benches, example_models);
criterion_main!(benches);
