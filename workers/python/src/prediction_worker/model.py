"""A model as the worker serves it: its name, version and freshness, the
function that computes it, and how it batches."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: The names the gateway accepts (the Rust crate's ``ModelName``): lowercase
#: letters and digits, then also ``-`` and ``_``, at most 64 characters.
MODEL_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


class InvalidInput(Exception):
    """Raise it for an input the model cannot accept: the caller gets HTTP 422
    (NATS code 400) with this message, so say what is wrong with the input.

    A batch function may also *return* an ``InvalidInput`` in place of one
    input's answer, failing that input alone.
    """


@dataclass(frozen=True)
class ModelSpec:
    """A registered model."""

    name: str
    version: str
    #: Seconds the prediction stays fresh; ``None``: the gateway's default; 0:
    #: not cached.
    freshness_ttl: float | None
    function: Callable[..., Any]
    #: The most inputs one call computes.
    max_batch: int
    #: Seconds the first input of a batch waits for others to join it.
    batch_window: float
    #: Whether the function takes a list of inputs (registered with
    #: ``batch_model``) rather than one.
    batches: bool = False
    #: ``predict`` (a function of one input or a batch), ``chat`` (a generator
    #: of deltas, for chat and completions), ``embed`` (a function of texts) or
    #: ``tensor`` (a function of named arrays).
    kind: str = "predict"
    #: A tensor model's inputs and outputs (``tensors.TensorSpec``).
    tensor_inputs: tuple[Any, ...] = ()
    tensor_outputs: tuple[Any, ...] = ()
    #: A generative model's bounds, in seconds: the whole answer, its first
    #: chunk, the gap between two chunks.
    bounds: tuple[float, float, float] | None = None
    #: Whether answers of sampled requests (temperature above 0, no seed) may
    #: be cached.
    cache_sampled: bool = True

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.function)

    def __post_init__(self) -> None:
        if not MODEL_NAME.match(self.name):
            raise ValueError(
                f"invalid model name {self.name!r}: use lowercase letters, digits, "
                "'-' and '_' (starting with a letter or digit), at most 64 characters"
            )
        if not isinstance(self.version, str) or not self.version.strip():
            raise ValueError(
                f"model {self.name}: the version must be a non-empty string "
                "(the gateway keys its cache by it)"
            )
        if self.freshness_ttl is not None and self.freshness_ttl < 0:
            raise ValueError(f"model {self.name}: freshness_ttl must be >= 0 seconds or None")
        if self.max_batch < 1 or (not self.batches and self.max_batch != 1):
            raise ValueError(f"model {self.name}: max_batch must be at least 1")
        if self.batch_window < 0:
            raise ValueError(f"model {self.name}: batch_window must be >= 0 seconds")
        if self.kind not in ("predict", "chat", "embed", "tensor"):
            raise ValueError(f"model {self.name}: unknown kind {self.kind!r}")
        if self.kind == "tensor" and not (self.tensor_inputs and self.tensor_outputs):
            raise ValueError(f"model {self.name}: a tensor model declares its inputs and outputs")
        if self.bounds is not None and min(self.bounds) <= 0:
            raise ValueError(f"model {self.name}: timeouts must be above 0 seconds")
