"""Tensor models (the Open Inference Protocol): the request a worker gets, in
the binary form (a JSON header, then each input's little-endian bytes), read
into NumPy arrays; the model's arrays written back as the reply. The same
format as the Rust contract's ``prediction_contract::tensors``.

BF16, which NumPy lacks, reaches a model as float32 (exactly) and an output
declared BF16 is rounded to it from the model's floats."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

from .model import InvalidInput

try:  # NumPy is needed only by tensor models.
    import numpy as np
except ImportError:  # pragma: no cover - the library works without it otherwise
    np = None  # type: ignore[assignment]

#: The protocol's datatypes and the NumPy types they become (BF16 and BYTES
#: apart).
NUMPY_TYPES = {
    "BOOL": "bool",
    "UINT8": "<u1",
    "UINT16": "<u2",
    "UINT32": "<u4",
    "UINT64": "<u8",
    "INT8": "<i1",
    "INT16": "<i2",
    "INT32": "<i4",
    "INT64": "<i8",
    "FP16": "<f2",
    "FP32": "<f4",
    "FP64": "<f8",
}
DATATYPES = [*NUMPY_TYPES, "BF16", "BYTES"]


@dataclass(frozen=True)
class TensorSpec:
    """A tensor a model takes or gives: ``-1`` for a dimension of any size."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.datatype not in DATATYPES:
            raise ValueError(
                f"tensor {self.name}: datatype {self.datatype!r} is not one of {DATATYPES}"
            )

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


def _require_numpy() -> Any:
    if np is None:
        raise RuntimeError("tensor models need NumPy: pip install numpy")
    return np


def _array(name: str, datatype: str, shape: list[int], data: bytes) -> Any:
    numpy = _require_numpy()
    count = 1
    for dim in shape:
        count *= dim
    if datatype == "BYTES":
        items, at = [], 0
        for index in range(count):
            if at + 4 > len(data):
                raise InvalidInput(f'tensor "{name}": the data ends before element {index}')
            (length,) = struct.unpack_from("<I", data, at)
            at += 4
            if at + length > len(data):
                raise InvalidInput(f'tensor "{name}": element {index} runs past the data')
            items.append(data[at : at + length])
            at += length
        if at != len(data):
            raise InvalidInput(
                f'tensor "{name}": {len(data) - at} bytes are left after its elements'
            )
        return numpy.array(items, dtype=object).reshape(shape)
    if datatype == "BF16":
        if len(data) != count * 2:
            raise InvalidInput(
                f'tensor "{name}": shape {shape} of BF16 takes {count * 2} bytes, not {len(data)}'
            )
        halves = numpy.frombuffer(data, dtype="<u2").astype("<u4") << 16
        return halves.view("<f4").reshape(shape)
    dtype = numpy.dtype(NUMPY_TYPES[datatype])
    expected = count * dtype.itemsize
    if len(data) != expected:
        raise InvalidInput(
            f'tensor "{name}": shape {shape} of {datatype} takes {expected} bytes, not {len(data)}'
        )
    return numpy.frombuffer(data, dtype=dtype).reshape(shape)


def _bytes_of(spec: TensorSpec, value: Any) -> tuple[list[int], bytes]:
    numpy = _require_numpy()
    array = numpy.asarray(value)
    shape = [int(dim) for dim in array.shape]
    if spec.datatype == "BYTES":
        parts = []
        for item in array.reshape(-1):
            raw = item if isinstance(item, bytes) else str(item).encode()
            parts.append(struct.pack("<I", len(raw)) + raw)
        return shape, b"".join(parts)
    if spec.datatype == "BF16":
        floats = numpy.ascontiguousarray(array, dtype="<f4").view("<u4")
        # Round to nearest even, as a conversion to bfloat16 does.
        rounded = (floats + 0x7FFF + ((floats >> 16) & 1)) >> 16
        return shape, rounded.astype("<u2").tobytes()
    return shape, numpy.ascontiguousarray(array, dtype=NUMPY_TYPES[spec.datatype]).tobytes()


def _fits(declared: tuple[int, ...], given: list[int]) -> bool:
    return len(declared) == len(given) and all(
        d < 0 or d == g for d, g in zip(declared, given, strict=True)
    )


def read_request(
    payload: bytes, header_length: int, inputs: list[TensorSpec], outputs: list[TensorSpec]
) -> tuple[dict[str, Any], list[str]]:
    """The request's input arrays, checked against the model's inputs, and the
    names of the outputs it asks for (empty: every output)."""
    if header_length > len(payload):
        raise InvalidInput(f"the header is {header_length} bytes, the message {len(payload)}")
    try:
        header = json.loads(payload[:header_length])
    except ValueError as err:
        raise InvalidInput(f"the JSON header is not valid JSON: {err}") from None
    binary = memoryview(payload)[header_length:]
    arrays: dict[str, Any] = {}
    for item in header.get("inputs") or []:
        name = str(item.get("name"))
        size = (item.get("parameters") or {}).get("binary_data_size")
        if not isinstance(size, int) or size > len(binary):
            raise InvalidInput(f'tensor "{name}": its binary data is missing')
        data, binary = bytes(binary[:size]), binary[size:]
        spec = next((spec for spec in inputs if spec.name == name), None)
        if spec is None:
            names = ", ".join(spec.name for spec in inputs)
            raise InvalidInput(
                f'tensor "{name}": the model has no such input (its inputs: {names})'
            )
        shape = [int(dim) for dim in item.get("shape", [])]
        if item.get("datatype") != spec.datatype:
            raise InvalidInput(
                f'tensor "{name}": the model takes {spec.datatype}, not {item.get("datatype")}'
            )
        if not _fits(spec.shape, shape):
            raise InvalidInput(
                f'tensor "{name}": the model takes shape {list(spec.shape)}, not {shape}'
            )
        arrays[name] = _array(name, spec.datatype, shape, data)
    if len(binary):
        raise InvalidInput(f"{len(binary)} bytes of binary data are left after the tensors")
    for spec in inputs:
        if spec.name not in arrays:
            raise InvalidInput(f'tensor "{spec.name}": is missing: the model takes this input')
    wanted = [str(output.get("name")) for output in header.get("outputs") or []]
    for name in wanted:
        if not any(spec.name == name for spec in outputs):
            raise InvalidInput(f'tensor "{name}": the model has no such output')
    return arrays, wanted


def write_response(
    model: str, version: str, results: Any, outputs: list[TensorSpec], wanted: list[str]
) -> tuple[bytes, int]:
    """The reply: the outputs asked for (or all), each binary, as declared."""
    if not isinstance(results, dict):
        raise TypeError(f"a tensor model returns a dict of arrays, not {type(results).__name__}")
    headers, data = [], []
    for spec in outputs:
        if wanted and spec.name not in wanted:
            continue
        if spec.name not in results:
            raise TypeError(f"the model returned no output {spec.name!r}")
        shape, raw = _bytes_of(spec, results[spec.name])
        headers.append(
            {
                "name": spec.name,
                "datatype": spec.datatype,
                "shape": shape,
                "parameters": {"binary_data_size": len(raw)},
            }
        )
        data.append(raw)
    header = json.dumps(
        {"model_name": model, "model_version": version, "outputs": headers}, separators=(",", ":")
    ).encode()
    return header + b"".join(data), len(header)
