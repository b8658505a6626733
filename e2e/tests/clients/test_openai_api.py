"""Chat, completions, embeddings, streams, tool calls and every error class, as
the official SDK sees them."""

from __future__ import annotations

import json

import openai
import pytest

from conftest import TOKENS, Stack

HELLO = [{"role": "user", "content": "hello from the sdk"}]


def test_a_chat_completion_is_computed_once_then_served_from_the_cache(llm: Stack) -> None:
    client = llm.client()
    first = client.chat.completions.with_raw_response.create(model="tiny-chat", messages=HELLO, seed=1)
    again = client.chat.completions.with_raw_response.create(model="tiny-chat", messages=HELLO, seed=1)
    assert first.headers["x-cache"] == "MISS"
    assert again.headers["x-cache"] == "HIT"
    assert again.headers["cache-status"].startswith("gateway; hit; ttl=")
    assert int(again.headers["age"]) >= 0
    computed, cached = first.parse(), again.parse()
    assert computed.object == "chat.completion"
    assert computed.id.startswith("chatcmpl-")
    assert computed.model == "tiny-chat"
    assert computed.choices[0].message.content == "You said: hello from the sdk"
    assert computed.choices[0].finish_reason == "stop"
    assert computed.usage is not None and computed.usage.completion_tokens == 6
    assert cached.choices[0].message == computed.choices[0].message
    assert cached.usage == computed.usage
    assert llm.metric("gateway_cached_tokens_total", model="tiny-chat", kind="completion") == 6
    assert llm.metric("gateway_time_to_first_token_seconds_count", outcome="hit") == 1


def test_a_completion_answers_text(llm: Stack) -> None:
    completion = llm.client().completions.create(model="tiny-chat", prompt="once upon a time", seed=3)
    assert completion.object == "text_completion"
    assert completion.choices[0].text == "You said: once upon a time"


def test_embeddings_come_as_the_sdks_default_base64_and_as_floats(llm: Stack) -> None:
    client = llm.client()
    # The SDK asks for base64 and decodes it into floats itself.
    default = client.embeddings.create(model="tiny-embed", input=["alpha", "beta"])
    floats = client.embeddings.with_raw_response.create(
        model="tiny-embed", input=["alpha", "beta"], encoding_format="float"
    )
    # One entry serves both encodings: the encoding is not in the key.
    assert floats.headers["x-cache"] == "HIT"
    as_floats = floats.parse()
    assert [len(item.embedding) for item in default.data] == [16, 16]
    for decoded, plain in zip(default.data, as_floats.data, strict=True):
        assert decoded.embedding == pytest.approx(plain.embedding, abs=1e-6)
    assert default.data[0].embedding != default.data[1].embedding
    norm = sum(x * x for x in as_floats.data[0].embedding)
    assert norm == pytest.approx(1.0, abs=1e-4)


