"""``python -m prediction_worker module:worker``: imports the module, applies
the command line's settings and serves until SIGTERM or Ctrl-C."""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Sequence

from .config import deprecation_warnings, flags_given, parse_arguments
from .logs import configure_logging
from .worker import Worker


def load_worker(reference: str) -> Worker:
    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise SystemExit(f"expected MODULE:ATTRIBUTE (e.g. mymodels:worker), got {reference!r}")
    sys.path.insert(0, "")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise SystemExit(f"cannot import {module_name}: {err}") from None
    worker = getattr(module, attribute, None)
    if not isinstance(worker, Worker):
        raise SystemExit(f"{reference} is {type(worker).__name__}, not a prediction_worker.Worker")
    return worker


def main(argv: Sequence[str] | None = None) -> None:
    arguments = parse_arguments(argv)
    configure_logging(arguments.log_format, arguments.log_level)
    for warning in deprecation_warnings():
        logging.getLogger("prediction_worker").warning(warning)
    worker = load_worker(arguments.worker)
    try:
        worker.configure(**flags_given(arguments))
    except ValueError as err:
        raise SystemExit(f"invalid setting: {err}") from None
    try:
        worker.run()
    except OSError as err:  # ConnectionError included: NATS unreachable at startup
        logging.getLogger("prediction_worker").error("cannot serve: %s", err)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
