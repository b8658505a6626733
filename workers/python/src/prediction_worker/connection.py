"""The worker's NATS connection: made at startup within a bound and stopped
by a signal, quiet about the disconnection of a clean stop."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from typing import Any

import nats
from nats.aio.client import Client

from .config import Settings

log = logging.getLogger("prediction_worker")

#: How long, after the stop signal, the unsubscribes and the final drain may
#: take: they end at once unless NATS is unreachable, and then the worker exits
#: anyway rather than hang.
NATS_STOP_TIMEOUT = 2.0


class Stopping:
    """Whether the worker is stopping, for the connection's callbacks: a
    disconnection then is the drain's, not a fault."""

    now = False


async def connect_unless_stopped(
    settings: Settings, stop: asyncio.Event, stopping: Stopping
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


async def _connect(settings: Settings, stopping: Stopping) -> Client:
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


async def within(operation: Any, what: str) -> None:
    try:
        await asyncio.wait_for(operation, NATS_STOP_TIMEOUT)
    except asyncio.TimeoutError:
        log.warning("%s took over %.0f s (NATS unreachable?); going on", what, NATS_STOP_TIMEOUT)
    except Exception as err:
        log.warning("%s failed: %s", what, err)
