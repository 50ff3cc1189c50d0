"""The store contract: what every job store (memory, SQLite, PostgreSQL) must do.

The store is the queue of record; the service's memory channel is only a hint. Every
method is atomic: it commits before it returns, or raises and changes nothing. A store
raises :class:`~jobsvc.errors.StoreUnavailable` for transient trouble (a locked database,
a lost connection) so callers can answer 503 or back off, never a 500.

Transitions are computed with the pure functions of :mod:`jobsvc.models` and written
*fenced*: ``save(new, expected=old)`` changes the row only if it still has ``old``'s state
and lease token. ``claim_due`` is the only transition done in bulk by the store itself; it
must give exactly what :func:`jobsvc.models.claim` gives.

``tests/store/test_contract.py`` runs one suite against every implementation.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Collection, Sequence

import attrs
import trio

from ..errors import Conflict
from ..models import Job, JobState

__all__ = ["InsertResult", "Store", "check_conflicts"]


@attrs.frozen
class InsertResult:
    job: Job  #: the stored job: the new one, or the one already holding that id/key
    created: bool  #: False when the id or idempotency key already existed


def check_conflicts(jobs: Sequence[Job], results: Sequence[InsertResult]) -> None:
    """Raise Conflict if a job's id or key is taken by a job submitted with another body.
    Stores call it inside the insert transaction, so a conflicting batch inserts nothing."""
    for job, result in zip(jobs, results, strict=True):
        if not result.created and result.job.fingerprint != job.fingerprint:
            what = f"id {job.id!r}" if result.job.id == job.id else f"Idempotency-Key {job.idempotency_key!r}"
            raise Conflict(f"a job with {what} exists with a different body (job {result.job.id})")


class Store(abc.ABC):
    #: True when this process is the only user of the store (memory, SQLite): at start-up,
    #: every ``running`` job belongs to a process that is gone and can be rescued at once.
    exclusive: bool = True
    #: Short name for logs and /ready ("memory", "sqlite", "postgresql").
    kind: str = "store"

    @abc.abstractmethod
    async def insert(self, jobs: Sequence[Job]) -> list[InsertResult]:
        """Insert new jobs in one transaction, in order. A job whose ``id`` or (non-null)
        ``idempotency_key`` is already stored is not inserted: its result carries the stored
        job and ``created=False``. ``seq`` is assigned by the store. If such a stored job
        has another ``fingerprint`` (another body), raise Conflict and insert nothing
        (see :func:`check_conflicts`)."""

    @abc.abstractmethod
    async def get(self, job_id: str) -> Job | None: ...

    @abc.abstractmethod
    async def list_jobs(
        self,
        *,
        states: Collection[JobState] = (),
        task: str | None = None,
        after: int | None = None,
        limit: int = 100,
    ) -> list[Job]:
        """Jobs in ``seq`` order with ``seq > after``, filtered by state and task."""

    @abc.abstractmethod
    async def claim_due(
        self,
        *,
        owner: str,
        now: float,
        lease: float,
        limit: int,
        tasks: Collection[str] | None = None,
    ) -> list[Job]:
        """Claim up to ``limit`` due jobs (pending or retrying, ``run_at <= now``, task in
        ``tasks`` if given) in one transaction, highest ``priority`` first, then ``run_at``,
        then ``seq``. Concurrent callers never claim the same job."""

    @abc.abstractmethod
    async def claim(self, job_id: str, *, owner: str, now: float, lease: float) -> Job | None:
        """Claim one given job if it is still claimable and due; None otherwise."""

    @abc.abstractmethod
    async def save(self, new: Job, *, expected: Job) -> bool:
        """Write ``new`` if the stored row still has ``expected``'s state and lease token.
        Returns False (and changes nothing) when it does not: the fence held."""

    @abc.abstractmethod
    async def modify(self, job_id: str, change: Callable[[Job], Job]) -> Job:
        """Read-modify-write one job in one transaction: ``change`` is a pure transition
        (it may raise IllegalTransition, which rolls back). Raises JobNotFound."""

    @abc.abstractmethod
    async def heartbeat(self, *, owner: str, now: float, lease: float, job_ids: Collection[str]) -> dict[str, bool]:
        """Extend, in one statement, the leases of the given jobs that are still running
        with ``owner``. Returns ``{id: cancel_requested}`` for the renewed ones: a held job
        missing from it has lost its lease (it was rescued; someone else may run it).
        Only the jobs a process really holds are renewed, so a job whose outcome could not
        be written is not kept alive forever: its lease lapses and it is rescued."""

    @abc.abstractmethod
    async def rescue(self, *, now: float, max_rescues: int, expired_only: bool = True) -> list[Job]:
        """Take back running jobs whose lease expired (or all running jobs when
        ``expired_only`` is False: start-up of an exclusive store), through
        :func:`jobsvc.models.rescue`. Returns the rescued jobs as they now are."""

    @abc.abstractmethod
    async def next_run_at(self, *, tasks: Collection[str] | None = None) -> float | None:
        """The earliest ``run_at`` of a claimable job, or None if there is none."""

    @abc.abstractmethod
    async def count_by_state(self) -> dict[JobState, int]: ...

    @abc.abstractmethod
    async def prune(self, *, finished_before: float) -> int:
        """Delete final jobs finished before the given time; returns how many."""

    async def wait_for_work(self) -> None:
        """Return when another process may have made jobs claimable (PostgreSQL uses
        LISTEN/NOTIFY). A store used by one process only never returns: the service wakes
        its own dispatcher."""
        await trio.sleep_forever()

    async def ping(self) -> None:
        """Raise StoreUnavailable if the store cannot serve requests right now."""
        await self.count_by_state()

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release resources; the store is unusable afterwards."""
