"""The facade the HTTP layer calls: submit, get, wait, list, retry, cancel, and readings.

Submissions are validated, admitted (backpressure), and committed before they return; when
workers are idle and nothing older waits, the jobs are inserted already claimed and go
straight to the workers (the claim at insert).

Tenants: every method that touches jobs takes the caller's ``tenant`` (the tenant of its API
key). ``tenant=None`` means no tenant scoping (no keys configured, or a key without a
tenant). A job of another tenant is :class:`~jobsvc.errors.JobNotFound`, exactly as a job
that does not exist, so a key cannot learn that it exists. Submissions of a tenant are
stamped with it; their idempotency keys are the tenant's own; the job ids they choose must
start with ``"<tenant>:"``, because job ids are global and a clash with another tenant's
job could only be answered in a way that reveals that job exists.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import attrs
import trio

from .. import codec, models
from ..clock import Clock
from ..codec import JobRequest
from ..config import Settings
from ..errors import InvalidJob, JobNotFound, StoreUnavailable, TooManyPending, UnknownTask
from ..models import Job, JobState
from ..retry import Backoff
from ..store import Counts, InsertResult, Store
from ..store.base import check_conflicts, visible
from ..tasks import Registry, TaskSpec, payload_schema
from .attempts import Attempts
from .observer import Observer
from .runner import CLAIM_WAIT, Runner
from .shutdown import Shutdown
from .waiters import Waiters

__all__ = ["JobService", "Submitted"]


@attrs.frozen
class Submitted:
    job: Job
    created: bool  #: False: an earlier submission with the same id / Idempotency-Key


class JobService:
    def __init__(
        self,
        *,
        store: Store,
        registry: Registry,
        settings: Settings,
        clock: Clock,
        owner: str,
        runner: Runner,
        attempts: Attempts,
        waiters: Waiters,
        shutdown: Shutdown,
        observer: Observer,
    ) -> None:
        self._store = store
        self._registry = registry
        self._settings = settings
        self.clock = clock
        self.owner = owner
        self._runner = runner
        self._attempts = attempts
        self._waiters = waiters
        self.shutdown = shutdown
        self.observer = observer
        self._default_backoff = Backoff(base=settings.backoff_base, cap=settings.backoff_cap)
        #: waiting jobs as last counted plus those submitted since (admission control);
        #: it starts at the limit so the first submission counts what the store holds
        self._waiting_estimate = settings.max_pending

    # -- submitting --------------------------------------------------------------------

    def spec(self, task: str, *, path: str = "$") -> TaskSpec:
        spec = self._registry.get(task)
        if spec is None:
            raise UnknownTask(task, self._registry.names(), path=path)
        return spec

    def _build(self, request: JobRequest, *, key: str | None, path: str, now: float, tenant: str | None) -> Job:
        if tenant is not None and request.job_id is not None and not request.job_id.startswith(f"{tenant}:"):
            message = f"a key of tenant {tenant!r} chooses job ids that start with '{tenant}:' (job ids are global) @ {path}.id"
            raise InvalidJob("the submission is invalid: " + message, errors=[message])
        spec = self.spec(request.task, path=path)
        if spec.payload is not None:
            codec.structure(request.payload, spec.payload, path=f"{path}.payload")
        if request.delay is not None:
            run_at = now + request.delay
        elif request.run_at is not None:
            run_at = codec.parse_time(request.run_at)
        else:
            run_at = now
        return Job(
            id=request.job_id or str(uuid.uuid4()),
            task=request.task,
            payload=request.payload,
            priority=request.priority,
            max_attempts=request.max_attempts or spec.max_attempts or self._settings.max_attempts,
            timeout=request.timeout,
            run_at=run_at,
            created_at=now,
            updated_at=now,
            idempotency_key=key,
            tenant=tenant,
            fingerprint=codec.fingerprint(request),
        )

    async def submit(
        self,
        requests: Sequence[JobRequest],
        *,
        idempotency_key: str | None = None,
        paths: Sequence[str] | None = None,
        tenant: str | None = None,
        max_pending: int | None = None,
    ) -> list[Submitted]:
        """Validate, admit, commit. Returns once the jobs are committed.

        A job whose id (or Idempotency-Key, in its tenant) exists is not inserted again: the
        stored job is returned with ``created=False``, or Conflict is raised if it was
        submitted with another body. With several requests, item ``i`` uses the key
        ``"{key}#{i}"``. The jobs are stamped with ``tenant``; ``max_pending`` (the caller's
        cap) refuses new jobs while the tenant (None: the store) has that many waiting.
        """
        self.shutdown.check_accepting()
        now = self.clock.now()
        single = len(requests) == 1
        jobs = [
            self._build(
                request,
                key=idempotency_key if single else (idempotency_key and f"{idempotency_key}#{i}"),
                path=paths[i] if paths else "$",
                now=now,
                tenant=tenant,
            )
            for i, request in enumerate(requests)
        ]
        replays = await self._admit(jobs, tenant=tenant, cap=max_pending)
        if replays is not None:
            return [Submitted(r.job, r.created) for r in replays]
        due = [i for i, job in enumerate(jobs) if job.run_at <= now and job.task in self._runner.tasks]
        claimed_at_insert = 0
        if due and self._runner.only_claiming():
            # A claim under way may find older due jobs, so these may not take a worker at
            # insert yet. Rather than leave them for the claim after it (on PostgreSQL each
            # such claim then held up the next submissions, a cycle that cost nearly every job a
            # second transaction at 150 submissions/s), see what it finds: it takes
            # milliseconds. Bounded: a slow claim costs the submission CLAIM_WAIT at most.
            with trio.move_on_after(CLAIM_WAIT):
                await self._runner.claims_done()
        if due and self._runner.can_claim_at_insert():
            # Nothing older waits: the new jobs go to the idle workers, inserted already
            # claimed (one write each). Shielded: once committed they must reach a worker.
            with self._attempts.reserve(len(due)) as claimed_at_insert:
                for i in due[:claimed_at_insert]:
                    jobs[i] = models.claim(jobs[i], owner=self.owner, now=now, lease=self._settings.lease)
                with trio.CancelScope(shield=claimed_at_insert > 0):
                    results = await self._store.insert(jobs)
                self._runner.deliver([r.job for r in results if r.created and r.job.state is JobState.RUNNING])
        else:
            # Due jobs wait in the store: the same transaction claims the oldest of them (in
            # claim order) for the idle workers, if any.
            with self._runner.ticket() as ticket:
                if ticket.request is None:
                    results = await self._store.insert(jobs)
                else:
                    with trio.CancelScope(shield=True):
                        results, ticket.result = await self._store.insert_and_claim(jobs, ticket.request)
        created = [r.job for r in results if r.created]
        self._waiting_estimate += len(created)
        for job in created:
            self.observer.job_event("submitted", job)
        if len(due) > claimed_at_insert:  # due jobs left pending: the claim loop takes them
            self._runner.wake()
        later = [job.run_at for job in created if job.run_at > now]
        if later:
            self._runner.wake(claimable=False, due_at=min(later))
        return [Submitted(r.job, r.created) for r in results]

    async def _admit(self, jobs: Sequence[Job], *, tenant: str | None = None, cap: int | None = None) -> list[InsertResult] | None:
        """Backpressure: above ``--max-pending`` waiting jobs (or ``cap`` waiting jobs of
        ``tenant``: an API key's cap, read from the constant-time counts, so it holds across
        instances), new jobs get TooManyPending. A replay of jobs already accepted is never
        refused: their results are returned (and nothing is inserted). Jobs are admitted
        while the queue is below the limit, whatever their number, so a batch larger than
        the limit can always get in."""
        limit = self._settings.max_pending
        refusal: str | None = None
        if self._waiting_estimate >= limit:
            self._waiting_estimate = (await self._store.counts()).waiting
            if self._waiting_estimate >= limit:
                refusal = f"{self._waiting_estimate} jobs are pending (the limit is {limit}); retry later"
        if refusal is None and cap:
            waiting = (await self._store.counts(tenant=tenant)).waiting
            if waiting >= cap:
                whose = "this API key's tenant has" if tenant is not None else "the service has"
                refusal = f"{whose} {waiting} jobs pending (this API key's limit is {cap}); retry later"
        if refusal is None:
            return None
        found = await self._store.find(jobs)
        if all(holder is not None for holder in found):
            results = [InsertResult(holder, created=False) for holder in found if holder is not None]
            check_conflicts(jobs, results)
            return results
        raise TooManyPending(refusal)

    # -- reading -----------------------------------------------------------------------

    async def get(self, job_id: str, *, tenant: str | None = None) -> Job:
        """The job; JobNotFound if there is none, or it is another tenant's."""
        job = await self._store.get(job_id)
        if job is None or not visible(job, tenant):
            raise JobNotFound(f"no job has the id {job_id!r}")
        return job

    async def wait(self, job_id: str, timeout: float, *, tenant: str | None = None) -> Job:
        """The job once it is final, or as it is after ``timeout`` seconds (long poll).
        On a store shared with other instances, their changes are seen by a poll."""
        deadline = trio.current_time() + timeout
        with self._waiters.watch(job_id) as watch:
            while True:
                job = await self.get(job_id, tenant=tenant)
                if job.is_final or trio.current_time() >= deadline or self.shutdown.draining:
                    return job
                until = deadline if self._store.exclusive else min(deadline, trio.current_time() + self._settings.poll)
                await watch.wait(until)

    async def list_jobs(
        self,
        *,
        states: Sequence[JobState] = (),
        task: str | None = None,
        after: int | None = None,
        limit: int = 100,
        tenant: str | None = None,
    ) -> list[Job]:
        return await self._store.list_jobs(states=states, task=task, after=after, limit=limit, tenant=tenant)

    async def counts(self, *, tenant: str | None = None) -> Counts:
        """Jobs by task and state, of ``tenant`` (None: all); constant time."""
        return await self._store.counts(tenant=tenant)

    async def next_run_at(self) -> float | None:
        """The earliest ``run_at`` of a job waiting in the store (any task), if any."""
        return await self._store.next_run_at()

    @property
    def is_reporter(self) -> bool:
        """This instance exports the store-wide metrics (see ``Store.is_reporter``)."""
        return self._store.is_reporter

    # -- acting ------------------------------------------------------------------------

    async def retry(self, job_id: str, *, tenant: str | None = None) -> Job:
        """Replay a dead (or cancelled) job: back to pending with a fresh set of attempts.
        A job whose task this instance does not know is redriven all the same (another
        instance may run it); it is just not run here."""
        now = self.clock.now()
        job = await self._store.modify(job_id, lambda j: models.redrive(j, now=now), tenant=tenant)
        self._waiting_estimate += 1
        self.observer.job_event("redriven", job)
        self._runner.wake()
        return job

    async def cancel(self, job_id: str, *, tenant: str | None = None) -> Job:
        """Cancel a waiting job at once; a running one through its attempt's cancel scope
        (here, or on the instance that holds it: its heartbeat sees the request)."""
        now = self.clock.now()
        job = await self._store.modify(job_id, lambda j: models.request_cancel(j, now=now), tenant=tenant)
        if job.state is JobState.RUNNING:
            self._attempts.cancel((job.id, job.lease_token))
        elif job.state is JobState.CANCELLED:
            self.observer.job_event("cancelled", job)
            self._waiters.notify(job_id)
        return job

    # -- readings for /ready, /stats, /tasks -------------------------------------------

    async def ready(self) -> tuple[bool, str]:
        if self.shutdown.draining:
            return False, "draining"
        try:
            with trio.fail_after(2):
                await self._store.ping()
        except (StoreUnavailable, trio.TooSlowError) as exc:
            return False, f"store unavailable: {exc or 'no answer within 2s'}"
        return True, "ok"

    @property
    def draining(self) -> bool:
        return self.shutdown.draining

    @property
    def stopped(self) -> trio.Event:
        return self.shutdown.stopped

    def begin_shutdown(self) -> None:
        self.shutdown.begin()

    def force_stop(self) -> None:
        self.shutdown.force()

    def statistics(self) -> dict[str, Any]:
        """This instance: its workers and what they do."""
        return {
            **self._runner.statistics(),
            "draining": self.shutdown.draining,
            "owner": self.owner,
            "store": self._store.kind,
            "store_stats": self._store.statistics(),
        }

    async def stats(self, *, tenant: str | None = None) -> dict[str, Any]:
        """Counts by state and by task (of ``tenant``; None: store-wide), the oldest due
        job's age (store-wide only: None for a tenant), and this instance's statistics:
        what ``GET /stats`` answers."""
        counts = await self._store.counts(tenant=tenant)
        next_at = await self._store.next_run_at() if tenant is None else None
        now = self.clock.now()
        return {
            "jobs": {state.value: n for state, n in counts.by_state().items()},
            "tasks": {task: {state.value: n for state, n in states.items()} for task, states in sorted(counts.by_task.items())},
            "oldest_due_age": None if next_at is None or next_at > now else round(now - next_at, 3),
            "instance": self.statistics(),
        }

    def task_names(self) -> list[str]:
        return self._registry.names()

    def describe_tasks(self) -> list[dict[str, Any]]:
        """The registered tasks with their payload schema and retry policy (``GET /tasks``)."""
        tasks = []
        for spec in self._registry:
            backoff = spec.backoff or self._default_backoff
            tasks.append(
                {
                    "name": spec.name,
                    "description": spec.description,
                    "payload_schema": payload_schema(spec.payload),
                    "max_attempts": spec.max_attempts or self._settings.max_attempts,
                    "timeout": spec.timeout or self._settings.timeout,
                    "backoff": {"base": backoff.base, "cap": backoff.cap, "jitter": "full" if backoff.jitter else "none"},
                }
            )
        return tasks

    @property
    def max_body(self) -> int:
        return self._settings.max_body

    @property
    def settings(self) -> Settings:
        return self._settings
