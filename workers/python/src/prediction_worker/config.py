"""Settings from the environment and the command line: every flag also reads
an environment variable, with the Rust worker's names."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Settings:
    """How the worker connects and how much it holds. ``None`` is the default
    (see the command line's ``--help``)."""

    nats_url: str = "nats://127.0.0.1:4222"
    nats_creds: str | None = None
    nats_tls_ca: str | None = None
    #: Model calls (a call: one input, or one batch) running at once.
    concurrency: int = 8
    #: Requests that may wait for a slot; past that the worker answers busy.
    queue_depth: int = 256
    #: Requests waiting from which one carrying ``Avoid-Backlog`` is turned
    #: away at once; ``None``: as many as run at once.
    redirect_backlog: int | None = None
    #: Seconds the worker tries to reach NATS at startup before it gives up
    #: (exit code 1).
    connect_timeout: float = 30.0


#: Each setting's flag, environment variable and parser.
_SETTINGS: list[tuple[str, str, str, Callable[[str], Any], str]] = [
    ("nats_url", "--nats-url", "NATS_URL", str, "NATS server URL(s), comma-separated"),
    ("nats_creds", "--nats-creds", "NATS_CREDS", str, "a NATS credentials file (JWT and NKey)"),
    ("nats_tls_ca", "--nats-tls-ca", "NATS_TLS_CA", str, "a CA file for tls:// NATS URLs"),
    (
        "concurrency",
        "--concurrency",
        "WORKER_CONCURRENCY",
        int,
        "model calls running at once (a call: one input, or one batch)",
    ),
    (
        "queue_depth",
        "--queue-depth",
        "WORKER_QUEUE_DEPTH",
        int,
        "requests that may wait for a free slot; past that the worker answers busy (503)",
    ),
    (
        "redirect_backlog",
        "--redirect-backlog",
        "WORKER_REDIRECT_BACKLOG",
        int,
        "requests waiting from which one whose caller offered to try another worker "
        "(Avoid-Backlog) is turned away at once (default: as many as run at once)",
    ),
    (
        "connect_timeout",
        "--connect-timeout",
        "WORKER_CONNECT_TIMEOUT",
        float,
        "seconds to keep trying to reach NATS at startup before giving up with exit code 1 "
        "(default: 30)",
    ),
]


def _positive(name: str, value: int | None, minimum: int) -> None:
    if value is not None and value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, not {value}")


def settings_from_environment(**given: Any) -> Settings:
    """Settings from ``given`` (the ``Worker`` constructor's arguments), then
    the environment, then the defaults."""
    values: dict[str, Any] = {}
    for field, _, env, parse, _ in _SETTINGS:
        if given.get(field) is not None:
            values[field] = given[field]
        elif os.environ.get(env):
            try:
                values[field] = parse(os.environ[env])
            except ValueError:
                raise ValueError(f"{env}={os.environ[env]!r} is not a valid value") from None
    return validated(Settings(**values))


def validated(settings: Settings) -> Settings:
    _positive("concurrency", settings.concurrency, 1)
    _positive("queue_depth", settings.queue_depth, 0)
    _positive("redirect_backlog", settings.redirect_backlog, 0)
    if not settings.connect_timeout > 0:
        raise ValueError(f"connect_timeout must be above 0 seconds, not {settings.connect_timeout}")
    return settings


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m prediction_worker",
        description="Serves the models of a prediction_worker.Worker on NATS (predict.<model>).",
    )
    parser.add_argument(
        "worker",
        metavar="MODULE:ATTRIBUTE",
        help="where the Worker is, e.g. mymodels:worker (the current folder is importable)",
    )
    for field, flag, env, parse, text in _SETTINGS:
        parser.add_argument(flag, dest=field, type=parse, default=None, help=f"{text} [env: {env}]")
    parser.add_argument(
        "--log-format",
        choices=["text", "json"],
        default=environment("WORKER_LOG_FORMAT", deprecated="LOG_FORMAT") or "text",
        help="log format [env: WORKER_LOG_FORMAT]",
    )
    parser.add_argument(
        "--log-level",
        default=environment("WORKER_LOG_LEVEL", deprecated="LOG_LEVEL") or "INFO",
        help="log level: DEBUG logs every request [env: WORKER_LOG_LEVEL]",
    )
    return parser


#: Environment variables read under an old name, each with the warning to log
#: once logging is set up (see ``deprecation_warnings``).
_DEPRECATED_SEEN: list[str] = []


def environment(name: str, *, deprecated: str) -> str | None:
    """The variable ``name``, else its old name ``deprecated`` (which still
    works, with a warning: settings of the worker are ``WORKER_*``)."""
    value = os.environ.get(name)
    if value:
        return value
    old = os.environ.get(deprecated)
    if old:
        _DEPRECATED_SEEN.append(f"{deprecated} is deprecated; set {name} instead")
    return old


def deprecation_warnings() -> list[str]:
    """What ``environment`` found under old names."""
    return list(_DEPRECATED_SEEN)


def flags_given(arguments: argparse.Namespace) -> dict[str, Any]:
    """The settings given as flags; the rest keep what the ``Worker`` was
    built with (its arguments, else the environment, else the defaults)."""
    return {
        field: getattr(arguments, field)
        for field, *_ in _SETTINGS
        if getattr(arguments, field) is not None
    }


def parse_arguments(argv: Sequence[str] | None = None) -> argparse.Namespace:
    return parser().parse_args(argv)
