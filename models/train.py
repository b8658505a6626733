#!/usr/bin/env python3
"""Trains the example price models and exports them to ONNX.

Synthetic data: one-minute prices of a random walk with momentum and mean
reversion. Each example's features are the last 10 prices; its target is the
price 5 minutes later. Three scikit-learn models are trained on it and exported
with skl2onnx:

- price-mlp:    StandardScaler + MLPRegressor (ONNX: Scaler, MatMul, Add, Relu)
- price-gbt:    GradientBoostingRegressor   (ONNX: TreeEnsembleRegressor)
- price-linear: LinearRegression            (ONNX: LinearRegressor)

For each it writes `<name>.onnx` here and, in `reference.json`, the outputs
onnxruntime computes for a fixed set of inputs: the worker's tests compare its
own answers with those.

    pip install -r models/requirements.txt
    python3 models/train.py               # the example models (committed)
    python3 models/train.py --bench-only  # bench/bench-mlp.onnx for make bench (large, not committed)
"""

import argparse
import json
import pathlib
import warnings

import numpy as np
import onnxruntime
from skl2onnx import to_onnx
from sklearn.ensemble import GradientBoostingRegressor
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LinearRegression
from sklearn.neural_network import MLPRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

HERE = pathlib.Path(__file__).resolve().parent
WINDOW = 10
HORIZON = 5
# Opsets the worker's tract backend is tested with. ai.onnx.ml 3 keeps trees in
# TreeEnsembleRegressor (opset 5 would emit the newer TreeEnsemble operator).
TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}
SEED = 20261126


def synthetic_prices(rng: np.random.Generator, minutes: int) -> np.ndarray:
    """A positive price series with short-term momentum and slow mean reversion."""
    prices = np.empty(minutes)
    price, drift, anchor = 2000.0, 0.0, 2000.0
    for t in range(minutes):
        drift = 0.8 * drift + rng.normal(0.0, 0.6) + 0.002 * (anchor - price)
        price = max(1.0, price + drift)
        prices[t] = price
    return prices


def windows(prices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rows = len(prices) - WINDOW - HORIZON + 1
    features = np.stack([prices[i : i + WINDOW] for i in range(rows)])
    targets = prices[WINDOW - 1 + HORIZON :][:rows]
    # Two decimals, like a quoted price: JSON inputs carry exactly these values.
    return np.round(features, 2).astype(np.float32), targets.astype(np.float32)


def export(model, name: str, sample: np.ndarray, directory: pathlib.Path) -> pathlib.Path:
    onx = to_onnx(model, sample[:1], target_opset=TARGET_OPSET)
    onx.graph.doc_string = f"{name}: predicts the price {HORIZON} minutes ahead from the last {WINDOW}"
    path = directory / f"{name}.onnx"
    path.write_bytes(onx.SerializeToString())
    return path


def onnxruntime_outputs(path: pathlib.Path, inputs: np.ndarray) -> list[float]:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (output,) = session.run(None, {session.get_inputs()[0].name: inputs})
    return [float(value) for value in output.reshape(-1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--bench-only", action="store_true", help="write only the large bench MLP (for make bench)"
    )
    args = parser.parse_args()
    rng = np.random.default_rng(SEED)

    features, targets = windows(synthetic_prices(rng, 20_000))
    split = int(len(features) * 0.8)
    train_x, test_x = features[:split], features[split:]
    train_y, test_y = targets[:split], targets[split:]
    if args.bench_only:
        write_bench_model(train_x, train_y)
        return

    models = {
        "price-mlp": make_pipeline(
            StandardScaler(),
            MLPRegressor(hidden_layer_sizes=(32, 16), max_iter=300, random_state=SEED),
        ),
        "price-gbt": GradientBoostingRegressor(n_estimators=100, max_depth=3, random_state=SEED),
        "price-linear": LinearRegression(),
    }
    # The reference inputs: held-out windows, plus a few far from the training data
    # (trees and ReLUs take other branches there).
    reference_x = np.concatenate(
        [test_x[:: len(test_x) // 24][:24], np.round(rng.uniform(1, 5000, (8, WINDOW)), 2)]
    ).astype(np.float32)
    references = {}
    for name, model in models.items():
        model.fit(train_x, train_y)
        mae = float(np.mean(np.abs(model.predict(test_x) - test_y)))
        path = export(model, name, train_x, HERE)
        outputs = onnxruntime_outputs(path, reference_x)
        references[name] = [
            {"input": {"features": [float(v) for v in row]}, "predicted_price": out}
            for row, out in zip(reference_x.tolist(), outputs)
        ]
        print(f"{name}: test MAE {mae:.3f} over {len(test_x)} windows -> {path.name}")

    (HERE / "reference.json").write_text(json.dumps(references, indent=1) + "\n")
    print(f"reference outputs ({len(reference_x)} inputs per model) -> reference.json")


def write_bench_model(train_x: np.ndarray, train_y: np.ndarray) -> None:
    """An MLP big enough that inference, not messaging, dominates a request.
    Barely trained: only its cost matters."""
    bench_dir = HERE / "bench"
    bench_dir.mkdir(exist_ok=True)
    big = MLPRegressor(hidden_layer_sizes=(2048, 2048), max_iter=2, random_state=SEED)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        big.fit(train_x[:2000] / 1000.0, train_y[:2000] / 1000.0)
    path = export(big, "bench-mlp", train_x, bench_dir)
    print(f"bench-mlp (10 -> 2048 -> 2048 -> 1) -> {path.relative_to(HERE)}")
    write_tensor_bench_model()


def write_tensor_bench_model() -> None:
    """A model of 784 inputs (an MNIST image's size) for the tensor rows of
    make bench: random data, a small MLP; only its shape matters."""
    rng = np.random.default_rng(SEED)
    pixels = rng.random((512, 784), dtype=np.float32)
    small = MLPRegressor(hidden_layer_sizes=(32,), max_iter=5, random_state=SEED)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        small.fit(pixels, pixels.mean(axis=1))
    path = export(small, "bench-784", pixels, HERE / "bench")
    print(f"bench-784 (784 -> 32 -> 1) -> {path.relative_to(HERE)}")


if __name__ == "__main__":
    main()
