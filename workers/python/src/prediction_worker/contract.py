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
#: A worker with service id ``w`` takes cancellations of its streams on
#: ``worker.cancel.w``: the payload is the stream's reply subject.
CANCEL_SUBJECT_PREFIX = "worker.cancel"

# Gateway -> worker.
REQUEST_ID = "Request-Id"
DEADLINE_UNIX_MS = "Deadline-Unix-Ms"
AVOID_BACKLOG = "Avoid-Backlog"
#: Send a heartbeat to the reply subject every this many milliseconds while the
#: request is held, so the caller tells a slow model from a dead worker.
HEARTBEAT_MS = "Heartbeat-Ms"
TRACEPARENT = "traceparent"
#: Send a generative model's answer as a stream of chunks, then an end.
REPLY_STREAM = "Reply-Stream"
#: The OpenAI API a generative request speaks: chat.completions, completions,
#: embeddings; without it, told by the request's fields.
OPENAI_API = "Openai-Api"
#: Both ways: the message holds tensors in the binary form (the Open Inference
#: Protocol's), a JSON header this many bytes long, then the tensors' data.
INFERENCE_HEADER_CONTENT_LENGTH = "Inference-Header-Content-Length"

# Worker -> gateway.
MODEL_VERSION = "Model-Version"
FRESHNESS_TTL_MS = "Freshness-Ttl-Ms"
COMPUTE_TIME_MS = "Compute-Time-Ms"
#: Marks a message on the reply subject that is not the reply itself.
REPLY_KIND = "Reply-Kind"
#: The ``Reply-Kind`` of a heartbeat (an empty payload).
HEARTBEAT = "heartbeat"
#: The ``Reply-Kind`` of a stream's chunk, and of its last message.
CHUNK = "chunk"
END = "end"
#: On a stream's messages: the worker's service id, where cancellations go.
WORKER_ID = "Worker-Id"
#: Endpoint metadata key by which a worker says it sends heartbeats ("true").
HEARTBEATS_METADATA = "heartbeats"
#: Endpoint metadata of a generative model: it streams ("true"), its bounds in
#: milliseconds, and whether answers of sampled requests may be cached.
STREAMS_METADATA = "streams"
TIMEOUT_MS_METADATA = "timeout_ms"
FIRST_CHUNK_MS_METADATA = "first_chunk_ms"
CHUNK_GAP_MS_METADATA = "chunk_gap_ms"
CACHE_SAMPLED_METADATA = "cache_sampled"
#: Endpoint metadata of a tensor model: its inputs and outputs (JSON).
TENSORS_METADATA = "tensors"

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
    #: Seconds between heartbeats the caller asked for; ``None``: none.
    heartbeat_interval: float | None = None
    #: Whether a generative model's answer goes back as a stream.
    stream: bool = False
    #: The OpenAI API the request speaks, if the caller said.
    api: str | None = None
    #: For a tensor request, the length of its JSON header.
    tensor_header_length: int | None = None

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
        heartbeat: float | None
        try:
            heartbeat = max(int(headers[HEARTBEAT_MS].strip()), 1) / 1000
        except (KeyError, ValueError):
            heartbeat = None
        tensor_header: int | None
        try:
            tensor_header = int(headers[INFERENCE_HEADER_CONTENT_LENGTH].strip())
        except (KeyError, ValueError):
            tensor_header = -1 if INFERENCE_HEADER_CONTENT_LENGTH in headers else None
        return cls(
            request_id=headers.get(REQUEST_ID, "-"),
            deadline_unix_ms=deadline,
            avoid_backlog=AVOID_BACKLOG in headers,
            heartbeat_interval=heartbeat,
            stream=REPLY_STREAM in headers,
            api=headers.get(OPENAI_API),
            tensor_header_length=tensor_header,
        )

    def deadline_passed(self, now_unix_ms: int) -> bool:
        return self.deadline_unix_ms is not None and now_unix_ms >= self.deadline_unix_ms


def heartbeat_headers() -> dict[str, str]:
    """The headers of a heartbeat."""
    return {REPLY_KIND: HEARTBEAT}


def stream_headers(kind: str, worker_id: str) -> dict[str, str]:
    """The headers of a stream's chunk (``kind`` CHUNK) or heartbeat."""
    return {REPLY_KIND: kind, WORKER_ID: worker_id}


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
