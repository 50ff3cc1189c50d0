"""The attempts this process holds: one record per attempt, keyed by (job id, lease token).

An attempt is created when its job is claimed (at insert, or by the claim loop) and
removed when its outcome is committed (or given up); meanwhile the heartbeat renews its
lease. It moves through three phases::

    queued (in the channel) --> running (a worker runs the handler) --> recording (its
    outcome waits for the recorder's commit) --> settled (removed)

Workers are busy while an attempt is queued or running; a recording attempt frees its
worker at once (the worker never waits for its outcome's commit). Claims reserve idle
workers before they go to the store, so two claimers never claim for the same worker.

Each attempt has its own cancel scope, made at the claim: a client's cancel or a lost lease
cancels exactly that attempt, before or while it runs, and never another attempt of the
same job.

Never two attempts of one job at once: a job claimed again under a new token (after
another instance took it back) means every older attempt of it here has lost its job. The
older attempt is stopped when the new one is added, and the new one starts only once the
old handler has returned (:meth:`Attempts.superseded`).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import attrs
import trio

from ..models import Job
from ..store import AttemptKey

__all__ = ["Attempt", "Attempts", "Phase"]


class Phase(enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    RECORDING = "recording"


@attrs.define(eq=False)
class Attempt:
    job: Job  #: the job as claimed (running, with this attempt's lease token)
    phase: Phase = Phase.QUEUED
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    #: the job's lease was lost (rescued elsewhere): nothing this attempt does can be written
    lost: bool = False
    #: why ``scope`` was cancelled on purpose ("cancelled", "lost"); None: not on purpose (a
    #: cancel of the scope without a reason is its deadline, the attempt's timeout)
    stop_reason: str | None = None
    stopped_at: float | None = None  #: trio time of the first stop()
    started_at: float | None = None  #: trio time the handler started
    timeout: float | None = None  #: the attempt's time limit, in seconds (set when it starts)
    ended_at: float | None = None  #: trio time the handler ran to an outcome
    #: set when the handler has returned (or never ran), or was written off: the attempt no
    #: longer runs code that holds its job
    ended: trio.Event = attrs.field(factory=trio.Event)
    #: its handler ignored its cancellation: the outcome was decided without it, and its
    #: worker was replaced (see :meth:`jobsvc.service.runner.Runner.write_off`)
    written_off: bool = False
    #: called after the first stop(): the runner watches stopped attempts end
    on_stop: Callable[[], None] | None = None

    @property
    def key(self) -> AttemptKey:
        return (self.job.id, self.job.lease_token)

    def stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
            self.stopped_at = trio.current_time()
            if self.on_stop is not None:
                self.on_stop()
        self.scope.cancel()


class Attempts:
    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._table: dict[AttemptKey, Attempt] = {}
        #: the same attempts by job id (nearly always one each), for add() and superseded()
        self._by_job: dict[str, list[Attempt]] = {}
        self._reserved = 0
        #: given to every new attempt as its ``on_stop``
        self.on_stop: Callable[[], None] | None = None

    def __len__(self) -> int:
        return len(self._table)

    def __iter__(self) -> Iterator[Attempt]:
        return iter(list(self._table.values()))

    def get(self, key: AttemptKey) -> Attempt | None:
        return self._table.get(key)

    def busy(self) -> int:
        """Workers taken: attempts queued or running."""
        return sum(1 for a in self._table.values() if a.phase is not Phase.RECORDING)

    def idle(self) -> int:
        """Workers free for a new claim."""
        return self.workers - self.busy() - self._reserved

    @contextmanager
    def reserve(self, wanted: int) -> Iterator[int]:
        """Reserve up to ``wanted`` idle workers while a claim is under way; the attempts
        added meanwhile take their place before the reservation ends."""
        n = max(0, min(wanted, self.idle()))
        self._reserved += n
        try:
            yield n
        finally:
            self._reserved -= n

    def add(self, job: Job) -> Attempt:
        """A new attempt, queued; older attempts of the same job have lost it: stopped."""
        same_job = self._by_job.setdefault(job.id, [])
        for old in same_job:
            if old.job.lease_token < job.lease_token:
                self.lose(old.key)
        attempt = Attempt(job, on_stop=self.on_stop)
        replaced = self._table.get(attempt.key)
        if replaced is not None:
            same_job.remove(replaced)
        self._table[attempt.key] = attempt
        same_job.append(attempt)
        return attempt

    def superseded(self, attempt: Attempt) -> list[Attempt]:
        """Older attempts of the same job whose handler has not returned yet."""
        token = attempt.job.lease_token
        return [old for old in self._by_job.get(attempt.job.id, ()) if old.job.lease_token < token and not old.ended.is_set()]

    def settle(self, attempt: Attempt) -> None:
        """The attempt is over for this process (outcome written, fenced, or given up)."""
        if self._table.get(attempt.key) is attempt:
            del self._table[attempt.key]
            same_job = self._by_job[attempt.job.id]
            same_job.remove(attempt)
            if not same_job:
                del self._by_job[attempt.job.id]

    def cancel(self, key: AttemptKey) -> bool:
        """Cancel one attempt (a client asked); True if this process holds it."""
        attempt = self._table.get(key)
        if attempt is None or attempt.lost:
            return False
        attempt.stop("cancelled")
        return True

    def lose(self, key: AttemptKey) -> Attempt | None:
        """The attempt's job was taken back (its lease lapsed): stop it; its outcome, if any,
        is not written. Returns the attempt if it was not known to be lost yet."""
        attempt = self._table.get(key)
        if attempt is None or attempt.lost:
            return None
        attempt.lost = True
        attempt.stop("lost")
        return attempt
