"""The job service: parts with one job each, put together by :func:`open_service`.

::

    open_service(settings)                          the one composition root
      store = open_store(--db)
      nursery
       |- Runner        channel + N workers + claim loop         (runner.py)
       |                 '- each attempt: run_attempt -> Outcome  (executor.py)
       |- Recorder      group-commits outcomes, fenced            (recorder.py)
       '- Maintenance   heartbeat, rescue, prune                  (maintenance.py)
      yields JobService  the facade the HTTP layer calls          (facade.py)

Shared between them: the :class:`~.attempts.Attempts` table (one record per attempt, keyed
by job id and lease token), the :class:`~.shutdown.Shutdown` state, and the long-poll
:class:`~.waiters.Waiters`.

A job's one route: submitted -> committed (claimed at insert when a worker is idle, else
pending until the claim loop claims it) -> an attempt in the channel -> a worker runs it ->
its outcome goes to the recorder, and the worker takes its next job -> the outcome is
committed (the lease is held until then) -> final, or retrying until due, then claimed again.

Stopping: leaving ``open_service`` (or ``Shutdown.begin()``) drains: no new work, running
handlers get ``grace`` seconds, then are cancelled and their jobs released; the runner
stops, then the recorder once every outcome is written, then maintenance; ``stopped``.
"""

from __future__ import annotations

import os
import random
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import trio

from ..clock import Clock, SystemClock
from ..config import Settings
from ..retry import Rng
from ..store import Store, open_store
from ..tasks import Registry
from .attempts import Attempt, Attempts, Phase
from .facade import JobService, Submitted
from .instrumented import InstrumentedStore
from .maintenance import Maintenance
from .observer import LogObserver, NullObserver, Observer, Observers
from .recorder import Recorder
from .runner import Runner
from .shutdown import Shutdown
from .waiters import Waiters

__all__ = [
    "Attempt",
    "Attempts",
    "JobService",
    "LogObserver",
    "NullObserver",
    "Observer",
    "Observers",
    "Phase",
    "Shutdown",
    "Submitted",
    "default_owner",
    "open_service",
]


def default_owner() -> str:
    """A lease owner unique to this process start: host, pid and a random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


async def _release_waiters(shutdown: Shutdown, waiters: Waiters) -> None:
    """Long polls return at once when the drain begins."""
    await shutdown.requested.wait()
    waiters.notify_all()


async def _settle(shutdown: Shutdown, runner: Runner, recorder: Recorder) -> None:
    """``shutdown.settled``: every outcome written; only written-off handlers may still run."""
    await runner.done.wait()
    await recorder.done.wait()
    shutdown.settled.set()


@asynccontextmanager
async def open_service(
    settings: Settings,
    *,
    registry: Registry | None = None,
    store: Store | None = None,
    clock: Clock | None = None,
    rng: Rng = random.uniform,
    owner: str | None = None,
    observer: Observer | None = None,
    shutdown: Shutdown | None = None,
) -> AsyncIterator[JobService]:
    """Open the store (unless one is given), start every part, yield the facade; on exit,
    drain (see the module docstring) and close the store.

    A ``shutdown`` made by the caller lets it begin the drain before this returns (a
    signal during start-up): the service then starts nothing and yields a stopped service.
    """
    registry = registry or Registry.from_modules(settings.tasks)
    clock = clock or SystemClock()
    owner = owner or default_owner()
    # Job events are always logged; the caller's observer (metrics) sees everything too.
    observer = Observers(LogObserver(), observer or NullObserver())
    shutdown = shutdown or Shutdown(grace=settings.grace, drain_delay=settings.drain_delay)
    async with AsyncExitStack() as stack:
        if store is None:
            store = await stack.enter_async_context(
                open_store(settings.database, migrate=settings.migrate, fsync_interval=settings.fsync_interval)
            )
        store = InstrumentedStore(store, observer)  # store operations timed for the observer
        attempts = Attempts(settings.workers)
        waiters = Waiters()
        recorder = Recorder(store, clock)
        runner = Runner(
            store=store,
            registry=registry,
            settings=settings,
            clock=clock,
            rng=rng,
            owner=owner,
            attempts=attempts,
            recorder=recorder,
            waiters=waiters,
            shutdown=shutdown,
            observer=observer,
        )
        maintenance = Maintenance(
            store=store,
            settings=settings,
            clock=clock,
            owner=owner,
            attempts=attempts,
            runner=runner,
            waiters=waiters,
            observer=observer,
        )
        service = JobService(
            store=store,
            registry=registry,
            settings=settings,
            clock=clock,
            owner=owner,
            runner=runner,
            attempts=attempts,
            waiters=waiters,
            shutdown=shutdown,
            observer=observer,
        )
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_release_waiters, shutdown, waiters)
                nursery.start_soon(_settle, shutdown, runner, recorder)
                await nursery.start(recorder.run)
                await nursery.start(maintenance.run, recorder.done)
                await nursery.start(runner.run)
                try:
                    yield service
                finally:
                    shutdown.begin()
        finally:
            shutdown.stopped.set()
