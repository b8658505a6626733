"""The worker: registers its models with the NATS Services API, admits or
refuses each request, answers it, and shuts down without losing one."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import socket
import ssl
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any, TypeVar

import nats
import nats.micro
from nats.aio.client import Client
from nats.micro.request import Request
from nats.micro.service import EndpointStats, Service

from . import contract, tracing
from .config import Settings, settings_from_environment, validated
from .contract import BAD_INPUT, BUSY, MODEL_FAILED, RequestMetadata
from .model import ModelSpec
from .nats_internals import EndpointStatsAdapter, reply_subject
from .runner import PredictionError, Runner

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

#: How long, after the stop signal, the unsubscribes and the final drain may
#: take: they end at once unless NATS is unreachable, and then the worker exits
#: anyway rather than hang.
NATS_STOP_TIMEOUT = 2.0


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
        stopping = _Stopping()
        client = await _connect_unless_stopped(settings, stop, stopping)
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
            group = service.add_group(name=contract.PREDICT_SUBJECT_PREFIX)
            for name, runner in runners.items():
                await group.add_endpoint(
                    name=name,
                    subject=name,
                    handler=_handler(client, runner, admission, in_flight, service),
                    metadata={
                        "model_version": runner.spec.version,
                        contract.HEARTBEATS_METADATA: "true",
                    },
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
            await _within(service.stop(), "unsubscribing")
            while in_flight:
                await asyncio.gather(*list(in_flight), return_exceptions=True)
            for runner in runners.values():
                await runner.close()
        finally:
            stopping.now = True
            await _within(client.drain(), "draining the NATS connection")
            if not client.is_closed:
                await client.close()
            executor.shutdown(wait=False, cancel_futures=True)
            log.info("stopped")


class Admission:
    """Which requests the worker holds. Core NATS has no server-side queue: a
    queue group hands each request to a random member, busy or not, so a worker
    bounds what it holds itself and refuses the rest at once as busy; one whose
    caller would rather try another worker is refused earlier, once requests
    wait here."""

    def __init__(self, running_capacity: int, queue_depth: int, redirect_backlog: int) -> None:
        self.capacity = running_capacity + queue_depth
        self.redirect_from = running_capacity + redirect_backlog
        self.held = 0

    def admit(self, metadata: RequestMetadata) -> str | None:
        """``None`` if the request is taken (call :meth:`release` when it is
        answered), else the busy reply's text."""
        if metadata.avoid_backlog and self.held >= self.redirect_from:
            return "requests are waiting at this worker; try another worker"
        if self.held >= self.capacity:
            return "the worker is at capacity; try again or another worker"
        self.held += 1
        return None

    def release(self) -> None:
        self.held -= 1


def _handler(
    client: Client,
    runner: Runner,
    admission: Admission,
    in_flight: set[asyncio.Task[None]],
    service: Service,
) -> Callable[[Request], Any]:
    """The endpoint's handler. nats-py calls it for one message at a time, so
    it hands each admitted request to a task of its own and returns at once."""
    endpoint_stats = EndpointStatsAdapter(service, runner.spec.name)

    async def handle(request: Request) -> None:
        metadata = RequestMetadata.from_headers(request.headers)
        refusal = admission.admit(metadata)
        if refusal is not None:
            endpoint_stats.record(0, refusal)
            await request.respond_error(str(BUSY), refusal)
            return
        task = asyncio.get_running_loop().create_task(
            _answer(client, runner, request, metadata, endpoint_stats)
        )
        in_flight.add(task)

        def done(task: asyncio.Task[None]) -> None:
            in_flight.discard(task)
            admission.release()

        task.add_done_callback(done)

    return handle


async def _answer(
    client: Client,
    runner: Runner,
    request: Request,
    metadata: RequestMetadata,
    stats: EndpointStatsAdapter,
) -> None:
    """Computes and sends one reply, in a span continuing the caller's trace,
    with heartbeats meanwhile if the caller asked for them. Never raises: every
    problem becomes an error reply, or a log line when even that cannot be
    sent."""
    heartbeats = _Heartbeats(client, reply_subject(request), metadata.heartbeat_interval)
    try:
        with tracing.request_span(runner.spec.name, request.headers) as span_context:
            await _answer_in_span(runner, request, metadata, stats, span_context)
    finally:
        heartbeats.stop()


