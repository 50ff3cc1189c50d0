"""Task handlers used by the tests (registered with ``--tasks testtasks``)."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import attrs
import trio

from jobsvc.retry import Backoff
from jobsvc.tasks import JobContext, PermanentError, task


@attrs.frozen
class Flaky:
    fail_times: int = 0  #: attempts 1..fail_times raise; later ones succeed


class Boom(Exception):
    pass


@task("flaky", payload=Flaky, max_attempts=5)
async def flaky(payload: Flaky, ctx: JobContext) -> dict[str, int]:
    """Fails its first fail_times attempts, then succeeds."""
    if ctx.attempt <= payload.fail_times:
        raise Boom(f"failure {ctx.attempt} of {payload.fail_times}")
    return {"attempt": ctx.attempt}


@task("hang", timeout=10, max_attempts=2, backoff=Backoff(base=1, cap=1, jitter=False))
async def hang(payload: Any, ctx: JobContext) -> None:
    """Never finishes on its own."""
    await trio.sleep_forever()


@attrs.frozen
class Nap:
    seconds: float


@task("nap", payload=Nap)
async def nap(payload: Nap, ctx: JobContext) -> dict[str, float]:
    """Sleeps, then returns."""
    await trio.sleep(payload.seconds)
    return {"slept": payload.seconds}


@task("permanent")
async def permanent(payload: Any, ctx: JobContext) -> None:
    """Raises PermanentError: dead at once."""
    raise PermanentError("this can never work")


@task("unserializable")
async def unserializable(payload: Any, ctx: JobContext) -> object:
    """Returns something that is not JSON."""
    return object()


@task("surrogate_result", max_attempts=1)
async def surrogate_result(payload: Any, ctx: JobContext) -> str:
    """Returns a str holding a lone surrogate (what os.fsdecode gives for a non-UTF-8 name)."""
    return "caf\udce9.txt"


@task("surrogate_error", max_attempts=1)
async def surrogate_error(payload: Any, ctx: JobContext) -> None:
    """Raises an error whose message holds a lone surrogate."""
    raise FileNotFoundError("no such file: caf\udce9.txt")


@task("nursery_hang", max_attempts=2)
async def nursery_hang(payload: Any, ctx: JobContext) -> None:
    """Waits forever inside its own nursery (cancellation arrives as an exception group)."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.sleep_forever)
        nursery.start_soon(trio.sleep_forever)


class CleanupFailed(Exception):
    pass


async def _fails_on_cancel() -> None:
    try:
        await trio.sleep_forever()
    finally:
        raise CleanupFailed("cleanup failed while being cancelled")


@task("messy_nursery", timeout=2, max_attempts=1)
async def messy_nursery(payload: Any, ctx: JobContext) -> None:
    """A nursery whose child raises while being cancelled: the group holds our Cancelled
    and an ordinary error."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.sleep_forever)
        nursery.start_soon(_fails_on_cancel)


_first_runs: set[str] = set()


@task("slow_first_failure")
async def slow_first_failure(payload: Any, ctx: JobContext) -> str:
    """The first run of a job id fails permanently after 1.2 s; later runs succeed after 0.1 s."""
    if ctx.job_id not in _first_runs:
        _first_runs.add(ctx.job_id)
        await trio.sleep(1.2)
        raise PermanentError("the first run fails")
    await trio.sleep(0.1)
    return "ok"


@task("raise_base", max_attempts=2, backoff=Backoff(base=1, cap=1, jitter=False))
async def raise_base(payload: str, ctx: JobContext) -> None:
    """Raises the BaseException named by the payload (SystemExit, KeyboardInterrupt...)."""
    kinds: dict[str, type[BaseException]] = {
        "SystemExit": SystemExit,
        "KeyboardInterrupt": KeyboardInterrupt,
        "GeneratorExit": GeneratorExit,
        "BaseException": BaseException,
    }
    raise kinds[payload]("raised by the handler")


#: (lease token, event, trio time) of every run of the "tracked" task.
RUNS: list[tuple[int, str, float]] = []


@attrs.frozen
class Tracked:
    seconds: float


@task("tracked", payload=Tracked)
async def tracked(payload: Tracked, ctx: JobContext) -> dict[str, int]:
    """Sleeps, recording when each attempt starts, is cancelled and ends."""
    RUNS.append((ctx.lease_token, "start", trio.current_time()))
    try:
        await trio.sleep(payload.seconds)
    except trio.Cancelled:
        RUNS.append((ctx.lease_token, "cancelled", trio.current_time()))
        raise
    RUNS.append((ctx.lease_token, "end", trio.current_time()))
    return {"token": ctx.lease_token}


# -- sync handlers: in a thread, and in a worker process (tests/service/test_handlers.py) --

#: The "blocking" handler waits for this (a test sets it to let the abandoned thread end).
RELEASE = threading.Event()


@task("in_thread")
def in_thread(payload: Any, ctx: JobContext) -> dict[str, Any]:
    """A plain def: runs in a thread, not on the event loop."""
    return {"in_a_thread": threading.current_thread() is not threading.main_thread(), "job": ctx.job_id}


@task("blocking", timeout=0.5, max_attempts=1)
def blocking(payload: Any, ctx: JobContext) -> str:
    """Blocks its thread until RELEASE is set (or 30 s)."""
    RELEASE.wait(30)
    return "released"


@task("in_process", payload=Nap, process=True)
def in_process(payload: Nap, ctx: JobContext) -> dict[str, Any]:
    """Runs in a worker process; its payload is validated there."""
    return {"pid": os.getpid(), "seconds": payload.seconds, "attempt": ctx.attempt}


@task("process_fails", process=True, max_attempts=1)
def process_fails(payload: Any, ctx: JobContext) -> None:
    """Raises in the worker process."""
    if payload == "permanent":
        raise PermanentError("never in the worker process")
    raise ValueError(f"bad payload {payload!r}")


@task("process_stuck", process=True, timeout=0.5, max_attempts=1)
def process_stuck(payload: Any, ctx: JobContext) -> None:
    """Never returns on its own (a C-level sleep)."""
    time.sleep(60)


@task("deaf", timeout=5, max_attempts=1)
async def deaf(payload: float, ctx: JobContext) -> str:
    """Ignores its cancellation for ``payload`` seconds (a shielded sleep stands in for a
    blocking call trio cannot interrupt), then returns."""
    with trio.CancelScope(shield=True):
        await trio.sleep(payload)
    return "finally"
