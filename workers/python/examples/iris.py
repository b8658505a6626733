"""A scikit-learn model behind the gateway, batched.

Trains a logistic regression on the iris data set scikit-learn ships (at start-up:
a second or so) and serves it as the model ``iris``:

    python -m prediction_worker iris:worker          # from this folder
    curl -s localhost:8080/v1/models/iris/predict \\
        -d '{"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}'

The second identical request is answered from the gateway's cache (``x-cache: HIT``).
"""

from __future__ import annotations

import math

from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from prediction_worker import InvalidInput, Worker

FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]

_iris = load_iris()
_model = LogisticRegression(max_iter=1000).fit(_iris.data, _iris.target)
_species = list(_iris.target_names)

worker = Worker()


def _features(inp: dict) -> list[float] | InvalidInput:
    """The input's four measurements (cm), or what is wrong with it."""
    missing = [name for name in FEATURES if name not in inp]
    if missing:
        return InvalidInput(f"missing number field(s): {', '.join(missing)} (in cm)")
    row = []
    for name in FEATURES:
        value = inp[name]
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
        ):
            return InvalidInput(f"`{name}` must be a finite number (cm), not {value!r}")
        row.append(float(value))
    return row


# One call to scikit-learn per batch: up to 64 requests gathered for 2 ms.
@worker.batch_model("iris", version="1.0.0", freshness_ttl=3600, max_batch=64, batch_window=0.002)
def iris(batch: list[dict]) -> list[dict | InvalidInput]:
    rows = [_features(inp) for inp in batch]
    valid = [row for row in rows if not isinstance(row, InvalidInput)]
    probabilities = iter(_model.predict_proba(valid) if valid else [])
    answers: list[dict | InvalidInput] = []
    for row in rows:
        if isinstance(row, InvalidInput):
            answers.append(row)  # this input alone fails, with a 422
            continue
        p = next(probabilities)
        best = int(p.argmax())
        answers.append(
            {
                "species": _species[best],
                "probability": round(float(p[best]), 4),
                "probabilities": {s: round(float(q), 4) for s, q in zip(_species, p, strict=True)},
            }
        )
    return answers


if __name__ == "__main__":
    worker.run()
