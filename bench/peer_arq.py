"""Peer: arq on Redis.

* ``noop`` function; each run INCRs ``<namespace>:arq:done`` (one extra round trip per job),
  which is how the harness counts completions.
* ``app``: a Starlette front for uvicorn; ``POST /jobs`` reads the JSON body, ``await
  pool.enqueue_job("noop")`` and answers 202 with the job id.
* Worker: ``arq peer_arq.WorkerSettings`` with arq's defaults (``max_jobs`` 10, ``poll_delay``
  0.5 s, ``queue_read_limit`` max(5 * max_jobs, 100), results kept 3600 s) unless
  ``BENCH_ARQ_MAX_JOBS`` / ``BENCH_ARQ_POLL_DELAY`` say otherwise.

Configured by the environment: ``BENCH_REDIS_URL`` and ``BENCH_NAMESPACE``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from arq import create_pool
from arq.connections import RedisSettings
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

__all__ = ["DONE_KEY", "QUEUE", "REDIS", "WorkerSettings", "app", "noop", "prefill"]

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/11")
REDIS = RedisSettings.from_dsn(REDIS_URL)
NAMESPACE = os.environ.get("BENCH_NAMESPACE", "bench") + ":arq"
#: arq's queue is a sorted set; a job leaves it when it finishes, so its size is the jobs not finished.
QUEUE = f"{NAMESPACE}:queue"
DONE_KEY = f"{NAMESPACE}:done"


async def noop(ctx: dict[str, Any]) -> None:
    await ctx["redis"].incr(DONE_KEY)


def _overrides() -> dict[str, Any]:
    out: dict[str, Any] = {}
    if os.environ.get("BENCH_ARQ_MAX_JOBS"):
        out["max_jobs"] = int(os.environ["BENCH_ARQ_MAX_JOBS"])
    if os.environ.get("BENCH_ARQ_POLL_DELAY"):
        out["poll_delay"] = float(os.environ["BENCH_ARQ_POLL_DELAY"])
    return out


class WorkerSettings:
    functions = [noop]
    redis_settings = REDIS
    queue_name = QUEUE


for _name, _value in _overrides().items():
    setattr(WorkerSettings, _name, _value)


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    pool = await create_pool(REDIS, default_queue_name=QUEUE)
    app.state.pool = pool
    try:
        yield
    finally:
        await pool.aclose()


async def submit(request: Request) -> Response:
    await request.json()
    job = await request.app.state.pool.enqueue_job("noop")
    return JSONResponse({"id": job.job_id, "state": "pending"}, status_code=202)


app = Starlette(routes=[Route("/jobs", submit, methods=["POST"])], lifespan=lifespan)


def prefill(n: int, *, concurrency: int = 100) -> None:
    """Enqueue ``n`` noop jobs from this process (``enqueue_job``, ``concurrency`` at a time)."""

    async def run() -> None:
        pool = await create_pool(REDIS, default_queue_name=QUEUE)
        try:
            for start in range(0, n, concurrency):
                await asyncio.gather(*(pool.enqueue_job("noop") for _ in range(min(concurrency, n - start))))
        finally:
            await pool.aclose()

    asyncio.run(run())
