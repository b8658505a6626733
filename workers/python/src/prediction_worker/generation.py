"""Generative models: a chat model is a generator of deltas (``def`` or
``async def``), an embedding model a function of texts. Their answers take the
contract's shape (docs/contract.md): OpenAI stream chunks without the envelope
the gateway adds, the token counts in a last chunk; a caller that asks for no
stream gets them assembled into one answer."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncGenerator, Callable, Iterator
from concurrent.futures import Executor
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from .model import InvalidInput

CHAT = "chat.completions"
COMPLETIONS = "completions"
EMBEDDINGS = "embeddings"
#: The most choices (``n``) one request may ask for, as the gateway allows.
MAX_CHOICES = 128
#: The most texts one embeddings request may hold.
MAX_TEXTS = 2048


@dataclass(frozen=True)
class Usage:
    """Yield it (last) from a chat model to report its own token counts;
    otherwise the prompt's words and the pieces yielded are counted."""

    prompt_tokens: int
    completion_tokens: int


def api_of(request: dict[str, Any], said: str | None) -> str:
    """The API of ``request``: what the caller said, else told by its fields."""
    if said in (CHAT, COMPLETIONS, EMBEDDINGS):
        return said
    for field, api in (("messages", CHAT), ("prompt", COMPLETIONS), ("input", EMBEDDINGS)):
        if field in request:
            return api
    raise InvalidInput(
        "the request has none of `messages` (chat), `prompt` (completions) or `input` (embeddings)"
    )


def _words(value: Any) -> int:
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, list):
        return sum(_words(item) for item in value)
    if isinstance(value, dict):
        return _words(value.get("content")) + _words(value.get("text"))
    return 0


async def _pieces(
    function: Callable[..., Any], request: dict[str, Any], executor: Executor
) -> AsyncGenerator[Any, None]:
    """What the model yields; a plain generator runs in the thread pool, one
    piece at a time; either is closed when the caller stops early."""
    if inspect.isasyncgenfunction(function):
        async with aclosing(function(request)) as pieces:
            async for piece in pieces:
                yield piece
        return
    loop = asyncio.get_running_loop()
    generator: Iterator[Any] = await loop.run_in_executor(executor, function, request)
    if not inspect.isgenerator(generator) and not hasattr(generator, "__next__"):
        generator = iter(generator)
    done = object()
    try:
        while True:
            piece = await loop.run_in_executor(executor, next, generator, done)
            if piece is done:
                return
            yield piece
    finally:
        close = getattr(generator, "close", None)
        if callable(close):
            close()


async def chunks(
    model: str, function: Callable[..., Any], api: str, request: dict[str, Any], executor: Executor
) -> AsyncGenerator[dict[str, Any], None]:
    """The chunks of a chat model's answer to ``request``: each choice's
    pieces as they come (a ``str`` is text; a ``dict`` a chat delta, e.g.
    ``{"tool_calls": [...]}`` or ``{"reasoning_content": "..."}``), its end,
    then the usage."""
    if api == EMBEDDINGS:
        raise InvalidInput(f"{model} answers chat and completions, not embeddings")
    choices = request.get("n")
    if choices is None:
        choices = 1
    if not isinstance(choices, int) or not 1 <= choices <= MAX_CHOICES:
        raise InvalidInput(f"`n` must be a whole number from 1 to {MAX_CHOICES}")
    prompt = request.get("messages") if api == CHAT else request.get("prompt")
    reported: Usage | None = None
    produced = 0
    for index in range(choices):
        first, calls_tools = True, False
        async with aclosing(_pieces(function, request, executor)) as pieces:
            async for piece in pieces:
                if isinstance(piece, Usage):
                    reported = piece
                    continue
                if api == COMPLETIONS:
                    text = piece if isinstance(piece, str) else str(piece.get("content", ""))
                    yield {"choices": [{"index": index, "text": text, "finish_reason": None}]}
                else:
                    if isinstance(piece, str):
                        delta: dict[str, Any] = {"content": piece}
                    elif isinstance(piece, dict):
                        delta = dict(piece)
                    else:
                        raise TypeError(
                            f"a chat model yields str or dict deltas, not {type(piece).__name__}"
                        )
                    if first:
                        delta = {"role": "assistant", **delta}
                    calls_tools = calls_tools or "tool_calls" in delta
                    yield {"choices": [{"index": index, "delta": delta, "finish_reason": None}]}
                first = False
                produced += 1
        end: dict[str, Any] = {
            "index": index,
            "finish_reason": "tool_calls" if calls_tools else "stop",
        }
        if api == COMPLETIONS:
            end["text"] = ""
        else:
            end["delta"] = {}
        yield {"choices": [end]}
    usage = reported or Usage(_words(prompt), produced)
    yield {
        "choices": [],
        "usage": {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        },
    }


