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

from .model import InvalidInput
from .worker import Input, Worker, __version__

__all__ = ["Input", "InvalidInput", "Worker", "__version__"]
