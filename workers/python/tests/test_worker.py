"""The library against a real nats-server: the contract as the gateway sees it."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from nats.errors import NoRespondersError
from serving import Serving, error_of, run

from prediction_worker import InvalidInput, Worker

HERE = Path(__file__).parent


def test_a_prediction_comes_back_with_its_version_freshness_and_compute_time(nats_url: str) -> None:
    worker = Worker(nats_url)

    @worker.model("sentiment", version="1.0.0", freshness_ttl=60)
    def sentiment(inp: dict) -> dict:
        if "text" not in inp:
            raise InvalidInput("missing string field `text`")
        return {"positive": "bad" not in inp["text"]}

    async def test() -> None:
        async with Serving(worker, nats_url) as serving:
            reply = await serving.ask("sentiment", {"text": "a good day"})
            assert error_of(reply) is None
            assert json.loads(reply.data) == {"positive": True}
            assert reply.headers["Model-Version"] == "1.0.0"
            assert reply.headers["Freshness-Ttl-Ms"] == "60000"
            assert float(reply.headers["Compute-Time-Ms"]) >= 0

    run(test)


def test_no_freshness_leaves_the_gateways_default_and_zero_means_not_cached(nats_url: str) -> None:
    worker = Worker(nats_url)
    worker.model("default-ttl", version="1")(lambda inp: 1)
    worker.model("uncached", version="1", freshness_ttl=0)(lambda inp: 2)

    async def test() -> None:
        async with Serving(worker, nats_url) as serving:
            default = await serving.ask("default-ttl", {})
            assert "Freshness-Ttl-Ms" not in default.headers
            assert default.headers["Model-Version"] == "1"
            uncached = await serving.ask("uncached", {})
            assert uncached.headers["Freshness-Ttl-Ms"] == "0"

    run(test)


def test_invalid_input_is_400_with_its_message(nats_url: str) -> None:
    worker = Worker(nats_url)

    @worker.model("sentiment", version="1")
    def sentiment(inp: dict) -> dict:
        if "text" not in inp:
            raise InvalidInput("missing string field `text`")
        return {}

    async def test() -> None:
        async with Serving(worker, nats_url) as serving:
            reply = await serving.ask("sentiment", {"txt": "typo"})
            assert error_of(reply) == ("400", "missing string field `text`")
            not_json = await serving.ask("sentiment", b"{nope")
            code, message = error_of(not_json) or ("", "")
            assert code == "400" and "not valid JSON" in message
            not_object = await serving.ask("sentiment", [1, 2])
            code, message = error_of(not_object) or ("", "")
            assert code == "400" and "JSON object" in message

    run(test)


def test_an_exception_is_500_logged_with_its_traceback_and_never_sent(
    nats_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    worker = Worker(nats_url)

    @worker.model("fragile", version="1")
    def fragile(inp: dict) -> dict:
        raise RuntimeError("secret-database-password-in-the-message")

    async def test() -> None:
        async with Serving(worker, nats_url) as serving:
            reply = await serving.ask("fragile", {"x": 1}, headers={"Request-Id": "req-42"})
            code, message = error_of(reply) or ("", "")
            assert code == "500"
            assert "secret" not in message and "RuntimeError" not in message
            assert "req-42" in message, "the message names the request to look up"

    with caplog.at_level(logging.ERROR, logger="prediction_worker"):
        run(test)
    failures = [r for r in caplog.records if r.exc_info]
    assert failures, "the traceback is logged"
    assert "secret-database-password-in-the-message" in str(failures[0].exc_info[1])
    assert failures[0].request_id == "req-42"


def test_a_prediction_json_cannot_carry_is_500(nats_url: str) -> None:
    worker = Worker(nats_url)
    worker.model("odd", version="1")(lambda inp: {"not json": {1, 2}})

    async def test() -> None:
        async with Serving(worker, nats_url) as serving:
            code, _ = error_of(await serving.ask("odd", {})) or ("", "")
            assert code == "500"

    run(test)


def test_a_request_past_its_deadline_is_504_and_not_computed(nats_url: str) -> None:
    worker = Worker(nats_url)
    calls = []
    worker.model("counted", version="1")(lambda inp: calls.append(inp) or 1)

    async def test() -> None:
        async with Serving(worker, nats_url) as serving:
            past = str(int(time.time() * 1000) - 1)
            reply = await serving.ask("counted", {}, headers={"Deadline-Unix-Ms": past})
            assert (error_of(reply) or ("",))[0] == "504"
            future = str(int(time.time() * 1000) + 60_000)
            reply = await serving.ask("counted", {}, headers={"Deadline-Unix-Ms": future})
            assert error_of(reply) is None

    run(test)
    assert len(calls) == 1


def test_async_models_are_awaited(nats_url: str) -> None:
    worker = Worker(nats_url)

    @worker.model("later", version="1")
    async def later(inp: dict) -> dict:
        await asyncio.sleep(0.01)
        return {"echo": inp}

    async def test() -> None:
        async with Serving(worker, nats_url) as serving:
            reply = await serving.ask("later", {"a": 1})
            assert json.loads(reply.data) == {"echo": {"a": 1}}

    run(test)


def test_a_batch_model_computes_many_requests_in_few_calls_each_getting_its_own_answer(
    nats_url: str,
) -> None:
    worker = Worker(nats_url, concurrency=2)
    batch_sizes: list[int] = []

    @worker.batch_model("double", version="1", max_batch=32, batch_window=0.02)
    def double(batch: list[dict]) -> list[Any]:
        batch_sizes.append(len(batch))
        return [
            InvalidInput("n must be a number")
            if not isinstance(i.get("n"), int)
            else {"n": i["n"] * 2}
            for i in batch
        ]

    async def test() -> None:
        async with Serving(worker, nats_url) as serving:
            replies = await asyncio.gather(*(serving.ask("double", {"n": n}) for n in range(64)))
            assert [json.loads(r.data) for r in replies] == [{"n": 2 * n} for n in range(64)]
            bad, good = await asyncio.gather(
                serving.ask("double", {"n": "x"}), serving.ask("double", {"n": 5})
            )
            assert error_of(bad) == ("400", "n must be a number")
            assert json.loads(good.data) == {"n": 10}
            stats = await serving.srv("STATS")
            data = stats["endpoints"][0]["data"]
            assert data["predictions"] == 66
            assert data["inference_calls"] == len(batch_sizes)
            assert data["largest_batch"] == max(batch_sizes) <= 32

    run(test)
    assert len(batch_sizes) <= 10, f"64 requests took {len(batch_sizes)} calls: {batch_sizes}"


def test_a_batch_function_that_answers_the_wrong_count_fails_the_batch_not_the_worker(
    nats_url: str,
) -> None:
    worker = Worker(nats_url)
    worker.batch_model("short", version="1", max_batch=8, batch_window=0.01)(
        lambda batch: batch[:-1]
    )
    worker.model("fine", version="1")(lambda inp: "ok")

    async def test() -> None:
        async with Serving(worker, nats_url) as serving:
            replies = await asyncio.gather(*(serving.ask("short", {"i": i}) for i in range(4)))
            assert {(error_of(r) or ("",))[0] for r in replies} == {"500"}
            assert json.loads((await serving.ask("fine", {})).data) == "ok"

    run(test)


def test_a_blocked_model_does_not_stop_the_worker_answering_others(nats_url: str) -> None:
    worker = Worker(nats_url, concurrency=2)
    release = threading.Event()

    @worker.model("stuck", version="1")
    def stuck(inp: dict) -> str:
        release.wait(20)
        return "finally"

    worker.model("quick", version="1")(lambda inp: "quick")

    async def test() -> None:
        async with Serving(worker, nats_url) as serving:
            blocked = asyncio.ensure_future(serving.ask("stuck", {}, timeout=30))
            await asyncio.sleep(0.1)
            for _ in range(5):
                assert json.loads((await serving.ask("quick", {})).data) == "quick"
            release.set()
            assert json.loads((await blocked).data) == "finally"

    run(test)


def test_past_concurrency_and_queue_depth_it_answers_busy_at_once(nats_url: str) -> None:
    worker = Worker(nats_url, concurrency=1, queue_depth=1)
    release = threading.Event()

    @worker.model("slow", version="1")
    def slow(inp: dict) -> int:
        release.wait(20)
        return 1

    async def test() -> None:
        async with Serving(worker, nats_url) as serving:
            running = asyncio.ensure_future(serving.ask("slow", {"i": 1}, timeout=30))
            await asyncio.sleep(0.1)
            # One waits in the queue; a caller that offers to go elsewhere is
            # turned away rather than queued behind it.
            waiting = asyncio.ensure_future(serving.ask("slow", {"i": 2}, timeout=30))
            await asyncio.sleep(0.1)
            redirected = await serving.ask("slow", {"i": 3}, headers={"Avoid-Backlog": "1"})
            assert (error_of(redirected) or ("",))[0] == "503"
            started = time.monotonic()
            full = await serving.ask("slow", {"i": 4})
            assert (error_of(full) or ("",))[0] == "503"
            assert time.monotonic() - started < 1, "busy is answered at once"
            release.set()
            for reply in await asyncio.gather(running, waiting):
                assert error_of(reply) is None
            stats = await serving.srv("STATS")
            endpoint = stats["endpoints"][0]
            assert endpoint["num_requests"] == 4
            assert endpoint["num_errors"] == 2

    run(test)


def test_it_registers_as_the_gateways_workers_do(nats_url: str) -> None:
    worker = Worker(nats_url)
    worker.model("sentiment", version="1.0.0")(lambda inp: 1)
    worker.batch_model("embed", version="2", max_batch=4)(lambda batch: [0] * len(batch))

    async def test() -> None:
        async with Serving(worker, nats_url) as serving:
            info = await serving.srv("INFO")
            assert info["name"] == "prediction-worker"
            assert info["metadata"] == {"sentiment": "1.0.0", "embed": "2"}
            endpoints = {e["name"]: e for e in info["endpoints"]}
            assert endpoints["sentiment"]["subject"] == "predict.sentiment"
            assert endpoints["sentiment"]["queue_group"] == "q"
            assert endpoints["sentiment"]["metadata"] == {
                "model_version": "1.0.0",
                "heartbeats": "true",
            }
            assert endpoints["embed"]["subject"] == "predict.embed"
            ping = await serving.srv("PING")
            assert ping["id"] == worker.service_id

    run(test)


def test_stopping_answers_every_request_held_then_takes_no_more(nats_url: str) -> None:
    worker = Worker(nats_url, concurrency=4)

    @worker.batch_model("slowish", version="1", max_batch=4, batch_window=0.01)
    def slowish(batch: list[dict]) -> list[int]:
        time.sleep(0.3)
        return [i["i"] for i in batch]

    async def test() -> None:
        serving = Serving(worker, nats_url)
        await serving.__aenter__()
        held = [
            asyncio.ensure_future(serving.ask("slowish", {"i": i}, timeout=10)) for i in range(12)
        ]
        await asyncio.sleep(0.1)
        serving.stop.set()
        replies = await asyncio.gather(*held)
        assert [json.loads(r.data) for r in replies] == list(range(12))
        await asyncio.wait_for(serving.task, 10)
        with pytest.raises(NoRespondersError):
            await serving.ask("slowish", {"i": 99}, timeout=1)
        await serving.client.close()

    run(test)


def test_bad_registrations_are_refused_with_what_is_wrong() -> None:
    worker = Worker("nats://127.0.0.1:1")
    with pytest.raises(ValueError, match="invalid model name"):
        worker.model("Has.Dots", version="1")(lambda inp: 1)
    with pytest.raises(ValueError, match="max_batch"):
        worker.batch_model("zero", version="1", max_batch=0)(lambda batch: batch)
    worker.model("once", version="1")(lambda inp: 1)
    with pytest.raises(ValueError, match="twice"):
        worker.model("once", version="1")(lambda inp: 2)
    with pytest.raises(ValueError, match="concurrency"):
        Worker(concurrency=0)


def test_a_request_span_continues_the_callers_trace_and_a_batch_links_to_each(
    nats_url: str,
) -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    worker = Worker(nats_url)
    worker.model("one", version="1")(lambda inp: 1)
    worker.batch_model("many", version="1", max_batch=8, batch_window=0.02)(
        lambda batch: [0] * len(batch)
    )
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    caller = "00f067aa0ba902b7"

    async def test() -> None:
        async with Serving(worker, nats_url) as serving:
            headers = {"traceparent": f"00-{trace_id}-{caller}-01"}
            await serving.ask("one", {}, headers=headers)
            await asyncio.gather(
                *(serving.ask("many", {"i": i}, headers=headers) for i in range(3))
            )

    run(test)
    spans = exporter.get_finished_spans()
    predicts = [s for s in spans if s.name == "predict"]
    assert len(predicts) == 4
    for span in predicts:
        assert format(span.context.trace_id, "032x") == trace_id
        assert span.parent is not None and format(span.parent.span_id, "016x") == caller
    batches = [s for s in spans if s.name == "batch"]
    linked = {link.context.span_id for b in batches for link in b.links}
    many = [s for s in predicts if s.attributes and s.attributes.get("model") == "many"]
    assert {s.context.span_id for s in many} <= linked
