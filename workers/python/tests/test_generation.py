"""A chat model's pieces as the contract's chunks, and the chunks assembled
into one answer, without NATS."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from prediction_worker import InvalidInput, Usage
from prediction_worker.generation import CHAT, COMPLETIONS, assemble, chunks, embeddings


def collect(function: Any, api: str, request: dict[str, Any]) -> list[dict[str, Any]]:
    async def run() -> list[dict[str, Any]]:
        with ThreadPoolExecutor(1) as executor:
            return [chunk async for chunk in chunks("m", function, api, request, executor)]

    return asyncio.run(run())


def test_pieces_become_deltas_each_choice_ends_and_the_usage_comes_last() -> None:
    def model(request: dict[str, Any]) -> Iterator[Any]:
        yield "Hel"
        yield {"content": "lo", "reasoning_content": "why"}

    answer_chunks = collect(model, CHAT, {"messages": [{"role": "user", "content": "a b"}], "n": 2})
    assert answer_chunks[0] == {
        "choices": [
            {"index": 0, "delta": {"role": "assistant", "content": "Hel"}, "finish_reason": None}
        ]
    }
    assert answer_chunks[2]["choices"][0]["finish_reason"] == "stop"
    assert answer_chunks[-1]["usage"] == {
        "prompt_tokens": 2,
        "completion_tokens": 4,
        "total_tokens": 6,
    }
    whole = assemble(CHAT, answer_chunks)
    assert [choice["message"]["content"] for choice in whole["choices"]] == ["Hello", "Hello"]
    assert whole["choices"][1]["message"]["reasoning_content"] == "why"


def test_an_async_model_reports_its_own_usage_and_completions_are_text() -> None:
    async def model(request: dict[str, Any]) -> AsyncIterator[Any]:
        yield "once"
        yield Usage(prompt_tokens=7, completion_tokens=1)

    answer_chunks = collect(model, COMPLETIONS, {"prompt": "x"})
    assert assemble(COMPLETIONS, answer_chunks) == {
        "choices": [{"index": 0, "logprobs": None, "text": "once", "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 7, "completion_tokens": 1, "total_tokens": 8},
    }


def test_tool_call_deltas_merge_and_finish_with_tool_calls() -> None:
    def model(request: dict[str, Any]) -> Iterator[Any]:
        yield {
            "tool_calls": [{"index": 0, "id": "c1", "function": {"name": "f", "arguments": "{"}}]
        }
        yield {"tool_calls": [{"index": 0, "function": {"arguments": "}"}}]}

    whole = assemble(CHAT, collect(model, CHAT, {"messages": [{"role": "user", "content": "x"}]}))
    choice = whole["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["tool_calls"] == [
        {"type": "function", "id": "c1", "function": {"name": "f", "arguments": "{}"}}
    ]


def test_bad_requests_are_the_callers_to_fix() -> None:
    def model(request: dict[str, Any]) -> Iterator[Any]:
        yield "x"

    with pytest.raises(InvalidInput, match="`n`"):
        collect(model, CHAT, {"messages": [], "n": 0})

    async def embed() -> None:
        with ThreadPoolExecutor(1) as executor:
            await embeddings("m", lambda texts: [], {"input": [1, 2]}, executor)

    with pytest.raises(InvalidInput, match="`input`"):
        asyncio.run(embed())
