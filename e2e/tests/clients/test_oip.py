"""The Open Inference Protocol as Triton's and KServe's users call it:
`tritonclient` against the gateway, an ONNX model on the Rust worker and a
tensor model of the Python library behind it."""

from __future__ import annotations

import json
import struct
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import ml_dtypes
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from conftest import ROOT, Stack, eventually

PRICES = np.array(
    [[2001.5, 2002.1, 2001.8, 2003.0, 2004.2, 2003.9, 2005.1, 2006.0, 2005.5, 2007.3]], np.float32
)


@pytest.fixture
def oip(stack: Stack) -> Stack:
    stack.worker("--model-config", str(ROOT / "models" / "models.toml"))
    stack.python_worker()
    stack.gateway()
    stack.wait_for_models("price-mlp", "py-tensors")
    return stack


def client(stack: Stack) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(stack.gateway_url.removeprefix("http://"))


def infer_prices(stack: Stack, binary: bool, **options: Any) -> np.ndarray:
    features = triton.InferInput("X", list(PRICES.shape), "FP32")
    features.set_data_from_numpy(PRICES, binary_data=binary)
    wanted = triton.InferRequestedOutput("variable", binary_data=binary)
    result = client(stack).infer("price-mlp", [features], outputs=[wanted], **options)
    return result.as_numpy("variable")


