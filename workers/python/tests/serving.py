"""Serving a worker in a test, and reading its replies."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import nats

from prediction_worker import Worker


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 60))


class Serving:
    """A worker serving in the background, and a client to ask it."""

    def __init__(self, worker: Worker, nats_url: str) -> None:
        self.worker = worker
        self.nats_url = nats_url
        self.stop = asyncio.Event()

    async def __aenter__(self) -> Serving:
        self.task = asyncio.get_running_loop().create_task(self.worker.serve(self.stop))
        await asyncio.wait_for(self.worker.wait_until_ready(), 10)
        self.client = await nats.connect(self.nats_url)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 10)
        await self.client.close()

    async def ask(
        self, model: str, payload: Any, headers: dict[str, str] | None = None, timeout: float = 5
    ) -> Any:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        return await self.client.request(f"predict.{model}", body, timeout=timeout, headers=headers)

    async def srv(self, verb: str) -> Any:
        reply = await self.client.request(f"$SRV.{verb}.prediction-worker", b"", timeout=2)
        return json.loads(reply.data)


def error_of(reply: Any) -> tuple[str, str] | None:
    headers = reply.headers or {}
    if "Nats-Service-Error-Code" not in headers:
        return None
    return headers["Nats-Service-Error-Code"], headers["Nats-Service-Error"]
