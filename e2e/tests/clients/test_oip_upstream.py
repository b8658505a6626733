"""The worker's `oip` kind: the cache in front of a real Open Inference
Protocol server, MLServer (from PyPI), serving a scikit-learn model trained by
the test; the gateway's answers equal MLServer's own."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import joblib
import numpy as np
import pytest
import tritonclient.http as triton
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from conftest import Stack, eventually, free_port

SAMPLES = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]], np.float64)


@pytest.fixture
def mlserver(tmp_path: Path) -> Iterator[tuple[str, LogisticRegression]]:
    features, labels = load_iris(return_X_y=True)
    model = LogisticRegression(max_iter=500).fit(features, labels)
    (tmp_path / "iris").mkdir()
    joblib.dump(model, tmp_path / "iris" / "model.joblib")
    settings = {
        "name": "iris",
        "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": "./model.joblib", "version": "v1"},
        "inputs": [{"name": "input-0", "datatype": "FP64", "shape": [-1, 4]}],
        "outputs": [{"name": "predict", "datatype": "INT64", "shape": [-1, 1]}],
    }
    (tmp_path / "iris" / "model-settings.json").write_text(json.dumps(settings))
    port = free_port()
    server = {"http_port": port, "grpc_port": free_port(), "metrics_port": free_port(), "parallel_workers": 0}
    (tmp_path / "settings.json").write_text(json.dumps(server))
    log = open(tmp_path / "mlserver.log", "wb")
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlserver"), "start", str(tmp_path)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        assert process.poll() is None, (tmp_path / "mlserver.log").read_text()
        with urllib.request.urlopen(f"{url}/v2/models/iris/ready", timeout=1) as response:
            return bool(response.status == 200)

    try:
        eventually(ready, "MLServer serves iris", timeout=90)
        yield url, model
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_the_gateways_answers_equal_mlservers_own(
    stack: Stack, mlserver: tuple[str, LogisticRegression]
) -> None:
    url, model = mlserver
    manifest = stack.logs / "models.toml"
    manifest.write_text(
        f"""
[[model]]
name = "iris"
kind = "oip"
version = "iris-v1"
url = "{url}"
upstream_version = "v1"
binary_data = false
concurrency = 4
timeout = "20s"
"""
    )
    stack.worker("--model-config", str(manifest))
    stack.gateway()
    stack.wait_for_models("iris")
    through_gateway = triton.InferenceServerClient(stack.gateway_url.removeprefix("http://"))
    direct = triton.InferenceServerClient(url.removeprefix("http://"))
    metadata = through_gateway.get_model_metadata("iris")
    assert metadata["inputs"] == [{"name": "input-0", "datatype": "FP64", "shape": [-1, 4]}]
    assert metadata["versions"] == ["iris-v1"]

    def infer(client: triton.InferenceServerClient, binary: bool, **options: str) -> np.ndarray:
        features = triton.InferInput("input-0", list(SAMPLES.shape), "FP64")
        features.set_data_from_numpy(SAMPLES, binary_data=binary)
        wanted = triton.InferRequestedOutput("predict", binary_data=binary)
        return client.infer("iris", [features], outputs=[wanted], **options).as_numpy("predict")

    mlservers = infer(direct, binary=False, model_version="v1")
    for binary in (True, False):
        np.testing.assert_array_equal(infer(through_gateway, binary), mlservers)
    np.testing.assert_array_equal(mlservers.ravel(), model.predict(SAMPLES))
    assert stack.metric("gateway_prediction_requests_total", model="iris", outcome="miss") == 1
    assert stack.metric("gateway_prediction_requests_total", model="iris", outcome="hit") == 1
