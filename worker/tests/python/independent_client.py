"""An independent NATS client (nats-py) doing what `nats req` and `nats micro info` do.

Usage: python3 independent_client.py <nats url>
Prints one JSON object with what it saw; the Rust test checks it.
"""

import asyncio
import json
import sys

import nats


async def main(url: str) -> None:
    nc = await nats.connect(url)
    seen = {}

    # nats req predict.price '{"product_id":"ETH/EUR"}'
    reply = await nc.request("predict.price", b'{"product_id":"ETH/EUR"}', timeout=5)
    seen["prediction"] = json.loads(reply.data)
    seen["prediction_headers"] = dict(reply.headers or {})

    # nats req predict.price '{"product":"ETH/EUR"}'
    reply = await nc.request("predict.price", b'{"product":"ETH/EUR"}', timeout=5)
    seen["error_headers"] = dict(reply.headers or {})
    seen["error_payload"] = reply.data.decode()

    # nats micro info prediction-worker
    reply = await nc.request("$SRV.INFO.prediction-worker", b"", timeout=5)
    seen["info"] = json.loads(reply.data)

    # nats micro stats prediction-worker
    reply = await nc.request("$SRV.STATS.prediction-worker", b"", timeout=5)
    seen["stats"] = json.loads(reply.data)

    await nc.drain()
    print(json.dumps(seen))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
