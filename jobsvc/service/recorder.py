"""The recorder: group-commits the outcomes of ended attempts.

A worker hands its attempt's outcome over with :meth:`Recorder.put` (no await) and takes
its next job. The recorder writes everything handed over since its last commit in one
store call (one transaction), each outcome fenced on its attempt, then calls each item's
``done`` with the job as written, or :data:`FENCED` (the attempt had lost its job), or
:data:`GAVE_UP` (the store stayed unavailable for ``deadline`` seconds: the attempt's lease
is then left to lapse and the job is rescued, so at-least-once still holds). Until then the
attempt's lease is held (heartbeats renew it), so a crash before the commit ends in a rescue,
never in a lost or doubled outcome.

While the store is unavailable the recorder retries with capped backoff and keeps taking
outcomes (memory grows by one small item per finished attempt; workers are never blocked).
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable

import attrs
import trio

from ..clock import Clock
from ..errors import StoreUnavailable
from ..models import Job
from ..store import Finished, Store

__all__ = ["FENCED", "GAVE_UP", "MAX_BATCH", "RECORD_DEADLINE", "RELEASE_DEADLINE", "Recorded", "Recorder"]

log = logging.getLogger("jobsvc")

#: Most outcomes written in one transaction.
MAX_BATCH = 1000
#: How long an outcome may wait for the store before it is given up (the job is rescued).
RECORD_DEADLINE = 30.0
#: How long the outcomes left at shutdown may take to be written.
RELEASE_DEADLINE = 5.0
#: Backoff between attempts while the store is unavailable.
RETRY_MIN, RETRY_MAX = 0.1, 5.0


class NotWritten(enum.Enum):
    FENCED = "fenced"  #: the attempt no longer held its job: nothing was written
    GAVE_UP = "gave-up"  #: the store stayed unavailable: left to a rescue


FENCED = NotWritten.FENCED
GAVE_UP = NotWritten.GAVE_UP
#: What an outcome's ``done`` receives.
Recorded = Job | NotWritten


@attrs.define(eq=False)
class _Item:
    finished: Finished
    done: Callable[[Recorded], None]
    since: float  #: trio time it was handed over


class Recorder:
    def __init__(self, store: Store, clock: Clock, *, deadline: float = RECORD_DEADLINE) -> None:
        self._store = store
        self._clock = clock
        self._deadline = deadline
        self._queue: list[_Item] = []
        self._more = trio.Event()
        self._close_deadline: float | None = None
        self._closed = trio.Event()
        #: set when the recorder has stopped (every outcome written or given up)
        self.done = trio.Event()
        #: transactions and outcomes written (for tests and benchmarks)
        self.commits = 0
        self.written = 0

    @property
    def pending(self) -> int:
        return len(self._queue)

    def put(self, finished: Finished, done: Callable[[Recorded], None]) -> None:
        """Hand an outcome over; ``done`` is called once it is written (or not)."""
        self._queue.append(_Item(finished, done, trio.current_time()))
        self._more.set()

    def close(self) -> None:
        """No more outcomes will come (the runner has stopped): write what is left, then
        stop; what the store refuses for RELEASE_DEADLINE seconds is given up."""
        if self._close_deadline is None:
            self._close_deadline = trio.current_time() + RELEASE_DEADLINE
            self._closed.set()
            self._more.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Write outcomes until closed and every outcome is written or given up."""
        task_status.started()
        failures = 0
        try:
            while self._queue or self._close_deadline is None:
                if not self._queue:
                    await self._more.wait()
                    self._more = trio.Event()
                    continue
                if await self._flush():
                    failures = 0
                else:
                    await trio.sleep(min(RETRY_MAX, RETRY_MIN * 2**failures))
                    failures += 1
        finally:
            if self._queue or self._close_deadline is None:
                # Cancelled before the end (the service itself was cancelled): wait a moment
                # for the workers to hand back their jobs, and try once to write them.
                with trio.CancelScope(shield=True) as last:
                    last.deadline = trio.current_time() + RELEASE_DEADLINE
                    await self._closed.wait()
                    while self._queue and await self._flush():
                        pass
                for item in self._queue:
                    item.done(GAVE_UP)
                self._queue.clear()
            self.done.set()

    async def _flush(self) -> bool:
        """One transaction for what is queued (up to MAX_BATCH); False if the store failed."""
        batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
        try:
            with trio.CancelScope(shield=True):
                written = await self._store.record([item.finished for item in batch])
        except Exception as exc:  # noqa: BLE001 - never lose the outcomes over one failure
            if isinstance(exc, StoreUnavailable):
                log.warning("recorder: store unavailable (%s); %d outcome(s) waiting", exc, len(batch) + len(self._queue))
            else:
                log.exception("recorder: unexpected error writing %d outcome(s)", len(batch))
            now = trio.current_time()
            keep = []
            for item in batch:
                if now - item.since >= self._deadline or (self._close_deadline is not None and now >= self._close_deadline):
                    item.done(GAVE_UP)
                else:
                    keep.append(item)
            self._queue[:0] = keep
            return False
        self.commits += 1
        self.written += len(batch)
        for item, job in zip(batch, written, strict=True):
            item.done(FENCED if job is None else job)
        return True

