"""The nats-py internals ``prediction_worker.nats_internals`` relies on, checked
against the nats-py installed: a nats-py that renamed them fails here, not in
production."""

from __future__ import annotations

import asyncio

import nats
import nats.micro
from nats.micro.request import Request
from serving import run

from prediction_worker.nats_internals import EndpointStatsAdapter, reply_subject


def test_a_request_tells_its_reply_subject(nats_url: str) -> None:
    async def test() -> None:
        client = await nats.connect(nats_url)
        seen: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()

        async def handle(request: Request) -> None:
            seen.set_result(reply_subject(request))
            await request.respond(b"{}")

        service = await nats.micro.add_service(client, name="internals", version="0.0.1")
        await service.add_endpoint(name="probe", subject="probe", handler=handle)
        inbox = client.new_inbox()
        replies = await client.subscribe(inbox)
        await client.publish("probe", b"{}", reply=inbox)
        await replies.next_msg(timeout=5)
        assert await seen == inbox
        await service.stop()
        await client.close()

    run(test)


def test_the_stats_adapter_finds_the_counters_it_corrects(nats_url: str) -> None:
    async def test() -> None:
        client = await nats.connect(nats_url)

        async def handle(request: Request) -> None:
            await request.respond(b"{}")

        service = await nats.micro.add_service(client, name="internals", version="0.0.1")
        await service.add_endpoint(name="probe", subject="probe", handler=handle)
        await client.request("probe", b"{}", timeout=5)
        EndpointStatsAdapter(service, "probe").record(0.5, "it failed")
        stats = service.stats().endpoints[0]
        assert stats.num_errors == 1
        assert stats.last_error == "it failed"
        assert stats.processing_time >= 500_000_000
        await service.stop()
        await client.close()

    run(test)