def post(stack: Stack, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(f"{stack.gateway_url}{path}", data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def test_health_and_metadata_as_the_protocol_defines_them(oip: Stack) -> None:
    triton_client = client(oip)
    assert triton_client.is_server_live() and triton_client.is_server_ready()
    assert "binary_tensor_data" in triton_client.get_server_metadata()["extensions"]
    metadata = triton_client.get_model_metadata("price-mlp")
    assert metadata["inputs"] == [{"name": "X", "datatype": "FP32", "shape": [-1, 10]}]
    assert metadata["outputs"] == [{"name": "variable", "datatype": "FP32", "shape": [-1, 1]}]
    assert metadata["versions"] == ["1.0.0"]
    python = triton_client.get_model_metadata("py-tensors")
    assert [tensor["datatype"] for tensor in python["inputs"]] == ["FP16", "BF16", "BYTES", "INT32"]
    assert triton_client.is_model_ready("price-mlp")
    assert triton_client.is_model_ready("price-mlp", model_version="1.0.0")
    assert not triton_client.is_model_ready("price-mlp", model_version="9")
    assert not triton_client.is_model_ready("no-such-model")
    with pytest.raises(InferenceServerException) as missing:
        triton_client.get_model_metadata("no-such-model")
    assert missing.value.status() == "404"


def test_binary_and_json_tensors_share_one_entry_and_match_the_json_route(oip: Stack) -> None:
    binary = infer_prices(oip, binary=True, request_id="first")
    as_json = infer_prices(oip, binary=False, request_id="second")
    assert binary.shape == (1, 1) and binary.dtype == np.float32
    np.testing.assert_array_equal(binary, as_json)
    assert oip.metric("gateway_prediction_requests_total", model="price-mlp", outcome="miss") == 1
    assert oip.metric("gateway_prediction_requests_total", model="price-mlp", outcome="hit") == 1
    features = {"features": PRICES[0].tolist()}
    status, _, body = post(
        oip,
        "/v1/models/price-mlp/predict",
        json.dumps(features).encode(),
        {"content-type": "application/json"},
    )
    assert status == 200
    assert json.loads(body)["predicted_price"] == pytest.approx(float(binary[0, 0]), rel=1e-6)


def test_the_request_id_is_echoed_and_a_named_version_is_a_key_of_its_own(oip: Stack) -> None:
    def infer(path: str, request_id: str) -> tuple[dict[str, str], dict[str, Any]]:
        data = PRICES.tolist()
        body = {
            "id": request_id,
            "inputs": [{"name": "X", "shape": [1, 10], "datatype": "FP32", "data": data}],
        }
        status, headers, answer = post(oip, path, json.dumps(body).encode(), {})
        assert status == 200, answer
        return headers, json.loads(answer)

    unversioned, versioned = "/v2/models/price-mlp/infer", "/v2/models/price-mlp/versions/1.0.0/infer"
    first_headers, first = infer(unversioned, "req-1")
    again_headers, again = infer(unversioned, "req-2")
    assert (first["id"], again["id"]) == ("req-1", "req-2")
    assert (first_headers["x-cache"], again_headers["x-cache"]) == ("MISS", "HIT")
    assert again_headers["cache-status"].startswith("gateway; hit; ttl=")
    assert int(again_headers["age"]) >= 0
    assert [infer(versioned, "v")[0]["x-cache"] for _ in range(2)] == ["MISS", "HIT"]
    assert again["model_version"] == "1.0.0"


def test_several_inputs_and_outputs_of_fp16_bf16_bytes_and_ints(oip: Stack) -> None:
    a = np.array([[0.5, 1.5], [2.0, -1.0]], np.float16)
    b = np.array([[1.0, 2.0], [3.5, 0.25]], ml_dtypes.bfloat16)
    c = np.array([b"hello", b"tensors"], dtype=object)
    d = np.array([[1, 2], [3, 4]], np.int32)
    inputs = []
    for name, datatype, value in (("a", "FP16", a), ("b", "BF16", b), ("c", "BYTES", c), ("d", "INT32", d)):
        tensor = triton.InferInput(name, list(value.shape), datatype)
        tensor.set_data_from_numpy(value, binary_data=True)
        inputs.append(tensor)
    names = ("sum", "twice", "next", "upper", "length")
    outputs = [triton.InferRequestedOutput(name, binary_data=name != "length") for name in names]
    result = client(oip).infer("py-tensors", inputs, outputs=outputs)
    expected_sum = a.astype(np.float32) + b.astype(np.float32) + d
    np.testing.assert_allclose(result.as_numpy("sum"), expected_sum)
    np.testing.assert_array_equal(result.as_numpy("twice"), a * 2)
    np.testing.assert_array_equal(result.as_numpy("next").astype(np.float32), b.astype(np.float32) + 1)
    assert list(result.as_numpy("upper")) == [b"HELLO", b"TENSORS"]
    assert result.as_numpy("length").tolist() == [5, 7]
    # Only the outputs asked for come back.
    only = client(oip).infer("py-tensors", inputs, outputs=[triton.InferRequestedOutput("length")])
    assert [output["name"] for output in only.get_response()["outputs"]] == ["length"]


def test_a_version_not_served_is_a_404(oip: Stack) -> None:
    np.testing.assert_array_equal(infer_prices(oip, True, model_version="1.0.0"), infer_prices(oip, False))
    with pytest.raises(InferenceServerException) as pinned:
        infer_prices(oip, binary=True, model_version="9.9.9")
    assert pinned.value.status() == "404"
    assert "9.9.9" in pinned.value.message()


def test_bad_tensors_are_a_400_naming_the_tensor(oip: Stack) -> None:
    def refused(body: dict[str, Any]) -> str:
        status, _, answer = post(oip, "/v2/models/price-mlp/infer", json.dumps(body).encode(), {})
        assert status == 400, answer
        return str(json.loads(answer)["error"])

    shape = {"inputs": [{"name": "X", "shape": [1, 9], "datatype": "FP32", "data": [1] * 9}]}
    assert 'tensor "X"' in refused(shape) and "[-1, 10]" in refused(shape)
    datatype = {"inputs": [{"name": "X", "shape": [1, 10], "datatype": "FP64", "data": [1] * 10}]}
    assert "takes FP32, not FP64" in refused(datatype)
    count = {"inputs": [{"name": "X", "shape": [1, 10], "datatype": "FP32", "data": [1] * 9}]}
    assert "but `data` has 9" in refused(count)
    unknown = {"inputs": [{"name": "Y", "shape": [1, 10], "datatype": "FP32", "data": [1] * 10}]}
    assert 'tensor "X": is missing' in refused(unknown)
    fine = {"name": "X", "shape": [1, 10], "datatype": "FP32", "data": [1] * 10}
    assert "no such output" in refused({"inputs": [fine], "outputs": [{"name": "nope"}]})
    assert "not valid JSON" in refused_raw(oip, b"{")


def refused_raw(stack: Stack, body: bytes) -> str:
    status, _, answer = post(stack, "/v2/models/price-mlp/infer", body, {})
    assert status == 400, answer
    return str(json.loads(answer)["error"])


def test_a_binary_part_shorter_or_longer_than_declared_is_a_400(oip: Stack) -> None:
    header = json.dumps(
        {
            "inputs": [
                {"name": "X", "shape": [1, 10], "datatype": "FP32", "parameters": {"binary_data_size": 40}}
            ]
        }
    ).encode()
    data = struct.pack("<10f", *PRICES[0])
    length = {"Inference-Header-Content-Length": str(len(header))}
    ok = post(oip, "/v2/models/price-mlp/infer", header + data, length)
    assert ok[0] == 200
    for body, expected in (
        (header + data[:36], "only 36 bytes"),
        (header + data + b"xx", "2 bytes of binary data are left"),
    ):
        status, _, answer = post(oip, "/v2/models/price-mlp/infer", body, length)
        assert status == 400 and expected in json.loads(answer)["error"], answer
    status, _, answer = post(
        oip, "/v2/models/price-mlp/infer", header + data, {"Inference-Header-Content-Length": "99999"}
    )
    assert status == 400 and "Inference-Header-Content-Length" in json.loads(answer)["error"]


def test_a_model_that_takes_json_only_is_not_offered_as_tensors(stack: Stack) -> None:
    stack.worker("--model", "price")
    stack.gateway()
    stack.wait_for_models("price")
    with pytest.raises(InferenceServerException) as json_only:
        client(stack).get_model_metadata("price")
    assert json_only.value.status() == "404" and "JSON inputs" in json_only.value.message()
    eventually(lambda: not client(stack).is_model_ready("price"), "price is not ready for tensors")


def test_identical_requests_share_one_call_and_a_purge_reaches_tensor_entries(oip: Stack) -> None:
    slow = np.array([[1.0, 2.0], [3.0, 4.0]], np.float16)

    def infer(_: int) -> list[int]:
        inputs = []
        for name, datatype, value in (
            ("a", "FP16", slow),
            ("b", "BF16", slow.astype(ml_dtypes.bfloat16)),
            ("c", "BYTES", np.array([b"x", b"yy"], dtype=object)),
            ("d", "INT32", np.array([[1, 1], [2, 2]], np.int32)),
        ):
            tensor = triton.InferInput(name, list(value.shape), datatype)
            tensor.set_data_from_numpy(value)
            inputs.append(tensor)
        result = client(oip).infer("py-tensors", inputs, outputs=[triton.InferRequestedOutput("length")])
        return list(result.as_numpy("length"))

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(infer, range(8)))
    assert answers == [[1, 2]] * 8
    assert oip.metric("gateway_model_calls_total", model="py-tensors") == 1
    request = urllib.request.Request(f"{oip.gateway_url}/v1/models/py-tensors/cache", method="DELETE")
    with urllib.request.urlopen(request) as response:
        assert json.loads(response.read())["purged"] == 1
    assert infer(0) == [1, 2]
    assert oip.metric("gateway_model_calls_total", model="py-tensors") == 2
