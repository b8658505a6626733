"""The worker: registers its models with the NATS Services API, serves them
(each request admitted and answered by ``answering``) and shuts down without
losing one."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any, TypeVar

import nats.micro
from nats.micro.service import EndpointStats

from . import contract
from .admission import Admission
from .answering import handler
from .config import settings_from_environment, validated
from .connection import Stopping, connect_unless_stopped, within
from .generation import Usage
from .model import ModelSpec
from .runner import Runner
from .tensors import TensorSpec

log = logging.getLogger("prediction_worker")

__version__ = "0.1.0"

#: A prediction's input: the request's JSON object.
Input = dict[str, Any]

#: A model function of one input: ``def f(inp: dict) -> answer`` (or ``async
#: def``). mypy rejects a function of another shape given to
#: :meth:`Worker.model`.
OneInput = TypeVar("OneInput", bound=Callable[[Input], Any])
#: A batch function: ``def f(batch: list[dict]) -> answers`` (or ``async def``),
#: one answer per input, in order (a list, or an array with a row per input).
ManyInputs = TypeVar("ManyInputs", bound=Callable[[list[Input]], Any])
#: What a chat model yields: text, a chat delta (``{"tool_calls": [...]}``,
#: ``{"reasoning_content": "..."}``), or its token counts, last.
Delta = str | dict[str, Any] | Usage
#: A chat model: ``def f(request: dict) -> Iterator[Delta]`` (a generator), or
#: an ``async def`` generator.
ChatFunction = TypeVar(
    "ChatFunction", bound=Callable[[Input], Iterator[Delta] | AsyncIterator[Delta]]
)
#: An embedding model: ``def f(texts: list[str]) -> vectors`` (or ``async
#: def``), one vector per text, in order.
EmbedFunction = TypeVar("EmbedFunction", bound=Callable[[list[str]], Any])

#: A tensor model: ``def f(inputs: dict[str, np.ndarray]) -> dict[str,
#: np.ndarray]`` (or ``async def``), the arrays named as its inputs and outputs.
TensorFunction = TypeVar("TensorFunction", bound=Callable[[dict[str, Any]], Any])

#: A generative model's bounds unless given: the whole answer, its first chunk,
#: the gap between two chunks (seconds).
DEFAULT_BOUNDS = (600.0, 60.0, 30.0)


class Worker:
    """Serves the models registered with :meth:`model` on ``predict.<model>``.

    ``Worker(nats_url=..., concurrency=..., queue_depth=...)``; each setting
    left out comes from the environment (``NATS_URL``, ``WORKER_CONCURRENCY``,
    ``WORKER_QUEUE_DEPTH``, ...) or its default, and the command line
    (``python -m prediction_worker module:worker --help``) overrides both.
    """

    def __init__(
        self,
        nats_url: str | None = None,
        *,
        concurrency: int | None = None,
        queue_depth: int | None = None,
        redirect_backlog: int | None = None,
        nats_creds: str | None = None,
        nats_tls_ca: str | None = None,
        connect_timeout: float | None = None,
    ) -> None:
        self.settings = settings_from_environment(
            nats_url=nats_url,
            concurrency=concurrency,
            queue_depth=queue_depth,
            redirect_backlog=redirect_backlog,
            nats_creds=nats_creds,
            nats_tls_ca=nats_tls_ca,
            connect_timeout=connect_timeout,
        )
        self._specs: dict[str, ModelSpec] = {}
        self._stop: asyncio.Event | None = None
        self._ready: asyncio.Event | None = None
        self.service_id: str | None = None

    def model(
        self,
        name: str,
        *,
        version: str,
        freshness_ttl: float | None = None,
    ) -> Callable[[OneInput], OneInput]:
        """Registers the decorated function as the model ``name``: it takes one
        input (a ``dict``) and returns the prediction (anything JSON can carry,
        NumPy scalars and arrays included).

        ``version`` is required: the gateway keys its cache by it, so a
        retrained model with a new version is never answered from the old
        one's entries. ``freshness_ttl``: seconds the gateway caches the
        prediction (``None``: its default; 0: not cached). A plain ``def`` runs
        in a thread pool; an ``async def`` is awaited on the event loop and
        must not block.
        """

        def register(function: OneInput) -> OneInput:
            self._register(
                ModelSpec(
                    name=name,
                    version=version,
                    freshness_ttl=freshness_ttl,
                    function=function,
                    max_batch=1,
                    batch_window=0.0,
                )
            )
            return function

        return register

    def batch_model(
        self,
        name: str,
        *,
        version: str,
        max_batch: int,
        batch_window: float = 0.001,
        freshness_ttl: float | None = None,
    ) -> Callable[[ManyInputs], ManyInputs]:
        """Registers the decorated function as the model ``name``, computed in
        batches: it takes a list of up to ``max_batch`` inputs, gathered for
        ``batch_window`` seconds from concurrent requests, and returns one
        answer per input, in order (a list, or an array with a row per input).
        Return an :class:`InvalidInput` in place of an answer to fail that
        input alone. The other arguments are :meth:`model`'s.
        """

        def register(function: ManyInputs) -> ManyInputs:
            self._register(
                ModelSpec(
                    name=name,
                    version=version,
                    freshness_ttl=freshness_ttl,
                    function=function,
                    max_batch=max_batch,
                    batch_window=batch_window,
                    batches=True,
                )
            )
            return function

        return register

    def chat_model(
        self,
        name: str,
        *,
        version: str,
        freshness_ttl: float | None = None,
        cache_sampled: bool = True,
        timeout: float = DEFAULT_BOUNDS[0],
        first_chunk_timeout: float = DEFAULT_BOUNDS[1],
        chunk_gap_timeout: float = DEFAULT_BOUNDS[2],
    ) -> Callable[[ChatFunction], ChatFunction]:
        """Registers the decorated generator as the chat model ``name``,
        answering the OpenAI API's chat completions and completions. It takes
        the request (a ``dict``: ``messages`` or ``prompt``, and every other
        field the client sent) and yields the answer as it is produced: ``str``
        pieces of text, or chat deltas as dicts; optionally a :class:`Usage`
        last. Called once per choice (``n``). Streamed to callers that ask for
        a stream, assembled for the others; stopped when every caller has gone.

        ``cache_sampled``: whether answers of sampled requests (a temperature
        above 0 and no seed) may be cached. The timeouts (seconds) bound the
        whole answer, its first piece, and the gap between two pieces: the
        gateway holds the model to them. The other arguments are
        :meth:`model`'s.
        """

        def register(function: ChatFunction) -> ChatFunction:
            self._register(
                ModelSpec(
                    name=name,
                    version=version,
                    freshness_ttl=freshness_ttl,
                    function=function,
                    max_batch=1,
                    batch_window=0.0,
                    kind="chat",
                    bounds=(timeout, first_chunk_timeout, chunk_gap_timeout),
                    cache_sampled=cache_sampled,
                )
            )
            return function

        return register

    def embedding_model(
        self, name: str, *, version: str, freshness_ttl: float | None = None
    ) -> Callable[[EmbedFunction], EmbedFunction]:
        """Registers the decorated function as the embedding model ``name``,
        answering the OpenAI API's embeddings: it takes the request's texts (a
        ``list[str]``) and returns one vector per text, in order (lists, or an
        array with a row per text). The arguments are :meth:`model`'s."""

        def register(function: EmbedFunction) -> EmbedFunction:
            self._register(
                ModelSpec(
                    name=name,
                    version=version,
                    freshness_ttl=freshness_ttl,
                    function=function,
                    max_batch=1,
                    batch_window=0.0,
                    kind="embed",
                )
            )
            return function

        return register

    def tensor_model(
        self,
        name: str,
        *,
        version: str,
        inputs: list[TensorSpec],
        outputs: list[TensorSpec],
        freshness_ttl: float | None = None,
    ) -> Callable[[TensorFunction], TensorFunction]:
        """Registers the decorated function as the tensor model ``name``, served
        through the Open Inference Protocol (``/v2/models/<name>/infer``, what
        Triton's and KServe's clients call): it takes a dict of NumPy arrays,
        one per declared input, and returns a dict of arrays, one per declared
        output (cast to its datatype). ``inputs`` and ``outputs`` are what
        the model's metadata shows and every request is checked against;
        ``-1`` in a shape means any size. The other arguments are
        :meth:`model`'s.
        """

        def register(function: TensorFunction) -> TensorFunction:
            self._register(
                ModelSpec(
                    name=name,
                    version=version,
                    freshness_ttl=freshness_ttl,
                    function=function,
                    max_batch=1,
                    batch_window=0.0,
                    kind="tensor",
                    tensor_inputs=tuple(inputs),
                    tensor_outputs=tuple(outputs),
                )
            )
            return function

        return register

    def _register(self, spec: ModelSpec) -> None:
        if spec.name in self._specs:
            raise ValueError(f"model {spec.name} is registered twice")
        self._specs[spec.name] = spec

    @property
    def models(self) -> list[ModelSpec]:
        return list(self._specs.values())

    def configure(self, **settings: Any) -> None:
        """Replaces the settings given (the command line's flags)."""
        self.settings = validated(replace(self.settings, **settings))

    def run(self) -> None:
        """Serves until SIGTERM or Ctrl-C, then stops taking requests, answers
        those it holds and drains its NATS connection. Blocks."""
        asyncio.run(self._serve_until_signalled())

    async def _serve_until_signalled(self) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await self.serve(stop)

    async def wait_until_ready(self) -> None:
        """Returns once the worker's endpoints are subscribed (for tests and
        embedding)."""
        while self._ready is None:
            await asyncio.sleep(0.01)
        await self._ready.wait()

    async def serve(self, stop: asyncio.Event) -> None:
        """Serves until ``stop`` is set, then shuts down gracefully."""
        if not self._specs:
            raise RuntimeError("no model registered: decorate a function with @worker.model(...)")
        self._ready = asyncio.Event()
        settings = self.settings
        slots_per_call = max(spec.max_batch for spec in self._specs.values())
        running_capacity = settings.concurrency * slots_per_call
        admission = Admission(
            running_capacity,
            settings.queue_depth,
            settings.redirect_backlog
            if settings.redirect_backlog is not None
            else running_capacity,
        )
        executor = ThreadPoolExecutor(max_workers=settings.concurrency, thread_name_prefix="model")
        slots = asyncio.Semaphore(settings.concurrency)
        runners = {name: Runner(spec, slots, executor) for name, spec in self._specs.items()}
        stopping = Stopping()
        client = await connect_unless_stopped(settings, stop, stopping)
        if client is None:
            executor.shutdown(wait=False, cancel_futures=True)
            log.info("stopped before connecting to NATS")
            return
        in_flight: set[asyncio.Task[None]] = set()
        try:
            service = await nats.micro.add_service(
                client,
                name=contract.SERVICE_NAME,
                version=__version__,
                description="Serves model predictions on predict.<model> (Python)",
                metadata={name: spec.version for name, spec in self._specs.items()},
                queue_group=contract.QUEUE_GROUP,
                stats_handler=lambda stats: _stats_data(runners, stats),
            )
            self.service_id = service.id
            streams: dict[str, asyncio.Task[None]] = {}

            async def cancel(message: Any) -> None:
                task = streams.get(message.data.decode(errors="replace"))
                if task is not None:
                    task.cancel()

            await client.subscribe(f"{contract.CANCEL_SUBJECT_PREFIX}.{service.id}", cb=cancel)
            group = service.add_group(name=contract.PREDICT_SUBJECT_PREFIX)
            for name, runner in runners.items():
                await group.add_endpoint(
                    name=name,
                    subject=name,
                    handler=handler(client, runner, admission, in_flight, service, streams),
                    metadata=_endpoint_metadata(runner.spec),
                )
            await client.flush()
            log.info(
                "serving %s on NATS (concurrency %d, queue depth %d)",
                ", ".join(f"{n} {s.version}" for n, s in self._specs.items()),
                settings.concurrency,
                settings.queue_depth,
                extra={"service_id": service.id},
            )
            self._ready.set()
            await stop.wait()
            log.info("stopping: no new requests; finishing %d received", len(in_flight))
            await within(service.stop(), "unsubscribing")
            while in_flight:
                await asyncio.gather(*list(in_flight), return_exceptions=True)
            for runner in runners.values():
                await runner.close()
        finally:
            stopping.now = True
            await within(client.drain(), "draining the NATS connection")
            if not client.is_closed:
                await client.close()
            executor.shutdown(wait=False, cancel_futures=True)
            log.info("stopped")


