"""Python models the gateway's integration tests serve with prediction_worker."""

import os
import time

from prediction_worker import InvalidInput, Worker

worker = Worker()

#: How long `slow-echo` takes, so a test can hold requests in flight.
SLOW_SECONDS = float(os.environ.get("SLOW_SECONDS", "0.2"))


@worker.model("sentiment", version="1.0.0", freshness_ttl=60)
def sentiment(inp: dict) -> dict:
    if not isinstance(inp.get("text"), str):
        raise InvalidInput("missing string field `text`")
    return {"positive": "bad" not in inp["text"], "computed_at": time.time()}


@worker.model("fragile", version="0.1")
def fragile(inp: dict) -> dict:
    raise RuntimeError("connection string postgres://admin:hunter2@db")


@worker.batch_model("embed", version="2", max_batch=64, batch_window=0.02)
def embed(batch: list) -> list:
    return [{"length": len(str(item.get("text", ""))), "text": item.get("text")} for item in batch]


@worker.model("slow-echo", version="3.1.4")
def slow_echo(inp: dict) -> dict:
    time.sleep(SLOW_SECONDS)
    return {"model": "slow-echo", "input": inp, "worker": "python"}
