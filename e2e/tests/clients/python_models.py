"""Models served by the Python library, for the tests: an async chat model, a
plain-generator one, an embedding model, and a tensor model of several
inputs and outputs (FP16, BF16, BYTES, INT32 in; FP32, FP16, BF16, BYTES, INT64
out).

Run as ``python -m prediction_worker python_models:worker --nats-url ...``.
``STOPPED_LOG`` names a file where each generation that stops before its end
(its caller went away) writes a line."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from typing import Any

import numpy as np
from prediction_worker import Delta, Input, InvalidInput, TensorSpec, Usage, Worker

worker = Worker()


def last_user_words(request: Input) -> list[str]:
    for message in reversed(request.get("messages") or []):
        if message.get("role") == "user":
            return str(message.get("content", "")).split()
    return str(request.get("prompt", "")).split()


@worker.chat_model("py-chat", version="1", first_chunk_timeout=5, chunk_gap_timeout=2)
async def py_chat(request: Input) -> AsyncIterator[Delta]:
    words = last_user_words(request)
    if "explode" in words:
        raise RuntimeError("the model exploded")
    if not words:
        raise InvalidInput("say something")
    finished = False
    try:
        if request.get("tools"):
            call = {"index": 0, "id": "call_py", "type": "function"}
            yield {"tool_calls": [{**call, "function": {"name": "lookup", "arguments": ""}}]}
            yield {"tool_calls": [{"index": 0, "function": {"arguments": '{"q": 1}'}}]}
        for i, word in enumerate(["Python", "says:", *words]):
            await asyncio.sleep(float(os.environ.get("PY_CHAT_DELAY", "0.01")))
            yield word if i == 0 else " " + word
        yield Usage(prompt_tokens=len(words), completion_tokens=len(words) + 2)
        finished = True
    finally:
        if not finished and os.environ.get("STOPPED_LOG"):
            with open(os.environ["STOPPED_LOG"], "a") as log:
                log.write("stopped\n")


@worker.chat_model("py-sync-chat", version="1")
def py_sync_chat(request: Input) -> Iterator[Delta]:
    for i, word in enumerate(last_user_words(request)):
        yield word.upper() if i == 0 else " " + word.upper()


@worker.embedding_model("py-embed", version="1")
def py_embed(texts: list[str]) -> list[list[float]]:
    return [[float(len(text)), 1.0, -0.5] for text in texts]


@worker.tensor_model(
    "py-tensors",
    version="3",
    inputs=[
        TensorSpec("a", "FP16", (-1, 2)),
        TensorSpec("b", "BF16", (-1, 2)),
        TensorSpec("c", "BYTES", (-1,)),
        TensorSpec("d", "INT32", (-1, 2)),
    ],
    outputs=[
        TensorSpec("sum", "FP32", (-1, 2)),
        TensorSpec("twice", "FP16", (-1, 2)),
        TensorSpec("next", "BF16", (-1, 2)),
        TensorSpec("upper", "BYTES", (-1,)),
        TensorSpec("length", "INT64", (-1,)),
    ],
)
def py_tensors(inputs: dict[str, Any]) -> dict[str, Any]:
    a, b, c, d = inputs["a"], inputs["b"], inputs["c"], inputs["d"]
    if a.shape[0] != d.shape[0]:
        raise InvalidInput("a and d must have as many rows")
    return {
        "sum": a.astype(np.float32) + b + d,
        "twice": a * 2,
        "next": b + 1,
        "upper": np.array([text.upper() for text in c], dtype=object),
        "length": np.array([len(text) for text in c], dtype=np.int64),
    }
