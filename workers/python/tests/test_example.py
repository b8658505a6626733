"""The scikit-learn example answers as documented, batched, through NATS."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "examples"))

from test_worker import Serving, error_of, run  # noqa: E402

SETOSA = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
VIRGINICA = {"sepal_length": 6.7, "sepal_width": 3.0, "petal_length": 5.8, "petal_width": 2.2}


def test_the_iris_example_classifies_in_batches_and_names_bad_input(nats_url: str) -> None:
    import iris

    iris.worker.configure(nats_url=nats_url)

    async def test() -> None:
        async with Serving(iris.worker, nats_url) as serving:
            setosa, virginica, bad = await asyncio.gather(
                serving.ask("iris", SETOSA),
                serving.ask("iris", VIRGINICA),
                serving.ask("iris", {**SETOSA, "petal_width": "wide"}),
            )
            assert json.loads(setosa.data)["species"] == "setosa"
            assert json.loads(virginica.data)["species"] == "virginica"
            assert setosa.headers["Model-Version"] == "1.0.0"
            assert setosa.headers["Freshness-Ttl-Ms"] == "3600000"
            code, message = error_of(bad) or ("", "")
            assert code == "400" and "petal_width" in message
            many = await asyncio.gather(*(serving.ask("iris", SETOSA) for _ in range(32)))
            assert {json.loads(r.data)["species"] for r in many} == {"setosa"}
            stats = await serving.srv("STATS")
            data = stats["endpoints"][0]["data"]
            assert data["predictions"] == 35
            assert data["inference_calls"] < 20, data

    run(test)
