"""Built-in tasks, always registered: useful on their own and for trying jobsvc out.

* ``noop``   does nothing; for benchmarks.
* ``echo``   returns its payload as the result.
* ``sleep``  sleeps ``{"seconds": S}`` (at most a day), honouring cancellation.
* ``fail``   always fails with ``{"message": "..."}``; watch retries and the dead-letter queue.
"""

from __future__ import annotations

from typing import Any

import attrs
import trio

from .tasks import JobContext, task

__all__ = ["echo", "fail", "noop", "sleep"]


@task("noop")
async def noop(payload: Any, ctx: JobContext) -> None:
    """Does nothing."""


@task("echo")
async def echo(payload: Any, ctx: JobContext) -> Any:
    """Returns its payload as the result."""
    return payload


@attrs.frozen
class SleepPayload:
    seconds: float = attrs.field(validator=[attrs.validators.ge(0), attrs.validators.le(86400)])


@task("sleep", payload=SleepPayload)
async def sleep(payload: SleepPayload, ctx: JobContext) -> dict[str, float]:
    """Sleeps for payload.seconds."""
    await trio.sleep(payload.seconds)
    return {"slept": payload.seconds}


@attrs.frozen
class FailPayload:
    message: str = "this task always fails"


class TaskFailed(Exception):
    pass


@task("fail", payload=FailPayload, max_attempts=3)
async def fail(payload: FailPayload, ctx: JobContext) -> None:
    """Always fails (three attempts, then the dead-letter queue)."""
    raise TaskFailed(payload.message)