def assemble(api: str, answer_chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """The complete answer the chunks make (as the Rust contract's
    ``openai::assemble``): per choice its message or text, then the usage."""
    choices: dict[int, dict[str, Any]] = {}
    usage: Any = None
    for chunk in answer_chunks:
        if chunk.get("usage") is not None:
            usage = chunk["usage"]
        for part in chunk.get("choices", []):
            choice = choices.setdefault(
                part.get("index", 0), {"text": "", "content": None, "tool_calls": {}}
            )
            if part.get("finish_reason") is not None:
                choice["finish_reason"] = part["finish_reason"]
            if "text" in part:
                choice["text"] += part["text"]
            delta = part.get("delta") or {}
            for key in ("role",):
                if key in delta:
                    choice[key] = delta[key]
            for key in ("content", "reasoning_content"):
                if isinstance(delta.get(key), str):
                    choice[key] = (choice.get(key) or "") + delta[key]
            for call in delta.get("tool_calls") or []:
                merged = choice["tool_calls"].setdefault(
                    call.get("index", 0), {"function": {"arguments": ""}}
                )
                for key in ("id", "type"):
                    if call.get(key) is not None:
                        merged[key] = call[key]
                function = call.get("function") or {}
                if function.get("name") is not None:
                    merged["function"]["name"] = function["name"]
                merged["function"]["arguments"] += function.get("arguments") or ""
    answer: list[dict[str, Any]] = []
    for index in sorted(choices):
        choice = choices[index]
        whole: dict[str, Any] = {"index": index, "logprobs": None}
        if api == COMPLETIONS:
            whole["text"] = choice["text"]
        else:
            message: dict[str, Any] = {
                "role": choice.get("role", "assistant"),
                "content": choice["content"],
            }
            if "reasoning_content" in choice:
                message["reasoning_content"] = choice["reasoning_content"]
            if choice["tool_calls"]:
                message["tool_calls"] = [
                    {"type": "function", **call} for _, call in sorted(choice["tool_calls"].items())
                ]
            whole["message"] = message
        whole["finish_reason"] = choice.get("finish_reason")
        answer.append(whole)
    result: dict[str, Any] = {"choices": answer}
    if usage is not None:
        result["usage"] = usage
    return result


async def embeddings(
    model: str, function: Callable[..., Any], request: dict[str, Any], executor: Executor
) -> dict[str, Any]:
    """An embedding model's answer: one vector per input text, in order."""
    texts = request.get("input")
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list) or not texts or not all(isinstance(text, str) for text in texts):
        raise InvalidInput("`input` must be a string or a non-empty array of strings")
    if len(texts) > MAX_TEXTS:
        raise InvalidInput(f"at most {MAX_TEXTS} texts per request")
    if inspect.iscoroutinefunction(function):
        vectors = await function(texts)
    else:
        vectors = await asyncio.get_running_loop().run_in_executor(executor, function, texts)
    if callable(getattr(vectors, "tolist", None)):
        vectors = vectors.tolist()
    if not isinstance(vectors, list) or len(vectors) != len(texts):
        raise TypeError(f"{model} must return one vector per text ({len(texts)})")
    tokens = _words(texts)
    return {
        "data": [
            {
                "index": index,
                "embedding": list(vector.tolist() if hasattr(vector, "tolist") else vector),
            }
            for index, vector in enumerate(vectors)
        ],
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