def _endpoint_metadata(spec: ModelSpec) -> dict[str, str]:
    """What ``nats micro info`` shows of an endpoint, and the gateway reads:
    the version, heartbeats, and a generative model's streams and bounds."""
    metadata = {"model_version": spec.version, contract.HEARTBEATS_METADATA: "true"}
    if spec.kind == "tensor":
        metadata[contract.TENSORS_METADATA] = json.dumps(
            {
                "platform": "python",
                "inputs": [tensor.to_dict() for tensor in spec.tensor_inputs],
                "outputs": [tensor.to_dict() for tensor in spec.tensor_outputs],
            }
        )
    if spec.kind in ("chat", "embed"):
        metadata[contract.STREAMS_METADATA] = "true"
        total, first_chunk, chunk_gap = spec.bounds or DEFAULT_BOUNDS
        metadata[contract.TIMEOUT_MS_METADATA] = str(round(total * 1000))
        metadata[contract.FIRST_CHUNK_MS_METADATA] = str(round(first_chunk * 1000))
        metadata[contract.CHUNK_GAP_MS_METADATA] = str(round(chunk_gap * 1000))
        metadata[contract.CACHE_SAMPLED_METADATA] = "true" if spec.cache_sampled else "false"
    return metadata


def _stats_data(runners: dict[str, Runner], stats: EndpointStats) -> Any:
    runner = runners.get(stats.name)
    return runner.stats.to_dict() if runner is not None else None
