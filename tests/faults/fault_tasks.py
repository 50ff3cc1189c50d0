"""Task handlers for the fault campaign (``jobsvc serve --tasks fault_tasks``, with
``tests/faults`` on ``PYTHONPATH``).

``runlog`` records every execution in an append-only side file so the campaign can count runs
across crashes, restarts and several processes. Each line is one ``O_APPEND`` write followed
by ``fsync`` (whole lines even under SIGKILL and with several writers)::

    S <job_id> <attempt> <lease_token> <pid> <epoch>            an execution started
    E <job_id> <attempt> <lease_token> <pid> <epoch> ok|fail    it ended

The other tasks misbehave on purpose (scenario 6): they raise every kind of exception, block
in a thread, return or raise enormous values.
"""

from __future__ import annotations

import os
import time
from typing import Any

import attrs
import trio

from jobsvc.tasks import JobContext, task

__all__ = ["Run", "read_runs"]


# ----------------------------------------------------------------------------- runlog


@attrs.frozen
class RunlogPayload:
    path: str
    seconds: float = attrs.field(default=0.0, validator=[attrs.validators.ge(0), attrs.validators.le(60)])
    #: the first ``fail_attempts`` attempts fail (a transient error), later ones succeed
    fail_attempts: int = 0
    pad: str = ""  #: ballast, to make payloads as large as a scenario wants


class TransientError(Exception):
    pass


