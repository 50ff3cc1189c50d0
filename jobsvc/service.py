"""The job service: the facade the HTTP layer talks to, and the tasks that run jobs.

Shape (one nursery; see ``JobService.run``)::

    intake nursery
     |- dispatcher    store -> channel: claims due jobs (recovered, retries, overflow,
     |                other instances') in batches sized to the idle workers
     |- maintenance   heartbeat of this owner's leases, rescue of expired leases, pruning
     '- store watcher wakes the dispatcher on another instance's NOTIFY (PostgreSQL)
    workers nursery
     '- N workers     channel -> handler, each attempt in its own cancel scope + deadline

The store is the queue of record; the memory channel is a hint. ``submit`` commits the
job, then hands it straight to an idle worker with ``send_nowait`` (the worker claims it);
when no worker is idle the job simply stays pending and the dispatcher claims it later.

Shutdown (``begin_shutdown``): new submissions get 503, the intake stops (no new claims),
workers get ``grace`` seconds to finish their current job; then their cancel scopes are
cancelled and each unfinished job is *released* back to pending (no attempt burnt) in a
shielded block. Claimed jobs still waiting in the channel are released too. Nothing is
left ``running``.
"""

from __future__ import annotations

import logging
import math
import os
import random
import socket
import uuid
from collections.abc import Sequence
from typing import Any, Protocol

import attrs
import trio

from . import codec, models
from .clock import Clock, SystemClock
from .codec import JobRequest
from .config import Settings
from .errors import (
    JobNotFound,
    ServiceUnavailable,
    StoreUnavailable,
    TooManyPending,
    UnknownTask,
)
from .models import ErrorRecord, Job, JobState
from .retry import Backoff, Rng, retry_delay
from .store import Store
from .tasks import JobContext, PermanentError, Registry, TaskSpec

__all__ = ["JobService", "NullObserver", "Observer", "Submitted"]

log = logging.getLogger("jobsvc")
job_log = logging.getLogger("jobsvc.job")

#: How long a worker may take to write an attempt's outcome (store down: retried with backoff).
RECORD_DEADLINE = 30.0
#: How long a cancelled worker may take to hand its job back.
RELEASE_DEADLINE = 5.0
#: Backoff between store retries in the service's loops.
STORE_RETRY_MIN, STORE_RETRY_MAX = 0.1, 5.0
#: Prune finished jobs past their retention this often.
PRUNE_EVERY = 3600.0


class Observer(Protocol):
    """Hooks for metrics; the core never imports prometheus."""

    def job_event(self, event: str, task: str) -> None: ...

    def attempt_finished(self, task: str, outcome: str, seconds: float) -> None: ...


class NullObserver:
    def job_event(self, event: str, task: str) -> None:
        pass

    def attempt_finished(self, task: str, outcome: str, seconds: float) -> None:
        pass


@attrs.frozen
class Submitted:
    job: Job
    created: bool  #: False: an earlier submission with the same id / Idempotency-Key


@attrs.frozen
class _Outcome:
    kind: str  #: "succeeded", "failed", "timeout", "cancelled"
    result: Any = None
    error_type: str = ""
    message: str = ""
    permanent: bool = False


def _failure(exc: Exception) -> _Outcome:
    """An attempt's exception as an outcome; robust to exceptions whose str() fails."""
    try:
        message = str(exc) or repr(exc)
    except Exception:  # noqa: BLE001 - a broken __str__ must not take the worker down
        message = f"<{type(exc).__name__} with an unprintable message>"
    return _Outcome("failed", error_type=type(exc).__name__, message=message, permanent=isinstance(exc, PermanentError))


