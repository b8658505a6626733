"""Answering one request: admitted or refused, computed with heartbeats
meanwhile, and replied to, as JSON or as an error in the NATS Services
convention; a chat model's answer, when the caller asks for a stream, as its
chunks then an end, unless the caller cancels it."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from contextlib import aclosing
from typing import Any

from nats.aio.client import Client
from nats.micro.request import Request
from nats.micro.service import Service

from . import contract, tensors, tracing
from .admission import Admission
from .contract import (
    BAD_INPUT,
    BUSY,
    CHUNK,
    END,
    MODEL_FAILED,
    REPLY_KIND,
    WORKER_ID,
    RequestMetadata,
)
from .model import InvalidInput
from .nats_internals import EndpointStatsAdapter, reply_subject
from .runner import PredictionError, Runner

log = logging.getLogger("prediction_worker")


def handler(
    client: Client,
    runner: Runner,
    admission: Admission,
    in_flight: set[asyncio.Task[None]],
    service: Service,
    streams: dict[str, asyncio.Task[None]],
) -> Callable[[Request], Any]:
    """The endpoint's handler. nats-py calls it for one message at a time, so
    it hands each admitted request to a task of its own and returns at once;
    a stream's task is kept in ``streams`` by its reply subject, for its
    cancellation."""
    endpoint_stats = EndpointStatsAdapter(service, runner.spec.name)

    async def handle(request: Request) -> None:
        metadata = RequestMetadata.from_headers(request.headers)
        refusal = admission.admit(metadata)
        if refusal is not None:
            endpoint_stats.record(0, refusal)
            await request.respond_error(str(BUSY), refusal)
            return
        streamed = metadata.stream and runner.spec.kind == "chat"
        task = asyncio.get_running_loop().create_task(
            _answer(client, runner, request, metadata, endpoint_stats, service.id, streamed)
        )
        in_flight.add(task)
        reply = reply_subject(request) if streamed else None
        if reply is not None:
            streams[reply] = task

        def done(task: asyncio.Task[None]) -> None:
            in_flight.discard(task)
            if reply is not None:
                streams.pop(reply, None)
            admission.release()

        task.add_done_callback(done)

    return handle


async def _answer(
    client: Client,
    runner: Runner,
    request: Request,
    metadata: RequestMetadata,
    stats: EndpointStatsAdapter,
    worker_id: str,
    streamed: bool,
) -> None:
    """Computes and sends one reply (or stream), in a span continuing the
    caller's trace, with heartbeats meanwhile if the caller asked for them.
    Never raises but when cancelled: every problem becomes an error reply, or
    a log line when even that cannot be sent."""
    heartbeats = _Heartbeats(
        client,
        reply_subject(request),
        metadata.heartbeat_interval,
        worker_id if streamed else None,
    )
    try:
        with tracing.request_span(runner.spec.name, request.headers) as span_context:
            if streamed:
                await _stream(client, runner, request, metadata, stats, worker_id)
            else:
                await _answer_in_span(runner, request, metadata, stats, span_context)
    except asyncio.CancelledError:
        log.debug(
            "the caller cancelled the stream",
            extra={"model": runner.spec.name, "request_id": metadata.request_id},
        )
    finally:
        heartbeats.stop()


async def _stream(
    client: Client,
    runner: Runner,
    request: Request,
    metadata: RequestMetadata,
    stats: EndpointStatsAdapter,
    worker_id: str,
) -> None:
    """Sends a chat model's chunks as they come, then the end (the reply's
    metadata, or the error that ended the answer)."""
    spec = runner.spec
    started = time.perf_counter()
    reply = reply_subject(request)
    error: PredictionError | None = None
    try:
        if reply is None:
            raise PredictionError(BAD_INPUT, "a stream needs a reply subject")
        chunk_headers = contract.stream_headers(CHUNK, worker_id)
        generation = runner.generate(_parse_input(request.data), metadata)
        async with aclosing(generation) as chunks:
            async for chunk in chunks:
                payload = _to_json(spec.name, chunk, metadata.request_id)
                await client.publish(reply, payload, headers=chunk_headers)
    except PredictionError as err:
        error = err
    except Exception:
        log.exception("unexpected", extra={"model": spec.name, "request_id": metadata.request_id})
        error = PredictionError(MODEL_FAILED, f"model {spec.name} failed")
    compute_seconds = time.perf_counter() - started
    headers = contract.reply_headers(spec.version, spec.freshness_ttl, compute_seconds)
    headers[REPLY_KIND] = END
    headers[WORKER_ID] = worker_id
    await _send(request, b"", error, headers, metadata)
    stats.record(compute_seconds, None if error is None else error.message)


async def _send(
    request: Request,
    payload: bytes,
    error: PredictionError | None,
    headers: dict[str, str],
    metadata: RequestMetadata,
) -> None:
    """Sends the reply, or logs why it could not be."""
    try:
        if error is None:
            await request.respond(payload, headers=headers)
        else:
            await request.respond_error(str(error.code), error.message, headers=headers)
    except Exception as err:  # the connection is gone: nothing else to do
        log.warning(
            "could not send the reply: %s",
            err,
            extra={"request_id": metadata.request_id},
        )


class _Heartbeats:
    """Tells the caller, every ``interval`` seconds, that this worker still
    holds its request (waiting for a slot or computing), so the caller sends
    it again only if they stop, never because the model is slow."""

    def __init__(
        self, client: Client, reply: str | None, interval: float | None, worker_id: str | None
    ) -> None:
        self._task: asyncio.Task[None] | None = None
        headers = contract.heartbeat_headers()
        if worker_id is not None:
            # A stream's heartbeats tell the caller where to cancel it.
            headers[WORKER_ID] = worker_id
        if reply and interval:
            self._task = asyncio.get_running_loop().create_task(
                self._beat(client, reply, interval, headers)
            )

    @staticmethod
    async def _beat(client: Client, reply: str, interval: float, headers: dict[str, str]) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await client.publish(reply, b"", headers=headers)
            except Exception as err:  # the connection is gone; the reply will tell
                log.debug("could not send a heartbeat: %s", err)

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()


async def _answer_in_span(
    runner: Runner,
    request: Request,
    metadata: RequestMetadata,
    stats: EndpointStatsAdapter,
    span_context: Any,
) -> None:
    spec = runner.spec
    started = time.perf_counter()
    error: PredictionError | None = None
    payload = b""
    tensor_header: int | None = None
    try:
        if metadata.deadline_passed(time.time_ns() // 1_000_000):
            raise PredictionError(
                contract.DEADLINE_EXCEEDED,
                "the caller's deadline passed before the worker started",
            )
        if spec.kind == "tensor" or metadata.tensor_header_length is not None:
            payload, tensor_header = await _tensors(runner, request.data, metadata, span_context)
        else:
            prediction = await runner.predict(_parse_input(request.data), metadata, span_context)
            payload = _to_json(spec.name, prediction, metadata.request_id)
    except PredictionError as err:
        error = err
    except Exception:
        log.exception("unexpected", extra={"model": spec.name, "request_id": metadata.request_id})
        error = PredictionError(MODEL_FAILED, f"model {spec.name} failed")
    compute_seconds = time.perf_counter() - started
    headers = contract.reply_headers(spec.version, spec.freshness_ttl, compute_seconds)
    if error is None and tensor_header is not None:
        headers[contract.INFERENCE_HEADER_CONTENT_LENGTH] = str(tensor_header)
    await _send(request, payload, error, headers, metadata)
    stats.record(time.perf_counter() - started, None if error is None else error.message)
    log.debug(
        "prediction request",
        extra={
            "model": spec.name,
            "request_id": metadata.request_id,
            "outcome": "ok" if error is None else str(error.code),
            "compute_ms": round(compute_seconds * 1000, 3),
        },
    )


async def _tensors(
    runner: Runner, payload: bytes, metadata: RequestMetadata, span_context: Any
) -> tuple[bytes, int]:
    """A tensor request's reply: the arrays read and checked, the model run,
    its outputs written back binary."""
    spec = runner.spec
    if spec.kind != "tensor":
        raise PredictionError(BAD_INPUT, f"model {spec.name} takes JSON inputs, not tensors")
    if metadata.tensor_header_length is None or metadata.tensor_header_length < 0:
        raise PredictionError(
            BAD_INPUT,
            f"model {spec.name} takes tensors: send them in the binary form with "
            f"{contract.INFERENCE_HEADER_CONTENT_LENGTH} (or through /v2/models/{spec.name}/infer)",
        )
    inputs, outputs = list(spec.tensor_inputs), list(spec.tensor_outputs)
    try:
        arrays, wanted = tensors.read_request(
            payload, metadata.tensor_header_length, inputs, outputs
        )
    except InvalidInput as err:
        raise PredictionError(BAD_INPUT, str(err)) from None
    results = await runner.predict(arrays, metadata, span_context)
    try:
        return tensors.write_response(spec.name, spec.version, results, outputs, wanted)
    except (TypeError, ValueError) as err:
        log.error(
            "the model's outputs cannot be sent: %s",
            err,
            extra={"model": spec.name, "request_id": metadata.request_id},
        )
        raise PredictionError(
            MODEL_FAILED, f"model {spec.name} returned outputs it does not declare"
        ) from None


def _to_json(model: str, prediction: Any, request_id: str) -> bytes:
    """The prediction as JSON. NumPy (or any array library's) scalars and
    arrays become numbers and lists through their ``tolist()``; NaN and
    infinity, which JSON cannot carry, are an error naming the model."""
    try:
        return json.dumps(
            prediction, allow_nan=False, separators=(",", ":"), default=_plain
        ).encode()
    except ValueError:
        message = f"model {model} returned NaN or infinity, which JSON cannot carry"
    except TypeError as err:
        message = f"model {model} returned a prediction JSON cannot carry: {err}"
    log.error(message, extra={"model": model, "request_id": request_id})
    raise PredictionError(MODEL_FAILED, message) from None


def _plain(value: Any) -> Any:
    """``json.dumps``'s fallback: an array or a NumPy scalar as plain Python
    (``np.float32(1.5).tolist() == 1.5``); anything else stays unsendable."""
    to_list = getattr(value, "tolist", None)
    if callable(to_list):
        return to_list()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _parse_input(payload: bytes) -> dict[str, Any]:
    try:
        value = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as err:
        raise PredictionError(BAD_INPUT, f"the input is not valid JSON: {err}") from None
    if not isinstance(value, dict):
        raise PredictionError(
            BAD_INPUT, 'the input must be a JSON object, e.g. {"product_id": "ETH/EUR"}'
        )
    return value