class _Heartbeats:
    """Tells the caller, every ``interval`` seconds, that this worker still
    holds its request (waiting for a slot or computing), so the caller sends
    it again only if they stop, never because the model is slow."""

    def __init__(self, client: Client, reply: str | None, interval: float | None) -> None:
        self._task: asyncio.Task[None] | None = None
        if reply and interval:
            self._task = asyncio.get_running_loop().create_task(self._beat(client, reply, interval))

    @staticmethod
    async def _beat(client: Client, reply: str, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await client.publish(reply, b"", headers=contract.heartbeat_headers())
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
    try:
        if metadata.deadline_passed(time.time_ns() // 1_000_000):
            raise PredictionError(
                contract.DEADLINE_EXCEEDED,
                "the caller's deadline passed before the worker started",
            )
        prediction = await runner.predict(_parse_input(request.data), metadata, span_context)
        payload = _to_json(spec.name, prediction, metadata.request_id)
    except PredictionError as err:
        error = err
    except Exception:
        log.exception("unexpected", extra={"model": spec.name, "request_id": metadata.request_id})
        error = PredictionError(MODEL_FAILED, f"model {spec.name} failed")
    compute_seconds = time.perf_counter() - started
    headers = contract.reply_headers(spec.version, spec.freshness_ttl, compute_seconds)
    try:
        if error is None:
            await request.respond(payload, headers=headers)
        else:
            await request.respond_error(str(error.code), error.message, headers=headers)
    except Exception as err:  # the connection is gone: nothing else to do
        log.warning(
            "could not send the reply: %s",
            err,
            extra={"model": spec.name, "request_id": metadata.request_id},
        )
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


def _stats_data(runners: dict[str, Runner], stats: EndpointStats) -> Any:
    runner = runners.get(stats.name)
    return runner.stats.to_dict() if runner is not None else None


class _Stopping:
    """Whether the worker is stopping, for the connection's callbacks: a
    disconnection then is the drain's, not a fault."""

    now = False


async def _connect_unless_stopped(
    settings: Settings, stop: asyncio.Event, stopping: _Stopping
) -> Client | None:
    """Connects to NATS, retrying, until connected (the client), stopped by a
    signal (``None``) or past ``settings.connect_timeout`` (``ConnectionError``):
    a worker that cannot reach NATS at startup neither hangs nor ignores
    SIGTERM."""
    connecting = asyncio.ensure_future(_connect(settings, stopping))
    stopped = asyncio.ensure_future(stop.wait())
    try:
        done, _ = await asyncio.wait(
            {connecting, stopped},
            timeout=settings.connect_timeout,
            return_when=asyncio.FIRST_COMPLETED,
        )
    finally:
        stopped.cancel()
    if connecting in done:
        return connecting.result()
    connecting.cancel()
    try:
        await connecting
    except (asyncio.CancelledError, Exception):
        pass
    if stop.is_set():
        return None
    raise ConnectionError(
        f"could not connect to NATS at {_redacted(settings.nats_url)} "
        f"within {settings.connect_timeout:g} s (--connect-timeout)"
    )


def _redacted(urls: str) -> str:
    """URLs fit for logs: credentials replaced by ``***``."""
    shown = []
    for url in urls.split(","):
        scheme, sep, rest = url.strip().partition("://")
        authority, slash, path = rest.partition("/")
        if sep and "@" in authority:
            authority = "***@" + authority.rsplit("@", 1)[1]
        shown.append(f"{scheme}{sep}{authority}{slash}{path}" if sep else url.strip())
    return ",".join(shown)


async def _connect(settings: Settings, stopping: _Stopping) -> Client:
    servers = [url.strip() for url in settings.nats_url.split(",") if url.strip()]
    options: dict[str, Any] = {}
    if settings.nats_creds:
        options["user_credentials"] = settings.nats_creds
    if settings.nats_tls_ca:
        options["tls"] = ssl.create_default_context(cafile=settings.nats_tls_ca)

    async def disconnected() -> None:
        if stopping.now:
            log.debug("disconnected from NATS (stopping)")
        else:
            log.warning("disconnected from NATS; reconnecting")

    async def reconnected() -> None:
        log.info("reconnected to NATS")

    async def error(err: Exception) -> None:
        if not stopping.now:
            log.warning("NATS: %s", err)

    return await nats.connect(
        servers=servers,
        name=f"python-worker@{socket.gethostname()}",
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        disconnected_cb=disconnected,
        reconnected_cb=reconnected,
        error_cb=error,
        **options,
    )


async def _within(operation: Any, what: str) -> None:
    try:
        await asyncio.wait_for(operation, NATS_STOP_TIMEOUT)
    except asyncio.TimeoutError:
        log.warning("%s took over %.0f s (NATS unreachable?); going on", what, NATS_STOP_TIMEOUT)
    except Exception as err:
        log.warning("%s failed: %s", what, err)
