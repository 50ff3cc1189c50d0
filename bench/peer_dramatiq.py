"""Peer: dramatiq on Redis.

* ``noop`` actor; each run INCRs ``<namespace>:done`` in Redis (one extra round trip per job),
  which is how the harness counts completions.
* ``app``: a Starlette front for uvicorn; ``POST /jobs`` reads the JSON body, enqueues one
  ``noop`` message (``noop.send()``, a blocking Redis call made straight from the async
  handler, as dramatiq's own docs do; on loopback it takes a fraction of a millisecond) and
  answers 202 with the message id.
* Worker: ``dramatiq peer_dramatiq --processes P --threads T`` (dramatiq's defaults: 2 and 8).

Configured by the environment: ``BENCH_REDIS_URL`` and ``BENCH_NAMESPACE``.
"""

from __future__ import annotations

import os

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

__all__ = ["DONE_KEY", "MESSAGES_KEY", "NAMESPACE", "app", "broker", "noop", "prefill"]

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/11")
NAMESPACE = os.environ.get("BENCH_NAMESPACE", "bench") + ":dramatiq"
QUEUE = "default"
DONE_KEY = f"{NAMESPACE}:done"
#: The hash of enqueued, not yet acknowledged messages: its length is the jobs not finished.
MESSAGES_KEY = f"{NAMESPACE}:{QUEUE}.msgs"

broker = RedisBroker(url=REDIS_URL, namespace=NAMESPACE)
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name=QUEUE)
def noop() -> None:
    broker.client.incr(DONE_KEY)


async def submit(request: Request) -> Response:
    await request.json()
    message = noop.send()
    return JSONResponse({"id": message.message_id, "state": "pending"}, status_code=202)


app = Starlette(routes=[Route("/jobs", submit, methods=["POST"])])


def prefill(n: int) -> None:
    """Enqueue ``n`` noop messages from this process (one ``send()`` each: a Lua script call)."""
    for _ in range(n):
        noop.send()
