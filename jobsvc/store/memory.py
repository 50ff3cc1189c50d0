"""In-memory store: for tests and demos. It keeps nothing when the process ends.

It is a *verified fake*: the store contract suite runs against it exactly as against
SQLite and PostgreSQL, so service tests can use it under trio's MockClock. Its dialect is
plain dictionaries; an operation runs atomically (no checkpoint inside it) after a
checkpoint, as a serializable database would, and an undo log rolls back an operation that
raises.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from typing import TypeVar

import attrs
import trio

from .. import models
from ..models import Job, JobState
from .base import AttemptKey, ClaimRequest, Counts, Store, Tx, claim_found

__all__ = ["MemoryStore"]

T = TypeVar("T")
_CLAIMABLE = models.CLAIMABLE


def _key(job: Job) -> tuple[str | None, str]:
    """Idempotency keys are unique per tenant."""
    assert job.idempotency_key is not None
    return (job.tenant, job.idempotency_key)


class _MemoryTx:
    """The dialect over the store's dictionaries, with an undo log."""

    def __init__(self, store: MemoryStore) -> None:
        self._store = store
        self._undo: list[tuple[str, Job | None]] = []

    # -- writes go through _put / _delete, which keep the counts and the undo log ----------

    def _put(self, job: Job) -> None:
        jobs = self._store._jobs
        old = jobs.get(job.id)
        self._undo.append((job.id, old))
        self._store._apply(old, job)

    def rollback(self) -> None:
        for job_id, old in reversed(self._undo):
            current = self._store._jobs.get(job_id)
            self._store._apply(current, old, job_id=job_id)
        self._undo.clear()

    # -- the dialect -----------------------------------------------------------------------

    def insert(self, jobs: Sequence[Job]) -> list[Job | None]:
        stored: list[Job | None] = []
        for job in jobs:
            if job.id in self._store._jobs or (job.idempotency_key is not None and _key(job) in self._store._keys):
                stored.append(None)
                continue
            new = attrs.evolve(job, seq=next(self._store._seq))
            self._put(new)
            stored.append(new)
        return stored

    def existing(self, jobs: Sequence[Job]) -> list[Job | None]:
        found: list[Job | None] = []
        for job in jobs:
            holder = self._store._jobs.get(job.id)
            if holder is None and job.idempotency_key is not None:
                holder_id = self._store._keys.get(_key(job))
                holder = None if holder_id is None else self._store._jobs.get(holder_id)
            found.append(holder)
        return found

    def get(self, job_id: str, *, lock: bool = False) -> Job | None:
        return self._store._jobs.get(job_id)

    def update(self, pairs: Sequence[tuple[Job, Job]]) -> list[bool]:
        written = []
        for new, expected in pairs:
            current = self._store._jobs.get(expected.id)
            ok = (
                current is not None
                and current.state is expected.state
                and current.lease_token == expected.lease_token
                and current.cancel_requested == expected.cancel_requested
            )
            if ok:
                self._put(new)
            written.append(ok)
        return written

    def _claimable(self, tasks: Collection[str] | None) -> list[Job]:
        return [job for job in self._store._jobs.values() if job.state in _CLAIMABLE and (tasks is None or job.task in tasks)]

    def claim(self, request: ClaimRequest) -> list[Job]:
        return claim_found(self, self.due(now=request.now, limit=request.limit, tasks=request.tasks), request)

    def due(self, *, now: float, limit: int, tasks: Collection[str] | None) -> list[Job]:
        due = [job for job in self._claimable(tasks) if job.run_at <= now]
        due.sort(key=lambda j: (-j.priority, j.run_at, j.seq))
        return due[:limit]

    def next_run_at(self, *, tasks: Collection[str] | None) -> float | None:
        return min((job.run_at for job in self._claimable(tasks)), default=None)

    def running(self, *, expired_at: float | None) -> list[Job]:
        return [
            job
            for job in self._store._jobs.values()
            if job.state is JobState.RUNNING
            and (expired_at is None or (job.lease_expires_at is not None and job.lease_expires_at <= expired_at))
        ]

    def renew(self, *, owner: str, keys: Collection[AttemptKey], expires: float) -> dict[AttemptKey, bool]:
        renewed = {}
        for job_id, token in keys:
            job = self._store._jobs.get(job_id)
            if job is not None and job.state is JobState.RUNNING and job.lease_token == token and job.lease_owner == owner:
                self._put(attrs.evolve(job, lease_expires_at=expires))
                renewed[(job_id, token)] = job.cancel_requested
        return renewed

    def select(
        self, *, states: Collection[JobState], task: str | None, after: int | None, limit: int, tenant: str | None
    ) -> list[Job]:
        found = (
            job
            for job in sorted(self._store._jobs.values(), key=lambda j: j.seq)
            if (not states or job.state in states)
            and (task is None or job.task == task)
            and (after is None or job.seq > after)
            and (tenant is None or job.tenant == tenant)
        )
        return list(itertools.islice(found, limit))

    def counts(self, *, tenant: str | None) -> Counts:
        return Counts.from_rows(
            [(task, state.value, n) for (owner, task, state), n in self._store._counts.items() if tenant is None or owner == tenant]
        )

    def delete_finished(self, *, before: float, limit: int) -> int:
        old = [j for j in self._store._jobs.values() if j.is_final and j.finished_at is not None and j.finished_at < before][:limit]
        for job in old:
            self._undo.append((job.id, job))
            self._store._apply(job, None, job_id=job.id)
        return len(old)

    def notify(self) -> None:
        pass


class MemoryStore(Store):
    kind = "memory"
    exclusive = True

    def __init__(self) -> None:
        self._jobs: dict[str, Job] = {}
        #: (tenant, idempotency key) -> job id
        self._keys: dict[tuple[str | None, str], str] = {}
        #: (tenant, task, state) -> jobs
        self._counts: Counter[tuple[str | None, str, JobState]] = Counter()
        self._seq = itertools.count(1)

    def _apply(self, old: Job | None, new: Job | None, *, job_id: str | None = None) -> None:
        """Replace ``old`` by ``new`` (either may be None), keeping keys and counts."""
        if old is not None:
            self._counts[(old.tenant, old.task, old.state)] -= 1
            if old.idempotency_key is not None:
                self._keys.pop(_key(old), None)
        if new is None:
            self._jobs.pop(job_id or (old.id if old else ""), None)
            return
        self._jobs[new.id] = new
        self._counts[(new.tenant, new.task, new.state)] += 1
        if new.idempotency_key is not None:
            self._keys[_key(new)] = new.id

    async def _write(self, fn: Callable[[Tx], T], *, durable: bool = False) -> T:
        await trio.lowlevel.checkpoint()
        tx = _MemoryTx(self)
        try:
            return fn(tx)
        except BaseException:
            tx.rollback()
            raise

    async def _read(self, fn: Callable[[Tx], T]) -> T:
        await trio.lowlevel.checkpoint()
        return fn(_MemoryTx(self))
