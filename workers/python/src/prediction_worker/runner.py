"""Runs one model's computations: at most ``concurrency`` calls at once across
the worker (a call is one input, or a batch of up to ``max_batch``), plain
functions in a thread pool so a slow or blocking model never stops the event
loop that answers the other requests."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing, contextmanager
from dataclasses import dataclass, field
from typing import Any

from . import generation, tracing
from .contract import BAD_INPUT, DEADLINE_EXCEEDED, MODEL_FAILED, RequestMetadata
from .model import InvalidInput, ModelSpec

log = logging.getLogger("prediction_worker")


class PredictionError(Exception):
    """A request's error reply: its NATS service error code and the message
    the caller may see."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class InferenceStats:
    """What a model's calls did, for the endpoint's ``nats micro stats`` data
    (the same fields as the Rust worker's)."""

    inference_calls: int = 0
    predictions: int = 0
    largest_batch: int = 0

    def record(self, batch: int) -> None:
        self.inference_calls += 1
        self.predictions += batch
        self.largest_batch = max(self.largest_batch, batch)

    def to_dict(self) -> dict[str, int]:
        return {
            "inference_calls": self.inference_calls,
            "predictions": self.predictions,
            "largest_batch": self.largest_batch,
        }


@dataclass
class _Pending:
    input: dict[str, Any]
    metadata: RequestMetadata
    answer: asyncio.Future[Any] = field(repr=False)
    #: The request's span, for the batch's span to link to (tracing on).
    span_context: Any = None


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _failed(spec: ModelSpec, request_ids: str) -> PredictionError:
    """The reply for a model that raised: the traceback is logged (by the
    caller), never sent; the request id lets an operator find it."""
    return PredictionError(
        MODEL_FAILED,
        f"model {spec.name} failed; the worker's log has the details (request {request_ids})",
    )


