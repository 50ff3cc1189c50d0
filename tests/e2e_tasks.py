"""Task handlers for the end-to-end tests (``jobsvc serve --tasks e2e_tasks``, with ``tests/``
on ``PYTHONPATH``).

``ledger`` sleeps ``seconds``, then appends ``job_id,attempt`` to the file ``path`` with one
``O_APPEND`` write, so a test can count executions across crashes and restarts.
"""

from __future__ import annotations

import os
import time
from typing import Any

import attrs
import trio

from jobsvc.tasks import JobContext, task

__all__ = ["LedgerPayload", "ledger", "read_ledger"]


@attrs.frozen
class LedgerPayload:
    path: str
    seconds: float = attrs.field(default=0.0, validator=[attrs.validators.ge(0), attrs.validators.le(60)])


@task("ledger", payload=LedgerPayload)
async def ledger(payload: LedgerPayload, ctx: JobContext) -> dict[str, int]:
    """Sleeps, then records one execution (job id, attempt) in the ledger file."""
    await trio.sleep(payload.seconds)
    line = f"{ctx.job_id},{ctx.attempt}\n".encode()
    fd = os.open(payload.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)  # one small write: whole lines even under SIGKILL
    finally:
        os.close(fd)
    return {"attempt": ctx.attempt}


def read_ledger(path: str | os.PathLike[str]) -> dict[str, int]:
    """job id -> number of recorded executions (a missing file means none)."""
    counts: dict[str, int] = {}
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                job_id, _, _attempt = line.strip().rpartition(",")
                counts[job_id] = counts.get(job_id, 0) + 1
    except FileNotFoundError:
        pass
    return counts


@task("uncancellable", max_attempts=1)
async def uncancellable(payload: Any, ctx: JobContext) -> None:
    """Blocks a thread trio may not abandon: the attempt cannot be cancelled."""
    await trio.to_thread.run_sync(time.sleep, 120)


@task("blocks_loop_when_cancelled", max_attempts=1)
async def blocks_loop_when_cancelled(payload: Any, ctx: JobContext) -> None:
    """Once cancelled, blocks the event loop itself (nothing in trio can run meanwhile)."""
    try:
        await trio.sleep_forever()
    finally:
        time.sleep(60)  # noqa: ASYNC251 - the point of the test
