"""The store contract, and the operations every store shares.

Theory of operation
-------------------
The store is the queue of record. Every store (memory, SQLite, PostgreSQL) is two things:

* a *dialect*, :class:`Tx`: the few synchronous primitives one transaction can do (insert
  rows, read rows, write a row *fenced*, pick due jobs in claim order...). This is the only
  part written per store, and the only place where SQL lives;
* a *transaction runner*: ``_write(fn)`` and ``_read(fn)`` run ``fn(tx)`` as one atomic
  transaction (SQLite: the writer thread's group commit; PostgreSQL: a pooled connection in
  a worker thread; memory: directly, between two checkpoints).

The operations themselves (insert with idempotency, claim, record outcomes, rescue, modify)
are written once, below, on top of :class:`Tx`, and compute every state change with the
pure functions of :mod:`jobsvc.models`. So the three stores cannot disagree on semantics,
and ``tests/store/test_contract.py`` runs one suite against all three.

Fencing: ``Tx.update(new, expected)`` writes only if the row still has ``expected``'s
``(id, state, lease_token, cancel_requested)``. The first three fence out stale writers (an
old attempt, a rescuer that read an old row); the fourth is the one field a client changes
on a running job (a cancel request), so an outcome computed before that request is
recomputed from the current row instead of overwriting it.

Durability: ``_write(fn, durable=True)`` for what a client is answered about (a submission,
a cancel, a redrive) is on disk before it returns. Worker-side writes (outcomes, heartbeats,
rescues, and claims on an exclusive store) may be flushed up to ``fsync_interval`` seconds
later: a crash of the process loses nothing, a power loss may make the last moments'
attempts run again (at-least-once either way). Claims on a shared store are durable: lease
tokens must never repeat while another process may still hold the older attempt.

Counts by tenant, task and state are kept up to date in the same transactions (triggers in
the SQL stores), so admission control, ``/ready`` and ``/metrics`` never scan the jobs table.

Tenants: a job may carry the tenant of the key that submitted it. Idempotency keys are unique
per tenant; job ids are global. Operations that take ``tenant`` scope themselves to it, and
``tenant=None`` means "no scoping" (every tenant's jobs): a job of another tenant is not
found (``JobNotFound``), never "forbidden", so a key cannot learn that it exists.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from typing import Protocol, TypeVar

import attrs
import trio

from .. import models
from ..errors import Conflict, JobNotFound, StoreUnavailable
from ..models import Job, JobState

__all__ = [
    "AttemptKey",
    "ClaimRequest",
    "ClaimResult",
    "Counts",
    "Finished",
    "InsertResult",
    "Store",
    "Tx",
    "visible",
]

T = TypeVar("T")

#: Jobs deleted per transaction when pruning.
PRUNE_BATCH = 5000
#: An attempt is known by its job's id and the lease token of its claim.
AttemptKey = tuple[str, int]


@attrs.frozen
class InsertResult:
    job: Job  #: the stored job: the new one, or the one already holding that id/key
    created: bool  #: False when the id or idempotency key already existed


@attrs.frozen(kw_only=True)
class ClaimRequest:
    """A claim: up to ``limit`` due jobs (of ``tasks`` if given), leased to ``owner``."""

    owner: str
    now: float
    lease: float
    limit: int
    tasks: Collection[str] | None = None


@attrs.frozen
class ClaimResult:
    jobs: list[Job]  #: the claimed jobs, in claim order (running, leased to the claimer)
    #: when fewer jobs than asked were claimed: the earliest ``run_at`` among the claimable
    #: jobs left (None: there are none); when the claim was full: None (there may be more)
    next_run_at: float | None = None


@attrs.frozen
class Finished:
    """An attempt that ended: its job as it was claimed, how it ended, when (epoch seconds:
    the job's ``finished_at``, or the start of its retry delay) and, for a failure with
    attempts left, the retry policy's delay."""

    job: Job
    outcome: models.Outcome
    at: float
    delay: float | None = None


@attrs.frozen
class Counts:
    """Jobs by task and state (of one tenant, or of all), read in O(tenants x tasks x states)
    whatever the size of the table."""

    by_task: Mapping[str, Mapping[JobState, int]] = attrs.field(factory=dict)

    def by_state(self) -> dict[JobState, int]:
        totals = dict.fromkeys(JobState, 0)
        for states in self.by_task.values():
            for state, n in states.items():
                totals[state] += n
        return totals

    @property
    def waiting(self) -> int:
        """Jobs waiting to run: pending (due or scheduled) and retrying."""
        totals = self.by_state()
        return totals[JobState.PENDING] + totals[JobState.RETRYING]

    @classmethod
    def from_rows(cls, rows: Iterator[tuple[str, str, int]] | Sequence[tuple[str, str, int]]) -> Counts:
        """From ``(task, state, n)`` rows; rows of the same task and state add up."""
        by_task: dict[str, dict[JobState, int]] = {}
        for task, state, n in rows:
            if n:
                by_task.setdefault(task, dict.fromkeys(JobState, 0))[JobState(state)] += int(n)
        return cls(by_task)


class Tx(Protocol):
    """What one transaction can do. Synchronous: it runs in the store's thread."""

    def insert(self, jobs: Sequence[Job]) -> list[Job | None]:
        """Insert in order; each result is the stored job (with its ``seq``), or None when
        its id or (non-null) idempotency key is already taken (the row is not inserted)."""

    def existing(self, jobs: Sequence[Job]) -> list[Job | None]:
        """For each job, the stored job holding its id, or else its idempotency key in the
        job's tenant."""

    def get(self, job_id: str, *, lock: bool = False) -> Job | None:
        """One job; ``lock`` holds its row until the transaction ends (PostgreSQL)."""

    def update(self, pairs: Sequence[tuple[Job, Job]]) -> list[bool]:
        """Write each ``new`` whose row still has its ``expected``'s id, state, lease token
        and cancel flag (the fence); True for the rows written."""

    def claim(self, request: ClaimRequest) -> list[Job]:
        """Claim up to ``request.limit`` (> 0) claimable jobs with ``run_at <= now`` (of
        ``tasks`` if given), each written as :func:`jobsvc.models.claim` makes it; the
        claimed jobs in claim order: highest priority first, then ``run_at``, then ``seq``.
        Rows held by a concurrent transaction are skipped (SKIP LOCKED). The cost must not
        grow with the number of jobs waiting.

        The memory store finds the due jobs and writes :func:`claim_found`; the SQL
        stores write each priority level's claim in one statement, the SQL form of
        ``models.claim`` (the store contract suite checks that they agree)."""

    def next_run_at(self, *, tasks: Collection[str] | None) -> float | None:
        """The earliest ``run_at`` of a claimable job (of ``tasks`` if given)."""

    def running(self, *, expired_at: float | None) -> list[Job]:
        """Running jobs (whose lease expired at ``expired_at``, unless None), held for this
        transaction and skipped by concurrent ones."""

    def renew(self, *, owner: str, keys: Collection[AttemptKey], expires: float) -> dict[AttemptKey, bool]:
        """Extend the leases of the attempts named (still running, same token, leased to
        ``owner``) to ``expires``; ``{key: cancel_requested}`` for the renewed ones."""

    def select(
        self, *, states: Collection[JobState], task: str | None, after: int | None, limit: int, tenant: str | None
    ) -> list[Job]:
        """Jobs in ``seq`` order with ``seq > after``, filtered by state, task and tenant
        (None: any), with an index that keeps each filter a range scan in ``seq`` order."""

    def counts(self, *, tenant: str | None) -> Counts:
        """Jobs by task and state, of ``tenant`` (None: of every tenant)."""

    def delete_finished(self, *, before: float, limit: int) -> int:
        """Delete up to ``limit`` final jobs finished before ``before``; how many."""

    def notify(self) -> None:
        """Tell other instances that jobs may be claimable (PostgreSQL NOTIFY, on commit)."""


# -- the operations, written once ------------------------------------------------------


def check_conflicts(jobs: Sequence[Job], results: Sequence[InsertResult]) -> None:
    """Raise Conflict if a job's id or key is taken by a job submitted with another body.
    Run inside the insert transaction, so a conflicting batch inserts nothing."""
    for job, result in zip(jobs, results, strict=True):
        if result.created:
            continue
        if job.tenant is not None and result.job.tenant != job.tenant:
            # The id is taken outside the submitter's tenant (a job of a key without a tenant:
            # keys of a tenant choose ids in its own namespace, see JobService). Say nothing of
            # that job: not its tenant, not its body, not a replay of it.
            raise Conflict(f"the job id {job.id!r} is not available; choose another")
        if result.job.fingerprint != job.fingerprint:
            what = f"id {job.id!r}" if result.job.id == job.id else f"Idempotency-Key {job.idempotency_key!r}"
            raise Conflict(f"a job with {what} exists with a different body (job {result.job.id})")


def insert_jobs(tx: Tx, jobs: Sequence[Job]) -> list[InsertResult]:
    stored = tx.insert(jobs)
    clashes = [job for job, new in zip(jobs, stored, strict=True) if new is None]
    holders = iter(tx.existing(clashes) if clashes else [])
    results = []
    for new in stored:
        if new is not None:
            results.append(InsertResult(new, created=True))
            continue
        holder = next(holders)
        if holder is None:  # the holder vanished (pruned) between the two statements
            raise StoreUnavailable("a concurrent change got in the way of this insert; retry")
        results.append(InsertResult(holder, created=False))
    check_conflicts(jobs, results)  # raising rolls the transaction back
    if any(r.created and r.job.state in models.CLAIMABLE for r in results):
        tx.notify()
    return results


def _write_all(tx: Tx, pairs: Sequence[tuple[Job, Job]]) -> None:
    """Write rows this transaction holds (locked, or the only writer): the fence cannot fail."""
    if pairs and not all(tx.update(pairs)):  # pragma: no cover - a store bug
        raise RuntimeError("a row held by this transaction changed under it")


def claim_found(tx: Tx, due: Sequence[Job], request: ClaimRequest) -> list[Job]:
    """Claim ``due`` (jobs this transaction holds, in claim order) with models.claim."""
    claimed = [models.claim(job, owner=request.owner, now=request.now, lease=request.lease) for job in due]
    _write_all(tx, list(zip(claimed, due, strict=True)))
    return claimed


def claim_jobs(tx: Tx, request: ClaimRequest) -> ClaimResult:
    claimed = tx.claim(request) if request.limit > 0 else []
    next_at = None if len(claimed) == request.limit else tx.next_run_at(tasks=request.tasks)
    return ClaimResult(claimed, next_at)


def record_outcomes(tx: Tx, finished: Sequence[Finished]) -> list[Job | None]:
    """Write each attempt's outcome, fenced; None where the attempt no longer holds its job.
    An outcome computed from a row whose cancel flag changed meanwhile is recomputed from
    the current row (models.conclude decides: a requested cancel wins over a retry)."""
    first = [models.conclude(f.job, f.outcome, now=f.at, delay=f.delay) for f in finished]
    written = tx.update(list(zip(first, (f.job for f in finished), strict=True)))
    results: list[Job | None] = []
    for f, new, ok in zip(finished, first, written, strict=True):
        if ok:
            results.append(new)
            continue
        current = tx.get(f.job.id, lock=True)
        if current is not None and current.state is JobState.RUNNING and current.lease_token == f.job.lease_token:
            recomputed = models.conclude(current, f.outcome, now=f.at, delay=f.delay)
            _write_all(tx, [(recomputed, current)])
            results.append(recomputed)
        else:
            results.append(None)
    if any(job is not None and job.state is JobState.PENDING for job in results):  # released
        tx.notify()
    return results


def rescue_jobs(tx: Tx, *, now: float, max_rescues: int, expired_only: bool) -> list[Job]:
    old = tx.running(expired_at=now if expired_only else None)
    new = [models.rescue(job, now=now, max_rescues=max_rescues) for job in old]
    _write_all(tx, list(zip(new, old, strict=True)))
    if any(job.state in models.CLAIMABLE for job in new):
        tx.notify()
    return new


def visible(job: Job | None, tenant: str | None) -> bool:
    """Whether ``job`` exists for a caller scoped to ``tenant`` (None: to no tenant)."""
    return job is not None and (tenant is None or job.tenant == tenant)


def modify_job(tx: Tx, job_id: str, change: Callable[[Job], Job], *, tenant: str | None = None) -> Job:
    job = tx.get(job_id, lock=True)
    if job is None or not visible(job, tenant):  # another tenant's job: as if there were none
        raise JobNotFound(f"no job has the id {job_id!r}")
    new = change(job)  # a pure transition; raising (IllegalTransition) rolls back
    if new != job:
        _write_all(tx, [(new, job)])
        if new.state in models.CLAIMABLE:
            tx.notify()
    return new


# -- the contract ------------------------------------------------------------------------


class Store(abc.ABC):
    """The async API the service uses. Every method is atomic: it commits before it
    returns, or raises and changes nothing. Transient trouble (a locked database, a lost
    connection) is :class:`~jobsvc.errors.StoreUnavailable`, so callers answer 503 or back
    off, never 500."""

    #: True when this process is the only user of the store (memory, SQLite): at start-up,
    #: every ``running`` job belongs to a process that is gone and can be rescued at once,
    #: and every change to the jobs is made here (no polling for other writers).
    exclusive: bool = True
    #: Short name for logs and /ready ("memory", "sqlite", "postgresql").
    kind: str = "store"

    @abc.abstractmethod
    async def _write(self, fn: Callable[[Tx], T], *, durable: bool = False) -> T:
        """Run ``fn(tx)`` as one write transaction; ``durable``: on disk before returning."""

    @abc.abstractmethod
    async def _read(self, fn: Callable[[Tx], T]) -> T:
        """Run ``fn(tx)`` on a consistent snapshot (no writes)."""

    async def insert(self, jobs: Sequence[Job]) -> list[InsertResult]:
        """Insert new jobs in one durable transaction, in order (jobs may arrive already
        claimed, i.e. ``running``: the claim at insert). A job whose ``id`` or (non-null)
        ``idempotency_key`` is already stored is not inserted: its result carries the stored
        job and ``created=False``; if that job has another ``fingerprint`` (another body),
        raise Conflict and insert nothing."""
        if not jobs:
            return []
        return await self._write(lambda tx: insert_jobs(tx, jobs), durable=True)

    async def insert_and_claim(self, jobs: Sequence[Job], claim: ClaimRequest) -> tuple[list[InsertResult], ClaimResult]:
        """:meth:`insert`, then :meth:`claim` in the same durable transaction: a submission
        that finds idle workers and older due jobs waiting feeds the workers with those
        (in claim order) without a transaction of its own."""

        def both(tx: Tx) -> tuple[list[InsertResult], ClaimResult]:
            return insert_jobs(tx, jobs), claim_jobs(tx, claim)

        return await self._write(both, durable=True)

    async def find(self, jobs: Sequence[Job]) -> list[Job | None]:
        """The stored job holding each job's id (or else idempotency key), if any."""
        return await self._read(lambda tx: tx.existing(jobs))

    async def get(self, job_id: str) -> Job | None:
        return await self._read(lambda tx: tx.get(job_id))

    async def list_jobs(
        self,
        *,
        states: Collection[JobState] = (),
        task: str | None = None,
        after: int | None = None,
        limit: int = 100,
        tenant: str | None = None,
    ) -> list[Job]:
        """Jobs in ``seq`` order with ``seq > after``, filtered by state, task and tenant
        (None: every tenant's)."""
        return await self._read(lambda tx: tx.select(states=states, task=task, after=after, limit=limit, tenant=tenant))

    async def claim(self, *, owner: str, now: float, lease: float, limit: int, tasks: Collection[str] | None = None) -> ClaimResult:
        """Claim up to ``limit`` due jobs (of ``tasks`` if given) in one transaction,
        highest priority first, then ``run_at``, then ``seq``, exactly as
        :func:`jobsvc.models.claim` would. Concurrent callers never claim the same job."""
        request = ClaimRequest(owner=owner, now=now, lease=lease, limit=limit, tasks=tasks)
        # Durable where other processes live on when the database crashes (PostgreSQL): a
        # claim forgotten by a crash would let the next claim reuse its lease token while
        # the first attempt still runs, and the fence could not tell the two apart. (On an
        # exclusive store a crash that forgets a claim takes its attempt with it.)
        return await self._write(lambda tx: claim_jobs(tx, request), durable=not self.exclusive)

    async def record(self, finished: Sequence[Finished]) -> list[Job | None]:
        """Write the outcomes of ended attempts in one transaction (group commit), each
        fenced on its attempt; None for an attempt that lost its job (rescued elsewhere)."""
        if not finished:
            return []
        return await self._write(lambda tx: record_outcomes(tx, finished))

    async def modify(self, job_id: str, change: Callable[[Job], Job], *, tenant: str | None = None) -> Job:
        """Read-modify-write one job in one durable transaction: ``change`` is a pure
        transition (it may raise IllegalTransition, which rolls back). Raises JobNotFound,
        also for a job of another tenant than ``tenant`` (None: any tenant)."""
        return await self._write(lambda tx: modify_job(tx, job_id, change, tenant=tenant), durable=True)

    async def heartbeat(self, *, owner: str, now: float, lease: float, held: Collection[AttemptKey]) -> dict[AttemptKey, bool]:
        """Extend, in one statement, the leases of the attempts named that still hold their
        job. Returns ``{(id, token): cancel_requested}`` for the renewed ones: a held
        attempt missing from it has lost its job (rescued; maybe claimed again, under a new
        token, even by this very process)."""
        if not held:
            return {}
        return await self._write(lambda tx: tx.renew(owner=owner, keys=held, expires=now + lease))

    async def rescue(self, *, now: float, max_rescues: int, expired_only: bool = True) -> list[Job]:
        """Take back running jobs whose lease expired (every running job when
        ``expired_only`` is False: the start-up of an exclusive store), through
        :func:`jobsvc.models.rescue`. Returns the rescued jobs as they now are."""
        return await self._write(lambda tx: rescue_jobs(tx, now=now, max_rescues=max_rescues, expired_only=expired_only))

    async def next_run_at(self, *, tasks: Collection[str] | None = None) -> float | None:
        """The earliest ``run_at`` of a claimable job, or None if there is none."""
        return await self._read(lambda tx: tx.next_run_at(tasks=tasks))

    async def counts(self, *, tenant: str | None = None) -> Counts:
        """Jobs by task and state, of ``tenant`` (None: of every tenant); constant time in
        the number of jobs."""
        return await self._read(lambda tx: tx.counts(tenant=tenant))

    async def prune(self, *, finished_before: float) -> int:
        """Delete final jobs finished before the given time, in batches of PRUNE_BATCH (each
        its own transaction, so none holds the store for long); returns how many."""
        total = 0
        while True:
            n = await self._write(lambda tx: tx.delete_finished(before=finished_before, limit=PRUNE_BATCH))
            total += n
            if n < PRUNE_BATCH:
                return total

    @property
    def is_reporter(self) -> bool:
        """Whether this instance exports the store-wide metrics (jobs by state, oldest due
        job), so that summing them over instances counts each job once. A store used by
        one process only is always the reporter; PostgreSQL elects one (an advisory lock)."""
        return True

    def statistics(self) -> dict[str, int]:
        """Counters of the store's own work since it opened (SQLite: transactions and
        operations of its writer), for /stats and benchmarks; {} where there are none."""
        return {}

    async def wait_for_work(self) -> None:
        """Return when another process may have made jobs claimable (PostgreSQL uses
        LISTEN/NOTIFY). A store used by one process only never returns: the service wakes
        its own claim loop."""
        await trio.sleep_forever()

    async def ping(self) -> None:
        """Raise StoreUnavailable if the store cannot serve requests right now."""
        await self.counts()

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release resources; the store is unusable afterwards."""
