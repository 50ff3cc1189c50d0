"""In-memory store: for tests and demos. It keeps nothing when the process ends.

It is a *verified fake*: the store contract suite runs against it exactly as against
SQLite and PostgreSQL, so service tests can use it under trio's MockClock.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Collection, Sequence

import attrs
import trio

from .. import models
from ..errors import JobNotFound
from ..models import Job, JobState
from .base import InsertResult, Store, check_conflicts

__all__ = ["MemoryStore"]

_CLAIMABLE = models.sources(models.Event.CLAIM)


class MemoryStore(Store):
    kind = "memory"
    exclusive = True

    def __init__(self) -> None:
        self._jobs: dict[str, Job] = {}
        self._keys: dict[str, str] = {}
        self._seq = itertools.count(1)

    async def insert(self, jobs: Sequence[Job]) -> list[InsertResult]:
        await trio.lowlevel.checkpoint()
        saved_jobs, saved_keys = dict(self._jobs), dict(self._keys)
        results = []
        for job in jobs:
            existing_id = job.id if job.id in self._jobs else None
            if existing_id is None and job.idempotency_key is not None:
                existing_id = self._keys.get(job.idempotency_key)
            if existing_id is not None:
                results.append(InsertResult(self._jobs[existing_id], created=False))
                continue
            stored = attrs.evolve(job, seq=next(self._seq))
            self._jobs[job.id] = stored
            if job.idempotency_key is not None:
                self._keys[job.idempotency_key] = job.id
            results.append(InsertResult(stored, created=True))
        try:
            check_conflicts(jobs, results)
        except BaseException:
            self._jobs, self._keys = saved_jobs, saved_keys
            raise
        return results

    async def get(self, job_id: str) -> Job | None:
        await trio.lowlevel.checkpoint()
        return self._jobs.get(job_id)

    async def list_jobs(
        self,
        *,
        states: Collection[JobState] = (),
        task: str | None = None,
        after: int | None = None,
        limit: int = 100,
    ) -> list[Job]:
        await trio.lowlevel.checkpoint()
        found = (
            job
            for job in sorted(self._jobs.values(), key=lambda j: j.seq)
            if (not states or job.state in states)
            and (task is None or job.task == task)
            and (after is None or job.seq > after)
        )
        return list(itertools.islice(found, limit))

    def _due(self, now: float, tasks: Collection[str] | None) -> list[Job]:
        due = [
            job
            for job in self._jobs.values()
            if job.state in _CLAIMABLE and job.run_at <= now and (tasks is None or job.task in tasks)
        ]
        due.sort(key=lambda j: (-j.priority, j.run_at, j.seq))
        return due

    async def claim_due(
        self,
        *,
        owner: str,
        now: float,
        lease: float,
        limit: int,
        tasks: Collection[str] | None = None,
    ) -> list[Job]:
        await trio.lowlevel.checkpoint()
        claimed = []
        for job in self._due(now, tasks)[:limit]:
            new = models.claim(job, owner=owner, now=now, lease=lease)
            self._jobs[job.id] = new
            claimed.append(new)
        return claimed

    async def claim(self, job_id: str, *, owner: str, now: float, lease: float) -> Job | None:
        await trio.lowlevel.checkpoint()
        job = self._jobs.get(job_id)
        if job is None or job.state not in _CLAIMABLE or job.run_at > now:
            return None
        new = models.claim(job, owner=owner, now=now, lease=lease)
        self._jobs[job_id] = new
        return new

    async def save(self, new: Job, *, expected: Job) -> bool:
        await trio.lowlevel.checkpoint()
        current = self._jobs.get(expected.id)
        if current is None or current.state is not expected.state or current.lease_token != expected.lease_token:
            return False
        self._jobs[new.id] = new
        return True

    async def modify(self, job_id: str, change: Callable[[Job], Job]) -> Job:
        await trio.lowlevel.checkpoint()
        job = self._jobs.get(job_id)
        if job is None:
            raise JobNotFound(f"no job has the id {job_id!r}")
        new = change(job)
        self._jobs[job_id] = new
        return new

    async def heartbeat(self, *, owner: str, now: float, lease: float, job_ids: Collection[str]) -> dict[str, bool]:
        await trio.lowlevel.checkpoint()
        renewed = {}
        for job_id in job_ids:
            job = self._jobs.get(job_id)
            if job is not None and job.state is JobState.RUNNING and job.lease_owner == owner:
                self._jobs[job_id] = attrs.evolve(job, lease_expires_at=now + lease)
                renewed[job_id] = job.cancel_requested
        return renewed

    async def rescue(self, *, now: float, max_rescues: int, expired_only: bool = True) -> list[Job]:
        await trio.lowlevel.checkpoint()
        rescued = []
        for job in list(self._jobs.values()):
            if job.state is not JobState.RUNNING:
                continue
            if expired_only and (job.lease_expires_at is None or job.lease_expires_at > now):
                continue
            new = models.rescue(job, now=now, max_rescues=max_rescues)
            self._jobs[job.id] = new
            rescued.append(new)
        return rescued

    async def next_run_at(self, *, tasks: Collection[str] | None = None) -> float | None:
        await trio.lowlevel.checkpoint()
        times = [
            job.run_at
            for job in self._jobs.values()
            if job.state in _CLAIMABLE and (tasks is None or job.task in tasks)
        ]
        return min(times, default=None)

    async def count_by_state(self) -> dict[JobState, int]:
        await trio.lowlevel.checkpoint()
        counts = dict.fromkeys(JobState, 0)
        for job in self._jobs.values():
            counts[job.state] += 1
        return counts

    async def prune(self, *, finished_before: float) -> int:
        await trio.lowlevel.checkpoint()
        old = [j for j in self._jobs.values() if j.is_final and j.finished_at is not None and j.finished_at < finished_before]
        for job in old:
            del self._jobs[job.id]
            if job.idempotency_key is not None:
                self._keys.pop(job.idempotency_key, None)
        return len(old)
