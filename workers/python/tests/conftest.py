"""A real nats-server per test, on a free loopback port."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def nats_server_binary() -> str:
    found = os.environ.get("NATS_SERVER_BIN") or shutil.which("nats-server")
    for candidate in [found, "/usr/sbin/nats-server", "/usr/bin/nats-server"]:
        if candidate and os.path.exists(candidate):
            return candidate
    raise RuntimeError("nats-server is not installed (apt-get install -y nats-server)")


@pytest.fixture
def nats_url() -> Iterator[str]:
    port = free_port()
    server = subprocess.Popen(
        [nats_server_binary(), "-a", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    started = time.monotonic()
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if server.poll() is not None or time.monotonic() - started > 10:
                server.kill()
                raise RuntimeError(f"nats-server did not start on port {port}") from None
            time.sleep(0.02)
    yield f"nats://127.0.0.1:{port}"
    server.kill()
    server.wait()
