"""A module the command-line tests serve."""

import time

from prediction_worker import Worker

worker = Worker()


@worker.batch_model("slow-square", version="3", max_batch=8, batch_window=0.005)
def slow_square(batch: list[dict]) -> list[dict]:
    time.sleep(0.2)
    return [{"square": item["n"] ** 2} for item in batch]
