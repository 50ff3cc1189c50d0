"""Peer: procrastinate on PostgreSQL.

* ``noop`` task; completions are counted from procrastinate's own ``procrastinate_jobs``
  table (``status = 'succeeded'``), so the task itself does nothing.
* ``app``: a Starlette front for uvicorn; ``POST /jobs`` reads the JSON body, ``await
  noop.defer_async()`` through a ``PsycopgConnector`` pool opened in the lifespan, and answers
  202 with the job id.
* Worker: ``procrastinate --app=peer_procrastinate.app worker --concurrency C``
  (procrastinate's default concurrency is 1).

Configured by the environment: ``BENCH_PG_URL`` (a throwaway database holding procrastinate's
schema).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import procrastinate
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

__all__ = ["PG_URL", "app", "noop", "prefill", "web"]

PG_URL = os.environ.get("BENCH_PG_URL", "postgresql://root@127.0.0.1:5432/bench_procrastinate")

app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=PG_URL))


@app.task(name="noop")
async def noop() -> None:
    """Does nothing."""


@asynccontextmanager
async def lifespan(web: Starlette) -> AsyncIterator[None]:
    async with app.open_async():
        yield


async def submit(request: Request) -> Response:
    await request.json()
    job_id = await noop.defer_async()
    return JSONResponse({"id": job_id, "state": "pending"}, status_code=202)


web = Starlette(routes=[Route("/jobs", submit, methods=["POST"])], lifespan=lifespan)


def prefill(n: int, *, chunk: int = 1000) -> None:
    """Defer ``n`` noop jobs from this process (``batch_defer_async``, ``chunk`` per statement)."""

    async def run() -> None:
        async with app.open_async():
            for start in range(0, n, chunk):
                await noop.batch_defer_async(*({} for _ in range(min(chunk, n - start))))

    asyncio.run(run())
