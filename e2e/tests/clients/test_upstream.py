"""The worker's `openai` kind: the cache in front of an OpenAI-compatible
server (here a fake one the test starts, as vLLM or llama.cpp's server would
answer)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from conftest import Stack
from fake_openai import FakeOpenAI

KEY = "sk-upstream-secret"


@pytest.fixture
def upstream(stack: Stack, tmp_path: Path) -> Iterator[tuple[Stack, FakeOpenAI]]:
    with FakeOpenAI(api_key=KEY) as fake:
        manifest = tmp_path / "models.toml"
        manifest.write_text(
            f"""
[[model]]
name = "llm"
kind = "openai"
version = "upstream-1"
url = "{fake.url}"
upstream_model = "upstream-llm"
api_key_env = "UPSTREAM_KEY"
concurrency = 4
first_chunk_timeout = "5s"
chunk_gap_timeout = "2s"
cache_sampled = false
"""
        )
        stack.worker("--model-config", str(manifest), env={"UPSTREAM_KEY": KEY})
        stack.gateway()
        stack.wait_for_models("llm")
        yield stack, fake


def test_streams_pass_through_and_the_answer_is_cached(upstream: tuple[Stack, FakeOpenAI]) -> None:
    stack, fake = upstream
    client = stack.client()
    question = [{"role": "user", "content": "tell me something"}]
    chunks = list(
        client.chat.completions.create(
            model="llm", messages=question, seed=1, stream=True, stream_options={"include_usage": True}
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Echo: tell me something"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4
    assert {c.model for c in chunks} == {"llm"}, "the gateway's model name, not the server's"
    sent = fake.requests[-1]
    assert sent["model"] == "upstream-llm"
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    assert fake.authorizations[-1] == f"Bearer {KEY}"
    whole = client.chat.completions.with_raw_response.create(model="llm", messages=question, seed=1)
    assert whole.headers["x-cache"] == "HIT"
    assert whole.parse().choices[0].message.content == text
    assert len(fake.requests) == 1


def test_completions_and_embeddings_are_forwarded(upstream: tuple[Stack, FakeOpenAI]) -> None:
    stack, fake = upstream
    client = stack.client()
    completion = client.completions.create(model="llm", prompt="a b c", seed=2)
    assert completion.choices[0].text == "Echo: a b c"
    embeddings = client.embeddings.create(model="llm", input=["xy", "xyz"])
    assert [item.embedding for item in embeddings.data] == [[2.0, 0.5, -1.0], [3.0, 0.5, -1.0]]
    assert fake.requests[-1]["encoding_format"] == "float"


def test_sampled_requests_are_not_cached_when_the_model_says_so(upstream: tuple[Stack, FakeOpenAI]) -> None:
    stack, fake = upstream
    client = stack.client()
    question = [{"role": "user", "content": "surprise me"}]
    for _ in range(2):
        response = client.chat.completions.with_raw_response.create(
            model="llm", messages=question, temperature=0.9
        )
        assert response.headers["x-cache"] == "MISS"
        response.parse()
    assert len(fake.requests) == 2
    seeded = [
        client.chat.completions.with_raw_response.create(
            model="llm", messages=question, temperature=0.9, seed=4
        )
        for _ in range(2)
    ]
    assert [r.headers["x-cache"] for r in seeded] == ["MISS", "HIT"]


def test_the_servers_failures_reach_the_client(upstream: tuple[Stack, FakeOpenAI]) -> None:
    stack, _ = upstream
    client = stack.client()
    stream = client.chat.completions.create(
        model="llm", messages=[{"role": "user", "content": "please break now"}], seed=1, stream=True
    )
    with pytest.raises(openai.APIError) as broken:
        list(stream)
    # The server's own message stays in the worker's log, under the request id.
    assert 'model "llm" failed' in broken.value.message
    assert "request id" in broken.value.message
    # A request the server refuses (400) is the caller's to fix: 422.
    with pytest.raises(openai.UnprocessableEntityError) as refused:
        client.completions.create(model="llm", prompt="x", max_tokens=0, seed=1)
    assert "max_tokens must be at least 1" in refused.value.message
