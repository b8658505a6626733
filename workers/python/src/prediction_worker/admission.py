"""Which requests a worker holds."""

from __future__ import annotations

from .contract import RequestMetadata


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
