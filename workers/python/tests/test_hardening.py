"""What a careless model or an unreachable NATS must not do to a worker, and the
heartbeats that let the gateway tell a slow model from a dead worker."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from serving import Serving, error_of, run

from prediction_worker import Worker

HERE = Path(__file__).parent


def test_a_held_request_gets_heartbeats_only_when_its_caller_asks(nats_url: str) -> None:
    worker = Worker(nats_url)

    @worker.model("slow", version="1")
    async def slow(inp: dict) -> dict:
        await asyncio.sleep(0.35)
        return {"done": True}

    async def test() -> None:
        async with Serving(worker, nats_url) as serving:
            inbox = serving.client.new_inbox()
            messages = await serving.client.subscribe(inbox)
            await serving.client.publish(
                "predict.slow", b"{}", reply=inbox, headers={"Heartbeat-Ms": "100"}
            )
            kinds = []
            while True:
                message = await messages.next_msg(timeout=5)
                kind = (message.headers or {}).get("Reply-Kind")
                kinds.append(kind)
                if kind is None:
                    assert json.loads(message.data) == {"done": True}
                    break
                assert message.data == b""
            assert kinds.count("heartbeat") >= 2, kinds
            # Without the header, one reply and nothing else (`nats req`).
            reply = await serving.ask("slow", {})
            assert "Reply-Kind" not in (reply.headers or {})

    run(test)


def test_the_endpoints_say_they_send_heartbeats(nats_url: str) -> None:
    worker = Worker(nats_url)
    worker.model("m", version="1")(lambda inp: 1)

    async def test() -> None:
        async with Serving(worker, nats_url) as serving:
            info = await serving.srv("INFO")
            assert info["endpoints"][0]["metadata"]["heartbeats"] == "true"

    run(test)


def test_numpy_scalars_and_arrays_are_answered_as_json_numbers_and_lists(nats_url: str) -> None:
    worker = Worker(nats_url)
    worker.model("f32", version="1")(lambda inp: np.float32(1.5))
    worker.model("i64", version="1")(lambda inp: {"n": np.int64(7)})
    worker.model("array", version="1")(lambda inp: np.array([[1.0, 2.0], [3.0, 4.0]]))

    @worker.batch_model("batched", version="1", max_batch=4, batch_window=0.05)
    def batched(batch: list[dict]) -> Any:
        return np.array([[inp["x"], inp["x"] * 2] for inp in batch])

    async def test() -> None:
        async with Serving(worker, nats_url) as serving:
            assert json.loads((await serving.ask("f32", {})).data) == 1.5
            assert json.loads((await serving.ask("i64", {})).data) == {"n": 7}
            assert json.loads((await serving.ask("array", {})).data) == [[1.0, 2.0], [3.0, 4.0]]
            replies = await asyncio.gather(*(serving.ask("batched", {"x": x}) for x in range(3)))
            assert [json.loads(r.data) for r in replies] == [[x, x * 2] for x in range(3)]

    run(test)


def test_nan_or_infinity_is_an_error_naming_the_model(nats_url: str) -> None:
    worker = Worker(nats_url)
    worker.model("unstable", version="1")(lambda inp: {"p": float("nan")})
    worker.model("overflow", version="1")(lambda inp: np.array([np.inf]))

    async def test() -> None:
        async with Serving(worker, nats_url) as serving:
            for model in ["unstable", "overflow"]:
                code, message = error_of(await serving.ask(model, {})) or ("", "")
                assert code == "500"
                assert model in message and "NaN or infinity" in message, message

    run(test)


def _unreachable_nats() -> str:
    from conftest import free_port

    return f"nats://127.0.0.1:{free_port()}"


def _worker_process(*flags: str) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE), *sys.path]),
        "NATS_URL": _unreachable_nats(),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "prediction_worker", "sample_models:worker", *flags],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_worker_that_cannot_reach_nats_gives_up_after_its_connect_timeout() -> None:
    process = _worker_process("--connect-timeout", "1")
    _, logs = process.communicate(timeout=30)
    assert process.returncode == 1, logs
    assert "could not connect to NATS" in logs and "within 1 s" in logs, logs


def test_sigterm_stops_a_worker_still_trying_to_connect() -> None:
    process = _worker_process()
    time.sleep(1.5)
    assert process.poll() is None, "still trying (the default bound is 30 s)"
    process.send_signal(signal.SIGTERM)
    _, logs = process.communicate(timeout=10)
    assert process.returncode == 0, logs
    assert "stopped before connecting" in logs, logs
