"""The gateway's protocols as their users call them, with the standard clients
(the official `openai` SDK; Triton's `tritonclient`) against real gateway,
NATS, Redis and worker processes, each test with servers of its own on free
ports."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

ROOT = Path(__file__).resolve().parents[3]
TOKENS = ("token-a", "token-b")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def binary(name: str, *fallbacks: str) -> str:
    for candidate in [shutil.which(name), *fallbacks]:
        if candidate and os.path.exists(candidate):
            return candidate
    raise RuntimeError(f"{name} is not installed")


def eventually(check: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
    """Polls `check` until it returns something true; fails naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
            if result:
                return result
        except Exception:
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.05)


def wait_for_port(port: int, process: subprocess.Popen[bytes], name: str) -> None:
    def listening() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}")
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    eventually(listening, f"{name} listens on {port}")


@pytest.fixture(scope="session")
def binaries() -> Path:
    """The gateway and worker binaries, built now so they match the code."""
    subprocess.run(
        ["cargo", "build", "--quiet", "--locked", "--bin", "gateway", "--bin", "worker"],
        cwd=ROOT,
        check=True,
    )
    return ROOT / "target" / "debug"


class Stack:
    """NATS, Redis, workers and a gateway; every process stopped at the end."""

    def __init__(self, binaries: Path, logs: Path) -> None:
        self.binaries = binaries
        self.logs = logs
        self.processes: list[subprocess.Popen[bytes]] = []
        self.nats_port = free_port()
        self.nats_url = f"nats://127.0.0.1:{self.nats_port}"
        self.redis_port = free_port()
        self.gateway_url = ""
        self.worker_metrics: list[str] = []
        nats = self.spawn(
            "nats",
            [binary("nats-server", "/usr/sbin/nats-server"), "-a", "127.0.0.1", "-p", str(self.nats_port)],
        )
        wait_for_port(self.nats_port, nats, "nats-server")
        redis = self.spawn(
            "redis",
            [
                binary("redis-server", "/usr/bin/redis-server"),
                "--port",
                str(self.redis_port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
        )
        wait_for_port(self.redis_port, redis, "redis-server")

    def spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = open(self.logs / f"{name}-{len(self.processes)}.log", "wb")
        process = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
        self.processes.append(process)
        return process

    def worker(self, *args: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], str]:
        """A Rust worker (default: tiny-chat and tiny-embed, 20 ms a token) and
        the URL of its metrics."""
        port = free_port()
        command = [
            str(self.binaries / "worker"),
            "--nats-url",
            self.nats_url,
            "--metrics-listen",
            f"127.0.0.1:{port}",
            *(args or ("--model", "tiny-chat,tiny-embed")),
        ]
        process = self.spawn("worker", command, env)
        wait_for_port(port, process, "worker metrics")
        self.worker_metrics.append(f"http://127.0.0.1:{port}/metrics")
        return process, self.worker_metrics[-1]

    def python_worker(self, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """A worker of the Python library serving the models of
        `python_models.py`."""
        return self.spawn(
            "python-worker",
            [sys.executable, "-m", "prediction_worker", "python_models:worker", "--nats-url", self.nats_url],
            {"PYTHONPATH": str(Path(__file__).parent), **(env or {})},
        )

    def gateway(self, *args: str) -> str:
        port = free_port()
        command = [
            str(self.binaries / "gateway"),
            "--listen",
            f"127.0.0.1:{port}",
            "--nats-url",
            self.nats_url,
            "--redis-url",
            f"redis://127.0.0.1:{self.redis_port}",
            "--discovery-interval",
            "200ms",
            *args,
        ]
        process = self.spawn("gateway", command, {"RUST_LOG": "info"})
        wait_for_port(port, process, "gateway")
        self.gateway_url = f"http://127.0.0.1:{port}"
        return self.gateway_url

    def client(self, token: str = TOKENS[0], **options: Any) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=f"{self.gateway_url}/v1", api_key=token, max_retries=0, timeout=30, **options
        )

    def wait_for_models(self, *names: str) -> None:
        def listed() -> bool:
            models = {model.id for model in self.client().models.list()}
            return set(names) <= models

        eventually(listed, f"the gateway lists {names}")

    def metric(self, name: str, url: str | None = None, **labels: str) -> float:
        """The sum of the series of metric `name` whose labels include `labels`."""
        text = urllib.request.urlopen(url or f"{self.gateway_url}/metrics").read().decode()
        total = 0.0
        for line in text.splitlines():
            match = re.match(r"^([a-z_:]+)(\{[^}]*\})? (\S+)$", line)
            if not match or match.group(1) != name:
                continue
            series = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
            if all(series.get(key) == value for key, value in labels.items()):
                total += float(match.group(3))
        return total

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                process.kill()
            process.wait()


@pytest.fixture
def stack(binaries: Path) -> Iterator[Stack]:
    with tempfile.TemporaryDirectory(prefix="openai-e2e-") as logs:
        stack = Stack(binaries, Path(logs))
        try:
            yield stack
        except BaseException:
            raise
        finally:
            stack.stop()
            if os.environ.get("OPENAI_E2E_LOGS"):
                for log in sorted(Path(logs).iterdir()):
                    print(f"--- {log.name}\n{log.read_text(errors='replace')[-4000:]}")


@pytest.fixture
def llm(stack: Stack) -> Stack:
    """A gateway with two API tokens and a worker serving tiny-chat and tiny-embed."""
    stack.worker()
    stack.gateway("--api-token", ",".join(TOKENS))
    stack.wait_for_models("tiny-chat", "tiny-embed")
    return stack
