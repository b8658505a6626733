"""Streams shared by identical requests, and what clients and workers going
away mid-stream do to them."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from conftest import Stack, eventually

LONG = [{"role": "user", "content": " ".join(f"word{i}" for i in range(30))}]
EXPECTED = "You said: " + " ".join(f"word{i}" for i in range(30))


def text_of(chunks: list[openai.types.chat.ChatCompletionChunk]) -> str:
    return "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)


def stream(stack: Stack, **options: object) -> openai.Stream[openai.types.chat.ChatCompletionChunk]:
    return stack.client().chat.completions.create(
        model="tiny-chat", messages=LONG, seed=1, stream=True, **options
    )


def test_identical_concurrent_streams_make_one_generation(llm: Stack) -> None:
    with ThreadPoolExecutor(20) as pool:
        texts = list(pool.map(lambda _: text_of(list(stream(llm))), range(20)))
    assert texts == [EXPECTED] * 20
    assert llm.metric("gateway_model_calls_total", model="tiny-chat") == 1


def test_a_late_joiner_first_gets_what_was_already_produced(llm: Stack) -> None:
    first = stream(llm)
    early = [next(first) for _ in range(4)]
    joined = llm.client().chat.completions.with_raw_response.create(
        model="tiny-chat", messages=LONG, seed=1, stream=True
    )
    assert joined.headers["cache-status"] == "gateway; fwd=miss; collapsed"
    assert text_of(list(joined.parse())) == EXPECTED
    assert text_of(early + list(first)) == EXPECTED
    assert llm.metric("gateway_model_calls_total", model="tiny-chat") == 1


def test_a_client_leaving_does_not_break_the_others(llm: Stack) -> None:
    leaving, staying = stream(llm), stream(llm)
    next(leaving)
    next(staying)
    leaving.close()
    assert text_of(list(staying)) == EXPECTED
    # The generation completed and was stored.
    again = llm.client().chat.completions.with_raw_response.create(model="tiny-chat", messages=LONG, seed=1)
    assert again.headers["x-cache"] == "HIT"


def test_when_everyone_leaves_the_generation_is_cancelled_and_nothing_stored(llm: Stack) -> None:
    alone = stream(llm)
    next(alone)
    next(alone)
    alone.close()
    worker_url = llm.worker_metrics[0]
    eventually(
        lambda: llm.metric("worker_requests_total", worker_url, model="tiny-chat", outcome="cancelled") == 1,
        "the worker cancels the generation",
    )
    again = llm.client().chat.completions.with_raw_response.create(model="tiny-chat", messages=LONG, seed=1)
    assert again.headers["x-cache"] == "MISS", "a cancelled generation is never stored"
    assert again.parse().choices[0].message.content == EXPECTED


def test_a_worker_killed_mid_stream_ends_it_with_an_error_and_stores_nothing(stack: Stack) -> None:
    worker, _ = stack.worker("--model", "tiny-chat", "--token-interval-ms", "100")
    stack.gateway()
    stack.wait_for_models("tiny-chat")
    doomed = stream(stack)
    next(doomed)
    next(doomed)
    worker.kill()
    with pytest.raises(openai.APIError) as failed:
        list(doomed)
    assert "stopped producing" in failed.value.message
    stack.worker("--model", "tiny-chat", "--token-interval-ms", "1")
    stack.wait_for_models("tiny-chat")

    def computed_anew() -> bool:
        response = stack.client().chat.completions.with_raw_response.create(
            model="tiny-chat", messages=LONG, seed=1
        )
        assert response.headers["x-cache"] == "MISS"
        return response.parse().choices[0].message.content == EXPECTED

    eventually(computed_anew, "the next request computes the answer anew")


def test_identical_streams_on_two_gateways_make_one_generation(stack: Stack) -> None:
    _, worker_metrics = stack.worker("--model", "tiny-chat", "--token-interval-ms", "30")
    first = stack.gateway()
    second = stack.gateway()
    stack.wait_for_models("tiny-chat")
    clients = [
        openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=30) for url in (first, second)
    ]

    def streamed(client: openai.OpenAI) -> str:
        chunks = client.chat.completions.create(model="tiny-chat", messages=LONG, seed=1, stream=True)
        return text_of(list(chunks))

    with ThreadPoolExecutor(4) as pool:
        texts = list(pool.map(streamed, clients * 2))
    assert texts == [EXPECTED] * 4
    # The second gateway waited for the first one's entry (the Redis lock).
    assert stack.metric("worker_requests_total", worker_metrics, model="tiny-chat") == 1