def _append(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


@task("runlog", payload=RunlogPayload)
async def runlog(payload: RunlogPayload, ctx: JobContext) -> dict[str, int]:
    """Records its start, sleeps ``seconds``, fails or succeeds, records its end."""
    head = f"{ctx.job_id} {ctx.attempt} {ctx.lease_token} {os.getpid()}"
    await trio.to_thread.run_sync(_append, payload.path, f"S {head} {time.time():.6f}\n")
    await trio.sleep(payload.seconds)
    if ctx.attempt <= payload.fail_attempts:
        await trio.to_thread.run_sync(_append, payload.path, f"E {head} {time.time():.6f} fail\n")
        raise TransientError(f"transient failure of attempt {ctx.attempt}")
    await trio.to_thread.run_sync(_append, payload.path, f"E {head} {time.time():.6f} ok\n")
    return {"attempt": ctx.attempt, "pid": os.getpid()}


@attrs.define
class Run:
    job_id: str
    attempt: int
    token: int
    pid: int
    start: float
    end: float | None = None
    outcome: str | None = None  #: "ok", "fail", or None (cut off)


def read_runs(path: str | os.PathLike[str]) -> dict[str, list[Run]]:
    """job id -> its executions, in start order."""
    runs: dict[str, list[Run]] = {}
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return {}
    for line in lines:
        parts = line.split()
        kind, job_id, attempt, token, pid, at = parts[:6]
        if kind == "S":
            runs.setdefault(job_id, []).append(Run(job_id, int(attempt), int(token), int(pid), float(at)))
            continue
        for run in reversed(runs.get(job_id, [])):
            if run.token == int(token) and run.pid == int(pid) and run.end is None:
                run.end, run.outcome = float(at), parts[6]
                break
        else:
            raise AssertionError(f"an end without a start in the run log: {line!r}")
    for job_runs in runs.values():
        job_runs.sort(key=lambda r: r.start)
    return runs


# ----------------------------------------------------------------------------- misbehaving handlers
# Each takes no payload (any JSON). Attempts are few and the backoff short so that every job
# reaches a final state within seconds.

FEW = {"max_attempts": 2}


class CustomError(Exception):
    pass


class NotAnException(BaseException):
    """A BaseException subclass that is neither Exception nor a trio/system one."""


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("__str__ is broken")

    def __repr__(self) -> str:
        raise RuntimeError("__repr__ is broken too")


@task("raise_exception", **FEW)
async def raise_exception(payload: Any, ctx: JobContext) -> None:
    """ValueError."""
    raise ValueError("a plain ValueError")


@task("raise_custom", **FEW)
async def raise_custom(payload: Any, ctx: JobContext) -> None:
    """An Exception subclass."""
    raise CustomError("a custom Exception subclass")


@task("raise_systemexit", **FEW)
async def raise_systemexit(payload: Any, ctx: JobContext) -> None:
    """SystemExit (sys.exit(3) in a handler)."""
    raise SystemExit(3)


@task("raise_keyboardinterrupt", **FEW)
async def raise_keyboardinterrupt(payload: Any, ctx: JobContext) -> None:
    """KeyboardInterrupt."""
    raise KeyboardInterrupt


@task("raise_generatorexit", **FEW)
async def raise_generatorexit(payload: Any, ctx: JobContext) -> None:
    """GeneratorExit."""
    raise GeneratorExit


@task("raise_baseexception", **FEW)
async def raise_baseexception(payload: Any, ctx: JobContext) -> None:
    """A bare BaseException subclass."""
    raise NotAnException("a BaseException that is not an Exception")


@task("raise_unprintable", **FEW)
async def raise_unprintable(payload: Any, ctx: JobContext) -> None:
    """An exception whose __str__ and __repr__ raise."""
    raise Unprintable()


@task("raise_group", **FEW)
async def raise_group(payload: Any, ctx: JobContext) -> None:
    """An exception group from a nursery with two failing children."""

    async def boom(n: int) -> None:
        raise ValueError(f"child {n}")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(boom, 1)
        nursery.start_soon(boom, 2)


@attrs.frozen
class Seconds:
    seconds: float = attrs.field(default=60.0, validator=[attrs.validators.ge(0), attrs.validators.le(600)])


@task("block_thread", payload=Seconds, max_attempts=1)
async def block_thread(payload: Seconds, ctx: JobContext) -> str:
    """Blocks a worker thread: trio.to_thread.run_sync(time.sleep, seconds) (not cancellable)."""
    await trio.to_thread.run_sync(time.sleep, payload.seconds)
    return "woke up"


@task("block_loop", payload=Seconds, max_attempts=1)
async def block_loop(payload: Seconds, ctx: JobContext) -> str:
    """Blocks the event loop itself: time.sleep(seconds) with no await."""
    time.sleep(payload.seconds)  # noqa: ASYNC251 - the point of the test
    return "woke up"


@task("sleep_forever", max_attempts=2)
async def sleep_forever(payload: Any, ctx: JobContext) -> None:
    """Waits forever, honouring cancellation (the per-attempt timeout must end it)."""
    await trio.sleep_forever()


@attrs.frozen
class Size:
    mib: float = attrs.field(default=10.0, validator=[attrs.validators.ge(0), attrs.validators.le(64)])


def _ugly_text(mib: float) -> str:
    """``mib`` MiB of text with newlines, ANSI escapes, a fake log line and a fake traceback."""
    unit = (
        "line\n\x1b[31mRED\x1b[0m \x1b[2J\x1b[H cleared screen\r\n"
        "2099-01-01 00:00:00,000 CRITICAL jobsvc: forged log line\n"
        'Traceback (most recent call last):\n  File "/etc/passwd", line 1\n'
    )
    return (unit * (int(mib * 1024 * 1024) // len(unit) + 1))[: int(mib * 1024 * 1024)]


@task("huge_result", payload=Size, max_attempts=1)
async def huge_result(payload: Size, ctx: JobContext) -> str:
    """Returns a string of ``mib`` MiB."""
    return "x" * int(payload.mib * 1024 * 1024)


@task("huge_error", payload=Size, max_attempts=2)
async def huge_error(payload: Size, ctx: JobContext) -> None:
    """Raises an exception whose message is ``mib`` MiB of newlines and ANSI escapes."""
    raise CustomError(_ugly_text(payload.mib))


@task("bad_result", **FEW)
async def bad_result(payload: Any, ctx: JobContext) -> object:
    """Returns something that is not JSON (a set)."""
    return {1, 2, 3}