def test_a_stream_sends_every_chunk_with_one_id_and_the_usage_before_done(llm: Stack) -> None:
    client = llm.client()
    stream = client.chat.completions.create(
        model="tiny-chat", messages=HELLO, seed=5, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert len({chunk.id for chunk in chunks}) == 1
    assert len({chunk.created for chunk in chunks}) == 1
    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == "You said: hello from the sdk"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == chunks[-1].usage.prompt_tokens + 6
    # The same request again is a hit that replays the chunks the model produced.
    replay = client.chat.completions.with_raw_response.create(
        model="tiny-chat", messages=HELLO, seed=5, stream=True
    )
    assert replay.headers["x-cache"] == "HIT"
    replayed = list(replay.parse())
    assert [c.choices[0].delta.content for c in replayed] == [
        c.choices[0].delta.content for c in chunks if c.choices
    ]
    assert all(chunk.usage is None for chunk in replayed), "usage only when asked for"
    # And a request that asks for no stream is served from the same entry.
    whole = client.chat.completions.with_raw_response.create(model="tiny-chat", messages=HELLO, seed=5)
    assert whole.headers["x-cache"] == "HIT"
    assert whole.parse().choices[0].message.content == text


def test_tool_calls_and_reasoning_are_streamed_and_replayed_whole(llm: Stack) -> None:
    client = llm.client()
    request = {
        "model": "tiny-chat",
        "messages": [{"role": "user", "content": "weather in Oslo"}],
        "tools": [{"type": "function", "function": {"name": "weather", "parameters": {}}}],
        "reasoning_effort": "low",
        "seed": 9,
    }
    chunks = list(client.chat.completions.create(stream=True, **request))
    calls = [call for c in chunks if c.choices for call in (c.choices[0].delta.tool_calls or [])]
    assert calls and calls[0].function is not None and calls[0].function.name == "weather"
    arguments = "".join(call.function.arguments or "" for call in calls if call.function)
    assert json.loads(arguments) == {"query": "weather in Oslo"}
    reasoning = "".join(
        getattr(c.choices[0].delta, "reasoning_content", None) or "" for c in chunks if c.choices
    )
    assert reasoning, "reasoning content is streamed"
    whole = client.chat.completions.with_raw_response.create(**request)
    assert whole.headers["x-cache"] == "HIT"
    message = whole.parse().choices[0].message
    assert message.tool_calls is not None and message.tool_calls[0].function.name == "weather"
    assert json.loads(message.tool_calls[0].function.arguments) == {"query": "weather in Oslo"}
    assert getattr(message, "reasoning_content", None) == reasoning
    assert whole.parse().choices[0].finish_reason == "tool_calls"


def test_n_choices_are_answered_each_with_its_index(llm: Stack) -> None:
    completion = llm.client().chat.completions.create(model="tiny-chat", messages=HELLO, n=3, seed=2)
    assert [choice.index for choice in completion.choices] == [0, 1, 2]
    assert len({choice.message.content for choice in completion.choices}) == 3


def test_each_error_has_the_status_the_sdk_maps_to_its_exception(llm: Stack) -> None:
    client = llm.client()
    with pytest.raises(openai.NotFoundError) as not_found:
        client.chat.completions.create(model="no-such-model", messages=HELLO)
    assert not_found.value.code == "model_not_found"
    assert not_found.value.param == "model"
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="tiny-chat", messages=HELLO, n=0)
    assert bad.value.param == "n"
    with pytest.raises(openai.BadRequestError) as no_messages:
        client.chat.completions.create(model="tiny-chat", messages=[])
    assert no_messages.value.param == "messages"
    with pytest.raises(openai.AuthenticationError):
        llm.client("not-a-token").chat.completions.create(model="tiny-chat", messages=HELLO)
    with pytest.raises(openai.UnprocessableEntityError) as rejected:
        client.embeddings.create(model="tiny-chat", input="x")
    assert "embeddings" in rejected.value.message
    # The headers the SDKs send are accepted.
    headers = {"OpenAI-Organization": "org-1", "OpenAI-Project": "proj-1"}
    assert llm.client(TOKENS[1], default_headers=headers).models.list().data


def test_a_gateway_over_its_limit_answers_429_with_retry_after(stack: Stack) -> None:
    stack.worker("--model", "tiny-chat", "--token-interval-ms", "100")
    stack.gateway("--max-inflight", "1")
    stack.wait_for_models("tiny-chat")
    client = stack.client()
    long = [{"role": "user", "content": " ".join(["word"] * 30)}]
    slow = client.chat.completions.create(model="tiny-chat", messages=long, seed=1, stream=True)
    next(iter(slow))
    with pytest.raises(openai.RateLimitError) as limited:
        client.chat.completions.create(model="tiny-chat", messages=HELLO, seed=1)
    assert limited.value.response.headers["retry-after"] == "1"
    slow.close()


def test_without_nats_the_gateway_answers_503_with_retry_after(stack: Stack) -> None:
    stack.worker()
    stack.gateway()
    stack.wait_for_models("tiny-chat")
    stack.processes[0].kill()  # nats-server
    stack.processes[0].wait()
    client = stack.client()

    def unavailable() -> bool:
        try:
            client.chat.completions.create(model="tiny-chat", messages=HELLO, seed=11)
        except openai.InternalServerError as err:
            assert err.status_code == 503
            assert err.response.headers["retry-after"] == "1"
            return True
        return False

    from conftest import eventually

    eventually(unavailable, "a 503 once NATS is gone")
