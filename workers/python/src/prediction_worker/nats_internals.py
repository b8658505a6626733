"""Everything this library reads or writes of nats-py that nats-py does not
publish, in one place, each with what happens if a later nats-py changes it.
``tests/test_nats_internals.py`` checks each against the nats-py installed
(the version ``constraints.txt`` pins for the tests)."""

from __future__ import annotations

from nats.micro.request import Request
from nats.micro.service import Service


def reply_subject(request: Request) -> str | None:
    """Where the reply to ``request`` goes (for heartbeats): nats-py's
    ``Request`` keeps its message private. Without it the worker sends no
    heartbeats, and the gateway falls back to waiting for the reply."""
    message = getattr(request, "_msg", None)
    reply = getattr(message, "reply", None)
    return reply if isinstance(reply, str) and reply else None


class EndpointStatsAdapter:
    """Keeps ``nats micro stats`` true. nats-py's service counts a request's
    error and processing time around the handler call, which here returns as
    soon as the request is handed to its task; so the answer's outcome is
    added to the endpoint's counters when it is sent. Those counters are
    nats-py's own attributes: if a later nats-py renames them, the stats only
    lose the errors and times, and serving is unaffected."""

    def __init__(self, service: Service, name: str) -> None:
        self._service = service
        self._name = name

    def record(self, elapsed_seconds: float, error: str | None) -> None:
        endpoint = next(
            (
                e
                for e in getattr(self._service, "_endpoints", [])
                if getattr(e, "_name", None) == self._name
            ),
            None,
        )
        if endpoint is None:
            return
        try:
            endpoint._processing_time += int(elapsed_seconds * 1e9)
            endpoint._average_processing_time = int(
                endpoint._processing_time / max(endpoint._num_requests, 1)
            )
            if error is not None:
                endpoint._num_errors += 1
                endpoint._last_error = error
        except AttributeError:
            pass
