"""Put any Python model behind the prediction gateway.

.. code-block:: python

    from prediction_worker import Input, InvalidInput, Worker

    worker = Worker()

    @worker.model("sentiment", version="1.0.0", freshness_ttl=60)
    def sentiment(inp: Input) -> dict[str, bool]:
        if "text" not in inp:
            raise InvalidInput("missing string field `text`")
        return {"positive": "bad" not in inp["text"]}

    worker.run()
"""

from .generation import Usage
from .model import InvalidInput
from .tensors import TensorSpec
from .worker import Delta, Input, Worker, __version__

__all__ = ["Delta", "Input", "InvalidInput", "TensorSpec", "Usage", "Worker", "__version__"]