class Runner:
    """Computes predictions of one model."""

    def __init__(
        self, spec: ModelSpec, slots: asyncio.Semaphore, executor: ThreadPoolExecutor
    ) -> None:
        self.spec = spec
        self.stats = InferenceStats()
        self._slots = slots
        self._executor = executor
        self._pending: list[_Pending] = []
        self._arrived = asyncio.Event()
        self._batches: set[asyncio.Task[None]] = set()
        self._collector: asyncio.Task[None] | None = None
        if spec.batches:
            self._collector = asyncio.get_running_loop().create_task(self._collect())

    async def predict(
        self, input: dict[str, Any], metadata: RequestMetadata, span_context: Any = None
    ) -> Any:
        """The prediction for ``input``, or a :class:`PredictionError`."""
        if self.spec.kind == "chat":
            api = generation.api_of(input, metadata.api)
            async with aclosing(self.generate(input, metadata)) as chunks:
                return generation.assemble(api, [chunk async for chunk in chunks])
        if self.spec.kind == "embed":
            async with self._slots:
                if metadata.deadline_passed(_now_ms()):
                    raise _deadline_passed()
                self.stats.record(1)
                with self._model_errors(metadata):
                    return await generation.embeddings(
                        self.spec.name, self.spec.function, input, self._executor
                    )
        if self.spec.batches:
            answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            self._pending.append(_Pending(input, metadata, answer, span_context))
            self._arrived.set()
            return await answer
        async with self._slots:
            # Checked again once a slot frees: a request may wait here for long.
            if metadata.deadline_passed(_now_ms()):
                raise _deadline_passed()
            self.stats.record(1)
            with self._model_errors(metadata):
                return await self._call(input)

    async def generate(
        self, input: dict[str, Any], metadata: RequestMetadata
    ) -> AsyncGenerator[dict[str, Any], None]:
        """A chat model's answer chunk by chunk, holding a slot throughout; a
        :class:`PredictionError` ends it."""
        with self._model_errors(metadata):
            api = generation.api_of(input, metadata.api)
        async with self._slots:
            if metadata.deadline_passed(_now_ms()):
                raise _deadline_passed()
            self.stats.record(1)
            with self._model_errors(metadata):
                pieces = generation.chunks(
                    self.spec.name, self.spec.function, api, input, self._executor
                )
                async with aclosing(pieces) as chunks:
                    async for chunk in chunks:
                        yield chunk

    @contextmanager
    def _model_errors(self, metadata: RequestMetadata) -> Iterator[None]:
        """Turns what the model raises into the reply's error: its message for
        an :class:`InvalidInput`, else a logged failure."""
        try:
            yield
        except (InvalidInput, PredictionError, GeneratorExit, asyncio.CancelledError) as err:
            if isinstance(err, InvalidInput):
                raise PredictionError(BAD_INPUT, str(err)) from None
            raise
        except Exception:
            log.exception(
                "the model failed",
                extra={"model": self.spec.name, "request_id": metadata.request_id},
            )
            raise _failed(self.spec, metadata.request_id) from None

    async def close(self) -> None:
        """Waits for the batches in flight; the worker calls it once no request
        can arrive any more."""
        while self._pending or self._batches:
            await asyncio.sleep(0.005)
        if self._collector is not None:
            self._collector.cancel()

    async def _call(self, argument: Any) -> Any:
        if self.spec.is_async:
            return await self.spec.function(argument)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.spec.function, argument)

    async def _collect(self) -> None:
        """Gathers batches: the first input waits ``batch_window`` for others,
        up to ``max_batch``, then the batch waits for a slot, taking whoever
        arrived meanwhile too."""
        loop = asyncio.get_running_loop()
        while True:
            await self._arrived.wait()
            window_ends = loop.time() + self.spec.batch_window
            while len(self._pending) < self.spec.max_batch:
                left = window_ends - loop.time()
                if left <= 0:
                    break
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), left)
                except asyncio.TimeoutError:
                    break
            await self._slots.acquire()
            batch = self._pending[: self.spec.max_batch]
            del self._pending[: self.spec.max_batch]
            if not self._pending:
                self._arrived.clear()
            task = loop.create_task(self._run_batch(batch))
            self._batches.add(task)
            task.add_done_callback(self._batches.discard)

    async def _run_batch(self, batch: list[_Pending]) -> None:
        try:
            now = _now_ms()
            live = []
            for pending in batch:
                if pending.metadata.deadline_passed(now):
                    _settle(pending.answer, error=_deadline_passed())
                else:
                    live.append(pending)
            if not live:
                return
            self.stats.record(len(live))
            request_ids = ",".join(p.metadata.request_id for p in live)
            try:
                with tracing.batch_span(self.spec.name, [p.span_context for p in live]):
                    answers = await self._call([p.input for p in live])
                # An array of answers (NumPy's, say): one answer per row.
                if not isinstance(answers, Sequence) and callable(getattr(answers, "tolist", None)):
                    answers = answers.tolist()
                if not isinstance(answers, Sequence) or isinstance(answers, (str, bytes)):
                    raise TypeError(
                        f"a batch function returns a list, not {type(answers).__name__}"
                    )
                if len(answers) != len(live):
                    raise ValueError(f"{len(answers)} answers for a batch of {len(live)} inputs")
            except InvalidInput as err:
                for pending in live:
                    _settle(pending.answer, error=PredictionError(BAD_INPUT, str(err)))
                return
            except Exception:
                log.exception(
                    "the model failed on a batch",
                    extra={"model": self.spec.name, "request_id": request_ids},
                )
                for pending in live:
                    _settle(pending.answer, error=_failed(self.spec, pending.metadata.request_id))
                return
            for pending, answer in zip(live, answers, strict=True):
                if isinstance(answer, InvalidInput):
                    _settle(pending.answer, error=PredictionError(BAD_INPUT, str(answer)))
                elif isinstance(answer, BaseException):
                    log.error(
                        "the model failed on one input of a batch: %r",
                        answer,
                        extra={"model": self.spec.name, "request_id": pending.metadata.request_id},
                    )
                    _settle(pending.answer, error=_failed(self.spec, pending.metadata.request_id))
                else:
                    _settle(pending.answer, value=answer)
        finally:
            self._slots.release()


def _deadline_passed() -> PredictionError:
    return PredictionError(
        DEADLINE_EXCEEDED, "the caller's deadline passed before the worker started"
    )


def _settle(
    answer: asyncio.Future[Any], *, value: Any = None, error: PredictionError | None = None
) -> None:
    # A caller that went away (its task cancelled) left a cancelled future.
    if answer.done():
        return
    if error is not None:
        answer.set_exception(error)
    else:
        answer.set_result(value)
