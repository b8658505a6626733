"""Whose answers a request may get: its own token's, its namespace's, never
another tenant's; and what the client's Cache-Control asks for."""

from __future__ import annotations

from conftest import TOKENS, Stack

ASK = [{"role": "user", "content": "which tenant am I"}]


def x_cache(stack: Stack, token: str, **options: object) -> str:
    response = stack.client(token).chat.completions.with_raw_response.create(
        model="tiny-chat", messages=ASK, seed=1, **options
    )
    response.parse()
    return str(response.headers["x-cache"])


def test_two_tokens_never_share_an_answer(llm: Stack) -> None:
    a, b = TOKENS
    assert x_cache(llm, a) == "MISS"
    assert x_cache(llm, b) == "MISS", "token b got token a's answer"
    assert x_cache(llm, a) == "HIT"
    assert x_cache(llm, b) == "HIT"
    assert llm.metric("gateway_model_calls_total", model="tiny-chat") == 2


def test_a_namespace_divides_a_tokens_answers(llm: Stack) -> None:
    a = TOKENS[0]
    assert x_cache(llm, a, extra_headers={"X-Cache-Namespace": "team-1"}) == "MISS"
    assert x_cache(llm, a, extra_headers={"X-Cache-Namespace": "team-2"}) == "MISS"
    assert x_cache(llm, a, extra_headers={"X-Cache-Namespace": "team-1"}) == "HIT"
    assert x_cache(llm, a) == "MISS", "no namespace is a namespace of its own"


def test_the_shared_cache_switch_lets_every_token_share(stack: Stack) -> None:
    stack.worker()
    stack.gateway("--api-token", ",".join(TOKENS), "--openai-shared-cache")
    stack.wait_for_models("tiny-chat")
    a, b = TOKENS
    assert x_cache(stack, a) == "MISS"
    assert x_cache(stack, b) == "HIT"


def test_no_cache_forces_a_new_generation_and_sampled_answers_are_cached_by_default(
    llm: Stack,
) -> None:
    a = TOKENS[0]
    assert x_cache(llm, a) == "MISS"
    assert x_cache(llm, a, extra_headers={"Cache-Control": "no-cache"}) == "MISS"
    assert llm.metric("gateway_model_calls_total", model="tiny-chat") == 2
    # temperature > 0 without a seed: sampled; tiny-chat's setting caches it.
    client = llm.client(a)
    first = client.chat.completions.with_raw_response.create(model="tiny-chat", messages=ASK, temperature=0.8)
    again = client.chat.completions.with_raw_response.create(model="tiny-chat", messages=ASK, temperature=0.8)
    assert (first.headers["x-cache"], again.headers["x-cache"]) == ("MISS", "HIT")


def test_fields_that_change_the_answer_are_in_the_key(llm: Stack) -> None:
    a = TOKENS[0]
    assert x_cache(llm, a) == "MISS"
    assert x_cache(llm, a, temperature=0) == "MISS"
    assert x_cache(llm, a, max_tokens=3) == "MISS"
    assert x_cache(llm, a, response_format={"type": "json_object"}) == "MISS"
    # `user` and `stream` cannot change it.
    assert x_cache(llm, a, user="end-user-7") == "HIT"
