"""The NATS contract between the gateway and its workers (docs/contract.md in
the repository): subjects, headers and error codes. Mirrors the Rust crate
``prediction-contract``; the gateway cannot tell a Python worker from a Rust one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

#: The NATS service every worker registers as (Services API).
SERVICE_NAME = "prediction-worker"
#: The queue group every endpoint joins, so each request reaches one worker.
QUEUE_GROUP = "q"
#: Requests for model ``m`` arrive on ``predict.m``.
PREDICT_SUBJECT_PREFIX = "predict"

# Gateway -> worker.
REQUEST_ID = "Request-Id"
DEADLINE_UNIX_MS = "Deadline-Unix-Ms"
AVOID_BACKLOG = "Avoid-Backlog"
TRACEPARENT = "traceparent"

# Worker -> gateway.
MODEL_VERSION = "Model-Version"
FRESHNESS_TTL_MS = "Freshness-Ttl-Ms"
COMPUTE_TIME_MS = "Compute-Time-Ms"

#: ``Nats-Service-Error-Code`` values.
BAD_INPUT = 400
MODEL_FAILED = 500
BUSY = 503
DEADLINE_EXCEEDED = 504


@dataclass(frozen=True)
class RequestMetadata:
    """What a request says about itself besides its input."""

    request_id: str = "-"
    deadline_unix_ms: int | None = None
    avoid_backlog: bool = False

    @classmethod
    def from_headers(cls, headers: Mapping[str, str] | None) -> RequestMetadata:
        """Reads the headers, tolerating missing or malformed ones: a request
        sent by hand (``nats req``) may carry none."""
        headers = headers or {}
        deadline: int | None
        try:
            deadline = int(headers[DEADLINE_UNIX_MS].strip())
        except (KeyError, ValueError):
            deadline = None
        return cls(
            request_id=headers.get(REQUEST_ID, "-"),
            deadline_unix_ms=deadline,
            avoid_backlog=AVOID_BACKLOG in headers,
        )

    def deadline_passed(self, now_unix_ms: int) -> bool:
        return self.deadline_unix_ms is not None and now_unix_ms >= self.deadline_unix_ms


def reply_headers(
    model_version: str, freshness_ttl: float | None, compute_seconds: float
) -> dict[str, str]:
    """The headers of a reply: the version, the freshness (absent: the
    gateway's default; 0: do not cache) and the compute time."""
    headers = {
        MODEL_VERSION: model_version,
        COMPUTE_TIME_MS: f"{compute_seconds * 1000:.3f}",
    }
    if freshness_ttl is not None:
        headers[FRESHNESS_TTL_MS] = str(round(freshness_ttl * 1000))
    return headers