def _default_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class JobService:
    def __init__(
        self,
        *,
        store: Store,
        registry: Registry,
        settings: Settings,
        clock: Clock | None = None,
        rng: Rng = random.uniform,
        owner: str | None = None,
        observer: Observer | None = None,
    ) -> None:
        self.store = store
        self.registry = registry
        self.settings = settings
        self.clock: Clock = clock or SystemClock()
        self.rng = rng
        self.owner = owner or _default_owner()
        self.observer: Observer = observer or NullObserver()
        self.default_backoff = Backoff(base=settings.backoff_base, cap=settings.backoff_cap)
        self._task_names = frozenset(registry.names())
        self._send, self._receive = trio.open_memory_channel[Job](settings.workers)
        self._inflight = 0  # jobs sent to the channel (or being claimed for it) and not yet finished
        self._queued: dict[str, Job] = {}  # claimed jobs waiting in the channel for a worker
        self._backlog = True  # there may be due jobs in the store that nobody holds
        self._wake = trio.Event()
        self._held: dict[str, int] = {}  # jobs this process holds (claimed) -> lease token
        self._running: dict[tuple[str, int], trio.CancelScope] = {}  # (id, token) -> handler scope
        self._cancel_soon: set[str] = set()  # held jobs asked to cancel before their handler started
        self._finished: dict[str, trio.Event] = {}  # long-poll wake-ups
        self._waiters: dict[str, int] = {}
        self._pending_estimate = 0
        self._workers_scope: trio.CancelScope | None = None
        self._grace_deadline = math.inf
        self.draining = False
        self.shutdown_requested = trio.Event()
        self._stop_intake = trio.Event()
        self.stopped = trio.Event()

    # -- the API the HTTP layer uses ---------------------------------------------------

    def spec(self, task: str, *, path: str = "$") -> TaskSpec:
        spec = self.registry.get(task)
        if spec is None:
            raise UnknownTask(task, self.registry.names(), path=path)
        return spec

    async def submit(self, requests: Sequence[JobRequest], *, idempotency_key: str | None = None, paths: Sequence[str] | None = None) -> list[Submitted]:
        """Validate, commit, hand off. Returns once the jobs are committed.

        A job whose id (or Idempotency-Key) exists is not inserted again: the stored job is
        returned with ``created=False``, or Conflict is raised if it was submitted with
        another body. With several requests, item ``i`` uses the key ``"{key}#{i}"``.
        """
        if self.draining:
            raise ServiceUnavailable("the service is shutting down; retry on another instance or later")
        now = self.clock.now()
        jobs = []
        for i, request in enumerate(requests):
            path = paths[i] if paths else "$"
            spec = self.spec(request.task, path=path)
            if spec.payload is not None:
                codec.structure(request.payload, spec.payload, path=f"{path}.payload")
            key = idempotency_key if len(requests) == 1 else (idempotency_key and f"{idempotency_key}#{i}")
            if request.delay is not None:
                run_at = now + request.delay
            elif request.run_at is not None:
                run_at = codec.parse_time(request.run_at)
            else:
                run_at = now
            jobs.append(
                Job(
                    id=request.job_id or str(uuid.uuid4()),
                    task=request.task,
                    payload=request.payload,
                    priority=request.priority,
                    max_attempts=request.max_attempts or spec.max_attempts or self.settings.max_attempts,
                    timeout=request.timeout,
                    run_at=run_at,
                    created_at=now,
                    updated_at=now,
                    idempotency_key=key,
                    fingerprint=codec.fingerprint(request),
                )
            )
        await self._admit(len(jobs))
        results = await self.store.insert(jobs)  # raises Conflict (inserting nothing) on a clash
        submitted = []
        for job, result in zip(jobs, results, strict=True):
            submitted.append(Submitted(result.job, result.created))
            if result.created:
                self._pending_estimate += 1
                self.observer.job_event("submitted", job.task)
                self._hand_off(result.job, now)
        return submitted

    def _hand_off(self, job: Job, now: float) -> None:
        if job.task not in self._task_names:
            return  # another instance runs it
        if job.run_at <= now and self._capacity() > 0:
            try:
                self._send.send_nowait(job)
            except (trio.WouldBlock, trio.ClosedResourceError):
                pass
            else:
                self._inflight += 1
                return
        self._backlog = True
        self._wake.set()

    async def _admit(self, n: int) -> None:
        limit = self.settings.max_pending
        if self._pending_estimate + n <= limit:
            return
        counts = await self.store.count_by_state()
        self._pending_estimate = counts[JobState.PENDING] + counts[JobState.RETRYING]
        if self._pending_estimate + n > limit:
            raise TooManyPending(f"{self._pending_estimate} jobs are pending (the limit is {limit}); retry later")

    async def get(self, job_id: str) -> Job:
        job = await self.store.get(job_id)
        if job is None:
            raise JobNotFound(f"no job has the id {job_id!r}")
        return job

    async def wait(self, job_id: str, timeout: float) -> Job:
        """The job once it is final, or as it is after ``timeout`` seconds (long poll)."""
        deadline = trio.current_time() + timeout
        self._waiters[job_id] = self._waiters.get(job_id, 0) + 1
        try:
            while True:
                job = await self.get(job_id)
                if job.is_final or trio.current_time() >= deadline or self.draining:
                    return job
                event = self._finished.setdefault(job_id, trio.Event())
                # Jobs finished elsewhere (another instance, a rescue) are seen by the poll.
                with trio.move_on_at(min(deadline, trio.current_time() + self.settings.poll)):
                    await event.wait()
        finally:
            self._waiters[job_id] -= 1
            if not self._waiters[job_id]:
                del self._waiters[job_id]
                self._finished.pop(job_id, None)

    async def list_jobs(self, *, states: Sequence[JobState] = (), task: str | None = None, after: int | None = None, limit: int = 100) -> list[Job]:
        return await self.store.list_jobs(states=states, task=task, after=after, limit=limit)

    async def retry(self, job_id: str) -> Job:
        """Replay a dead (or cancelled) job: back to pending with a fresh set of attempts.
        A job whose task this instance does not know is redriven all the same (another
        instance may run it); it is just not handed to a local worker."""
        now = self.clock.now()
        job = await self.store.modify(job_id, lambda j: models.redrive(j, now=now))
        self.observer.job_event("redriven", job.task)
        self._pending_estimate += 1
        self._hand_off(job, now)
        return job

    async def cancel(self, job_id: str) -> Job:
        """Cancel a waiting job at once; a running one through its handler's cancel scope
        (here, or on the instance that holds it: its heartbeat sees the request)."""
        now = self.clock.now()
        job = await self.store.modify(job_id, lambda j: models.request_cancel(j, now=now))
        if job.state is JobState.RUNNING:
            if job.lease_owner == self.owner and job.id in self._held:
                self._cancel_local(job.id)
        else:
            self.observer.job_event("cancelled", job.task)
            self._notify_finished(job_id)
        return job

    def _cancel_local(self, job_id: str) -> None:
        scopes = [scope for (held_id, _token), scope in self._running.items() if held_id == job_id]
        for scope in scopes:
            scope.cancel()
        if not scopes:  # claimed, not started yet (or its outcome is being written)
            self._cancel_soon.add(job_id)

    async def ready(self) -> tuple[bool, str]:
        if self.draining:
            return False, "draining"
        try:
            with trio.fail_after(2):
                await self.store.ping()
        except (StoreUnavailable, trio.TooSlowError) as exc:
            return False, f"store unavailable: {exc}"
        return True, "ok"

    def statistics(self) -> dict[str, Any]:
        stats = self._send.statistics()
        return {
            "workers": self.settings.workers,
            "busy_workers": self._inflight - stats.current_buffer_used,
            "channel_buffered": stats.current_buffer_used,
            "draining": self.draining,
            "owner": self.owner,
            "store": self.store.kind,
        }

    # -- shutdown ----------------------------------------------------------------------

    def begin_shutdown(self) -> None:
        """Graceful: stop intake now, give running jobs ``grace`` seconds. Idempotent."""
        if self.draining:
            return
        log.info("shutting down: draining for up to %gs", self.settings.grace)
        self.draining = True
        self._grace_deadline = trio.current_time() + self.settings.grace
        if self._workers_scope is not None:
            self._workers_scope.deadline = self._grace_deadline
        self.shutdown_requested.set()
        self._stop_intake.set()

    def force_stop(self) -> None:
        """Immediate: cancel running handlers now (their jobs are still released)."""
        self.begin_shutdown()
        log.warning("stopping now: cancelling running jobs")
        self._grace_deadline = -math.inf
        if self._workers_scope is not None:
            self._workers_scope.cancel()

    @property
    def grace_deadline(self) -> float:
        """When (trio time) running jobs are cancelled; inf before shutdown."""
        return self._grace_deadline

    # -- running -----------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Recover, then run workers, dispatcher and maintenance until shutdown has drained.

        If shutdown is requested while recovery still waits for the store, it returns at
        once (``stopped`` is set; ``draining`` tells why)."""
        try:
            if not await self._recover():
                task_status.started()
                return
            # Maintenance (lease heartbeats) outlives the workers: leases stay valid while
            # the workers drain.
            async with trio.open_nursery() as background:
                background.start_soon(self._maintenance, name="jobsvc-maintenance")
                async with trio.open_nursery() as workers:
                    self._workers_scope = workers.cancel_scope
                    workers.cancel_scope.deadline = self._grace_deadline
                    async with self._receive:
                        for i in range(self.settings.workers):
                            workers.start_soon(self._worker, self._receive.clone(), name=f"jobsvc-worker-{i}")
                    async with trio.open_nursery() as intake:
                        intake.start_soon(self._dispatcher, name="jobsvc-dispatcher")
                        intake.start_soon(self._watch_store, name="jobsvc-store-watcher")
                        task_status.started()
                        await self._stop_intake.wait()
                        intake.cancel_scope.cancel()
                    await self._send.aclose()  # workers release what is buffered, then exit
                background.cancel_scope.cancel()
        finally:
            # Workers cancelled at the deadline (or run() cancelled from outside) leave
            # claimed jobs in the channel: release them (each release is shielded).
            for job in list(self._queued.values()):
                await self._release(job)
            self._queued.clear()
            self.stopped.set()
        log.info("all workers stopped")

    async def _recover(self) -> bool:
        """Take back jobs a crashed process left running. False if shut down meanwhile."""
        now = self.clock.now()
        rescued = await self._store_retry(
            lambda: self.store.rescue(now=now, max_rescues=self.settings.max_rescues, expired_only=not self.store.exclusive),
            give_up_on_shutdown=True,
        )
        if rescued is None:
            return False
        for job in rescued:
            self.observer.job_event("rescued" if job.state is JobState.PENDING else "dead", job.task)
        if rescued:
            log.info("recovered %d job(s) left running by a previous process", len(rescued))
        return True

    async def _store_retry(self, call: Any, *, give_up_on_shutdown: bool = False) -> Any:
        """``await call()``, retried with backoff while the store is unavailable. With
        ``give_up_on_shutdown``, returns None once shutdown is requested."""
        delay = STORE_RETRY_MIN
        while True:
            try:
                return await call()
            except StoreUnavailable as exc:
                log.warning("store unavailable (%s); retrying in %.1fs", exc, delay)
            if give_up_on_shutdown:
                with trio.move_on_after(delay):
                    await self.shutdown_requested.wait()
                if self.draining:
                    return None
            else:
                await trio.sleep(delay)
            delay = min(delay * 2, STORE_RETRY_MAX)

    def _capacity(self) -> int:
        if self.draining:
            return 0
        # Counting what was *sent* (not what workers picked up) keeps this exact even when
        # send_nowait hands a job straight to a waiting worker that has not run yet.
        return self.settings.workers - self._inflight

    async def _dispatcher(self) -> None:
        failures = 0
        while True:
            wake = self._wake = trio.Event()
            try:
                delay = await self._dispatch_step()
                failures = 0
            except Exception as exc:  # noqa: BLE001 - never wedge: back off and try again
                delay = min(STORE_RETRY_MAX, STORE_RETRY_MIN * 2**failures)
                failures += 1
                if isinstance(exc, StoreUnavailable):
                    log.warning("dispatcher: store unavailable (%s); retrying in %.1fs", exc, delay)
                else:
                    log.exception("dispatcher: unexpected error; retrying in %.1fs", delay)
            with trio.move_on_after(delay):
                await wake.wait()

    async def _dispatch_step(self) -> float:
        """Claim what idle workers can take; return how long to wait before looking again."""
        poll = self.settings.poll
        capacity = self._capacity()
        if capacity <= 0:
            return poll  # a worker that frees up wakes us
        now = self.clock.now()
        # Reserve the capacity while claiming (the accept path may hand off meanwhile), and
        # shield the claim: once the store has claimed jobs, they must reach a worker or be
        # released, never be dropped by a cancellation.
        self._inflight += capacity
        jobs: list[Job] = []
        try:
            with trio.CancelScope(shield=True):
                jobs = await self.store.claim_due(owner=self.owner, now=now, lease=self.settings.lease, limit=capacity, tasks=self._task_names)
        finally:
            self._inflight -= capacity - len(jobs)
        for job in jobs:
            self._held[job.id] = job.lease_token
            self._queued[job.id] = job
        for job in jobs:
            try:
                self._send.send_nowait(job)  # inflight <= workers == buffer size: never blocks
            except (trio.BrokenResourceError, trio.ClosedResourceError, trio.WouldBlock):
                # The workers are gone (shutdown): hand it back now.
                self._inflight -= 1
                self._queued.pop(job.id, None)
                await self._release(job)
        if len(jobs) == capacity:
            self._backlog = True
            return poll
        self._backlog = False
        next_at = await self.store.next_run_at(tasks=self._task_names)
        if next_at is None:
            return poll
        return min(poll, max(0.0, next_at - self.clock.now()))

    async def _watch_store(self) -> None:
        while True:
            try:
                await self.store.wait_for_work()
            except Exception:  # noqa: BLE001 - the poll still finds the work; try again soon
                log.exception("store watcher: unexpected error")
                await trio.sleep(self.settings.poll)
            self._backlog = True
            self._wake.set()

    async def _maintenance(self) -> None:
        last_prune = -math.inf
        while True:
            await trio.sleep(self.settings.heartbeat)
            try:
                await self._heartbeat()
                now = self.clock.now()
                rescued = await self.store.rescue(now=now, max_rescues=self.settings.max_rescues)
                for job in rescued:
                    log.warning("rescued job %s (%s): its owner's lease expired", job.id, job.state.value)
                    self.observer.job_event("rescued" if job.state is JobState.PENDING else "dead", job.task)
                if rescued:
                    self._backlog = True
                    self._wake.set()
                if self.settings.retention and trio.current_time() - last_prune >= PRUNE_EVERY:
                    last_prune = trio.current_time()
                    pruned = await self.store.prune(finished_before=now - self.settings.retention)
                    if pruned:
                        log.info("pruned %d finished job(s) older than the retention", pruned)
            except StoreUnavailable as exc:
                log.warning("maintenance: store unavailable (%s)", exc)
            except Exception:  # noqa: BLE001 - never wedge: try again at the next heartbeat
                log.exception("maintenance: unexpected error")

    async def _heartbeat(self) -> None:
        """Renew the leases of the jobs this process holds; act on cancel requests; stop
        handlers whose lease was lost (rescued elsewhere: their outcome would be fenced)."""
        held = dict(self._held)
        if not held:
            return
        renewed = await self.store.heartbeat(owner=self.owner, now=self.clock.now(), lease=self.settings.lease, job_ids=held)
        for job_id, token in held.items():
            if self._held.get(job_id) != token:
                continue  # recorded or released while the heartbeat was on its way
            if job_id not in renewed:
                log.warning("job %s lost its lease (rescued); stopping its handler here", job_id)
                del self._held[job_id]  # a worker that has not started it yet skips it
                self._cancel_soon.discard(job_id)
                scope = self._running.get((job_id, token))
                if scope is not None:
                    scope.cancel()
            elif renewed[job_id]:
                self._cancel_local(job_id)

    async def _worker(self, receive: trio.MemoryReceiveChannel[Job]) -> None:
        async with receive:
            async for job in receive:
                if job.state is JobState.RUNNING:
                    self._queued.pop(job.id, None)
                try:
                    if job.state is JobState.RUNNING and self._held.get(job.id) != job.lease_token:
                        continue  # its lease was lost while it waited in the channel
                    if self.draining:
                        if job.state is JobState.RUNNING:
                            await self._release(job)
                        continue
                    if job.state is not JobState.RUNNING:
                        try:
                            with trio.CancelScope(shield=True):  # a claim made must be seen
                                claimed = await self.store.claim(job.id, owner=self.owner, now=self.clock.now(), lease=self.settings.lease)
                        except Exception as exc:  # noqa: BLE001 - it stays pending; the dispatcher retries
                            log.warning("worker could not claim job %s (%s)", job.id, exc)
                            claimed = None
                        if claimed is None:
                            continue
                        job = claimed
                        self._held[job.id] = job.lease_token
                    await self._execute(job)
                finally:
                    self._inflight -= 1
                    if self._backlog:
                        self._wake.set()

    async def _execute(self, job: Job) -> None:
        spec = self.registry.get(job.task)
        if spec is None:  # claims are filtered by task; a redriven job of an unknown task is not
            log.warning("job %s: task %r is not registered here; handing it back", job.id, job.task)
            await self._release(job)
            return
        timeout = job.timeout or spec.timeout or self.settings.timeout
        ctx = JobContext(
            job_id=job.id,
            task=job.task,
            attempt=job.attempts,
            max_attempts=job.max_attempts,
            lease_token=job.lease_token,
            log=logging.LoggerAdapter(job_log, {"job_id": job.id, "task": job.task, "attempt": job.attempts}),
        )
        key = (job.id, job.lease_token)
        scope = trio.CancelScope()
        self._running[key] = scope
        if job.cancel_requested or job.id in self._cancel_soon:
            self._cancel_soon.discard(job.id)
            scope.cancel()
        started = trio.current_time()
        outcome = _Outcome("failed", error_type="Interrupted", message="the attempt did not finish")
        deadline: trio.CancelScope | None = None
        try:
            with scope:
                with trio.move_on_after(timeout) as deadline:
                    try:
                        payload = job.payload if spec.payload is None else codec.structure(job.payload, spec.payload, path="$.payload")
                        result = await spec(payload, ctx)
                        codec.check_json_result(result)
                    except Exception as exc:  # noqa: BLE001 - the job failed; any error type
                        outcome = _failure(exc)
                        ctx.log.info("job %s attempt %d failed: %s: %s", job.id, job.attempts, outcome.error_type, outcome.message)
                    else:
                        outcome = _Outcome("succeeded", result=result)
                if deadline.cancelled_caught:
                    outcome = _Outcome("timeout", error_type="Timeout", message=f"the attempt took longer than {timeout:g}s")
            if scope.cancelled_caught:
                outcome = _Outcome("cancelled")
        except Exception as exc:  # noqa: BLE001 - see below
            # The handler's own nursery raised a group holding our Cancelled and an error;
            # our scope took its Cancelled back and the error is left: the attempt ended.
            if scope.cancel_called:
                outcome = _Outcome("cancelled")
            elif deadline is not None and deadline.cancel_called:
                outcome = _Outcome("timeout", error_type="Timeout", message=f"the attempt took longer than {timeout:g}s")
            else:  # pragma: no cover - an Exception escaping the inner except is always a group
                outcome = _failure(exc)
        except BaseException:
            # Shutdown's deadline or a forced stop (a bare Cancelled, or one inside an
            # exception group from the handler's own nursery), or something worse: hand the
            # job back without burning the attempt, then let it propagate.
            await self._release(job)
            raise
        finally:
            self._running.pop(key, None)
        self.observer.attempt_finished(job.task, outcome.kind, trio.current_time() - started)
        await self._record(job, spec, outcome)

    async def _record(self, job: Job, spec: TaskSpec, outcome: _Outcome) -> None:
        now = self.clock.now()
        retry_later = False
        if outcome.kind == "succeeded":
            new = models.succeed(job, result=outcome.result, now=now)
        elif outcome.kind == "cancelled":
            new = models.cancel(job, now=now)
        else:
            error = ErrorRecord.make(attempt=job.attempts, at=now, type=outcome.error_type, message=outcome.message)
            delay = None if outcome.permanent else retry_delay(
                attempt=job.attempts, max_attempts=job.max_attempts, backoff=spec.backoff or self.default_backoff, rng=self.rng
            )
            new = models.fail(job, error=error, now=now, delay=delay)
            retry_later = delay is not None

        fenced = False

        def change(current: Job) -> Job:
            nonlocal fenced
            fenced = current.state is not JobState.RUNNING or current.lease_token != job.lease_token
            if fenced:
                return current
            # A retry must not undo a cancel requested while the attempt was finishing.
            if current.cancel_requested:
                return models.cancel(attrs.evolve(current, errors=new.errors), now=now)
            return attrs.evolve(new, cancel_requested=False)

        async def write() -> Job | None:
            if retry_later:
                written = await self.store.modify(job.id, change)
                return None if fenced else written
            return new if await self.store.save(new, expected=job) else None

        # A finished attempt's outcome must reach the store, even while shutting down.
        saved: Job | None = None
        try:
            with trio.CancelScope(shield=True), trio.move_on_after(RECORD_DEADLINE) as scope:
                saved = await self._store_retry(write)
            if scope.cancelled_caught:
                log.error("job %s: its outcome could not be written within %gs; it will be rescued", job.id, RECORD_DEADLINE)
                return
        except Exception:  # noqa: BLE001 - never crash the service over one job's outcome
            log.exception("job %s: writing its outcome failed; it will be rescued", job.id)
            return
        finally:
            self._forget(job)
        if saved is None:
            log.warning("job %s: outcome %s discarded, the lease was lost (fenced)", job.id, outcome.kind)
            self.observer.job_event("fenced", job.task)
            return
        self.observer.job_event(saved.state.value, job.task)
        if saved.is_final:
            self._notify_finished(job.id)
        elif saved.state is JobState.RETRYING:
            job_log.info("job %s will retry in %.3fs", job.id, saved.run_at - now)
            self._wake.set()  # the dispatcher recomputes when to look next

    def _forget(self, job: Job) -> None:
        """This process no longer holds ``job`` (recorded, released or given up)."""
        if self._held.get(job.id) == job.lease_token:
            del self._held[job.id]
            self._cancel_soon.discard(job.id)

    async def _release(self, job: Job) -> None:
        now = self.clock.now()

        def change(current: Job) -> Job:
            if current.state is not JobState.RUNNING or current.lease_token != job.lease_token:
                return current  # no longer ours: the fence holds
            if current.cancel_requested:
                return models.cancel(current, now=now)
            return models.release(current, now=now)

        new = None
        with trio.CancelScope(shield=True), trio.move_on_after(RELEASE_DEADLINE):
            try:
                new = await self.store.modify(job.id, change)
            except Exception as exc:  # noqa: BLE001 - the lease lapses and a rescue takes it back
                log.warning("job %s could not be released (%s)", job.id, exc)
        self._forget(job)
        if new is None:
            log.warning("job %s stays running until it is rescued (lease expiry or next start)", job.id)
            return
        self.observer.job_event("released", job.task)
        if new.is_final:
            self._notify_finished(job.id)

    def _notify_finished(self, job_id: str) -> None:
        event = self._finished.pop(job_id, None)
        if event is not None:
            event.set()
