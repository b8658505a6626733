"""Settings and the command line: flags over the Worker's arguments over the
environment over the defaults, the names of variables, and `python -m
prediction_worker` serving a module until SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import nats
import pytest
from nats.errors import NoRespondersError
from serving import run

from prediction_worker import Worker

HERE = Path(__file__).parent


def test_settings_come_from_arguments_then_the_environment_then_defaults(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NATS_URL", "nats://from-env:4222")
    monkeypatch.setenv("WORKER_QUEUE_DEPTH", "7")
    worker = Worker(concurrency=3)
    assert worker.settings.nats_url == "nats://from-env:4222"
    assert worker.settings.concurrency == 3
    assert worker.settings.queue_depth == 7
    assert Worker("nats://given:1").settings.nats_url == "nats://given:1"
    monkeypatch.setenv("WORKER_CONCURRENCY", "many")
    with pytest.raises(ValueError, match="WORKER_CONCURRENCY"):
        Worker()


def test_the_command_line_serves_a_module_and_sigterm_loses_nothing(nats_url: str) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE), *sys.path]),
        "NATS_URL": nats_url,
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "prediction_worker", "sample_models:worker", "--concurrency", "4"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )

    async def test() -> None:
        client = await nats.connect(nats_url)
        for _ in range(200):
            try:
                await client.request("predict.slow-square", b'{"n":1}', timeout=1)
                break
            except (NoRespondersError, asyncio.TimeoutError):
                await asyncio.sleep(0.05)
        held = [
            asyncio.ensure_future(
                client.request("predict.slow-square", json.dumps({"n": n}).encode(), timeout=10)
            )
            for n in range(20)
        ]
        await asyncio.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        replies = await asyncio.gather(*held)
        assert [json.loads(r.data) for r in replies] == [{"square": n * n} for n in range(20)]
        await client.close()

    run(test)
    assert process.wait(10) == 0
    logs = process.stderr.read() if process.stderr else ""
    assert "stopping" in logs and "stopped" in logs, logs
    # The drain's disconnection is the stop, not a fault to warn of.
    assert "reconnecting" not in logs, logs


def test_the_command_line_names_what_is_wrong() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "prediction_worker", "no_such_module:worker"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert "cannot import no_such_module" in result.stderr


def test_flags_override_the_workers_arguments_which_override_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from prediction_worker.config import flags_given, parse_arguments

    monkeypatch.setenv("WORKER_QUEUE_DEPTH", "7")
    monkeypatch.setenv("WORKER_CONCURRENCY", "5")
    worker = Worker(concurrency=3, queue_depth=9)
    worker.configure(**flags_given(parse_arguments(["m:worker", "--concurrency", "2"])))
    assert (worker.settings.concurrency, worker.settings.queue_depth) == (2, 9)
    with pytest.raises(ValueError, match="concurrency"):
        worker.configure(**flags_given(parse_arguments(["m:worker", "--concurrency", "0"])))


def test_the_log_settings_read_their_worker_names_and_the_old_ones_with_a_warning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from prediction_worker import config

    monkeypatch.setattr(config, "_DEPRECATED_SEEN", [])
    monkeypatch.setenv("LOG_FORMAT", "json")
    monkeypatch.delenv("WORKER_LOG_FORMAT", raising=False)
    assert config.parse_arguments(["m:worker"]).log_format == "json"
    assert config.deprecation_warnings() == [
        "LOG_FORMAT is deprecated; set WORKER_LOG_FORMAT instead"
    ]
    monkeypatch.setenv("WORKER_LOG_FORMAT", "text")
    assert config.parse_arguments(["m:worker"]).log_format == "text"
