"""Chat and embedding models written with the Python library, behind the
gateway, as the SDK sees them."""

from __future__ import annotations

import json
from pathlib import Path

import openai
import pytest

from conftest import Stack, eventually

ASK = [{"role": "user", "content": "hello python"}]


@pytest.fixture
def python_llm(stack: Stack, tmp_path: Path) -> Stack:
    stack.stopped_log = tmp_path / "stopped.log"  # type: ignore[attr-defined]
    stack.python_worker({"STOPPED_LOG": str(stack.stopped_log), "PY_CHAT_DELAY": "0.05"})  # type: ignore[attr-defined]
    stack.gateway()
    stack.wait_for_models("py-chat", "py-sync-chat", "py-embed")
    return stack


def test_an_async_generator_streams_and_its_answer_is_cached(python_llm: Stack) -> None:
    client = python_llm.client()
    chunks = list(
        client.chat.completions.create(
            model="py-chat", messages=ASK, seed=1, stream=True, stream_options={"include_usage": True}
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Python says: hello python"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4
    whole = client.chat.completions.with_raw_response.create(model="py-chat", messages=ASK, seed=1)
    assert whole.headers["x-cache"] == "HIT"
    assert whole.parse().choices[0].message.content == text


def test_tool_call_deltas_and_n_choices(python_llm: Stack) -> None:
    client = python_llm.client()
    answer = client.chat.completions.create(
        model="py-chat",
        messages=ASK,
        seed=2,
        n=2,
        tools=[{"type": "function", "function": {"name": "lookup", "parameters": {}}}],
    )
    assert [choice.index for choice in answer.choices] == [0, 1]
    call = answer.choices[1].message.tool_calls[0]  # type: ignore[index]
    assert call.function.name == "lookup" and json.loads(call.function.arguments) == {"q": 1}
    assert answer.choices[0].finish_reason == "tool_calls"


def test_a_plain_generator_answers_completions(python_llm: Stack) -> None:
    completion = python_llm.client().completions.create(model="py-sync-chat", prompt="quiet words", seed=1)
    assert completion.choices[0].text == "QUIET WORDS"


def test_an_embedding_model_answers_both_encodings(python_llm: Stack) -> None:
    client = python_llm.client()
    default = client.embeddings.create(model="py-embed", input=["ab", "abcd"])
    assert [item.embedding for item in default.data] == [[2.0, 1.0, -0.5], [4.0, 1.0, -0.5]]


def test_a_failing_model_is_a_500_and_a_rejected_input_a_422(python_llm: Stack) -> None:
    client = python_llm.client()
    with pytest.raises(openai.InternalServerError) as failed:
        client.chat.completions.create(
            model="py-chat", messages=[{"role": "user", "content": "explode"}], seed=1
        )
    assert failed.value.status_code == 500
    with pytest.raises(openai.UnprocessableEntityError) as rejected:
        client.chat.completions.create(model="py-chat", messages=[{"role": "user", "content": ""}], seed=1)
    assert "say something" in rejected.value.message


def test_a_stream_nobody_listens_to_is_stopped_in_the_python_worker(python_llm: Stack) -> None:
    long = [{"role": "user", "content": " ".join(["w"] * 60)}]
    stream = python_llm.client().chat.completions.create(model="py-chat", messages=long, seed=1, stream=True)
    next(stream)
    next(stream)
    stream.close()
    stopped_log: Path = python_llm.stopped_log  # type: ignore[attr-defined]
    eventually(
        lambda: stopped_log.exists() and "stopped" in stopped_log.read_text(), "the generator is closed"
    )
    again = python_llm.client().chat.completions.with_raw_response.create(
        model="py-chat", messages=long, seed=1
    )
    assert again.headers["x-cache"] == "MISS"
