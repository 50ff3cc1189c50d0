"""The runner: the memory channel, N workers and the claim loop.

One route in: the channel carries only *claimed* jobs (as :class:`Attempt` records), and a
job is claimed in one of two ways, both through the store's claim (``models.claim``):

* **at insert**: when workers are idle and no due job waits in the store, a submission's
  jobs are inserted already claimed for this process (:meth:`Runner.deliver` hands them
  over): an accepted job costs no separate claim write;
* **by the claim loop**: otherwise they stay pending and the loop claims due jobs in
  batches sized to the idle workers, when woken (a worker freed up, a submission could
  not be claimed at insert, a retry or a release, another instance's NOTIFY), when the
  next job becomes due, or every ``poll`` seconds at the latest.

A worker runs an attempt (:func:`~jobsvc.service.executor.run_attempt`), hands its
outcome to the recorder and takes its next job at once; the claim loop refills the freed
worker while the outcome is being committed.

Shutdown: draining stops the claim loop; attempts still queued are handed back (released,
no attempt burnt); running ones get the grace period, then the workers' cancel scope
(whose deadline the :class:`~jobsvc.service.shutdown.Shutdown` moves) cancels them and
they are released too. Everything released goes through the recorder.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager

import attrs
import trio

from ..clock import Clock
from ..config import Settings
from ..errors import StoreUnavailable
from ..models import Cancelled, Failed, Job, JobState, Outcome, Released
from ..retry import Backoff, Rng, retry_delay
from ..store import ClaimRequest, ClaimResult, Finished, Store
from ..tasks import JobContext, Registry
from .attempts import Attempt, Attempts, Phase
from .executor import run_attempt, timed_out
from .handlers import Handlers
from .observer import Observer
from .recorder import FENCED, GAVE_UP, Recorded, Recorder
from .shutdown import Shutdown
from .waiters import Waiters

__all__ = ["CLAIM_WAIT", "ClaimTicket", "Runner"]

log = logging.getLogger("jobsvc")
job_log = logging.getLogger("jobsvc.job")

#: Backoff of the claim loop while the store is unavailable.
RETRY_MIN, RETRY_MAX = 0.1, 5.0
#: Seconds a cancelled handler gets to return before it is written off as stuck.
STUCK_AFTER = 1.0
#: Longest a submission waits for the claims under way before it gives up claiming its jobs
#: at insert (a claim takes milliseconds; see JobService.submit).
CLAIM_WAIT = 0.05


@attrs.define
class ClaimTicket:
    """A claim for the idle workers, reserved; whoever runs it sets ``result``."""

    request: ClaimRequest | None  #: None: nothing to claim now
    result: ClaimResult | None = None


class Runner:
    def __init__(
        self,
        *,
        store: Store,
        registry: Registry,
        settings: Settings,
        clock: Clock,
        rng: Rng,
        owner: str,
        attempts: Attempts,
        recorder: Recorder,
        waiters: Waiters,
        shutdown: Shutdown,
        observer: Observer,
    ) -> None:
        self._store = store
        self._registry = registry
        self._settings = settings
        self._clock = clock
        self._rng = rng
        self.owner = owner
        self._attempts = attempts
        self._recorder = recorder
        self._waiters = waiters
        self._shutdown = shutdown
        self._observer = observer
        #: how handlers are called: the event loop, threads, worker processes
        self.handlers = Handlers(workers=settings.workers, log_level=settings.log_level, log_format=settings.log_format)
        self._default_backoff = Backoff(base=settings.backoff_base, cap=settings.backoff_cap)
        self.tasks: Collection[str] = frozenset(registry.names())
        self._send, self._receive = trio.open_memory_channel[Attempt](settings.workers)
        #: the store may hold due jobs this process could run (claims must not skip them)
        self.backlog = True
        #: claims under way (their result may show a backlog)
        self._claiming = 0
        self._claims_done = trio.Event()  #: set (then replaced) when the last claim under way ends
        #: epoch time the next known job becomes due (None: none known)
        self._next_due: float | None = None
        self._wake = trio.Event()
        #: set when every worker has stopped (but for written-off ones) and every attempt was
        #: handed to the recorder
        self.done = trio.Event()
        #: attempts written off whose handler still runs
        self.stuck: set[Attempt] = set()
        self._live = 0  #: worker tasks that are not running a written-off handler
        self._live_done = trio.Event()
        self._workers: trio.Nursery | None = None
        self._stuck_wake = trio.Event()
        #: the time-limit watcher's sleep: it looks again at its deadline (see _watch_running)
        self._watch_timer = trio.CancelScope()
        attempts.on_stop = lambda: self._stuck_wake.set()  # the event is replaced on each look

    # -- what the other parts call -----------------------------------------------------

    def wake(self, *, claimable: bool = True, due_at: float | None = None) -> None:
        """Jobs may have become claimable (``claimable``), or will be at ``due_at``."""
        if claimable:
            self.backlog = True
            self._wake.set()
        if due_at is not None and (self._next_due is None or due_at < self._next_due):
            self._next_due = due_at
            self._wake.set()

    def can_claim_at_insert(self) -> bool:
        """A submission may claim its own jobs: no older due job waits in the store (none
        known, and no claim under way that may find some)."""
        return not self.backlog and not self._claiming and not self._shutdown.draining

    def only_claiming(self) -> bool:
        """Claims under way are all that keeps a submission from claiming at insert: no due
        job is known to wait (if they come back short of their limit, none does)."""
        return bool(self._claiming) and not self.backlog and not self._shutdown.draining

    async def claims_done(self) -> None:
        """Return once no claim is under way."""
        while self._claiming:
            await self._claims_done.wait()

    def deliver(self, jobs: Sequence[Job]) -> None:
        """Hand claimed jobs to the workers. Call it inside ``attempts.reserve(...)``."""
        for job in jobs:
            attempt = self._attempts.add(job)
            if self._shutdown.draining:
                self._finish(attempt, Released())
                continue
            try:
                self._send.send_nowait(attempt)  # queued + running <= workers == buffer: never blocks
            except (trio.ClosedResourceError, trio.BrokenResourceError, trio.WouldBlock):
                self._finish(attempt, Released())

    # -- running -----------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Recover, then run the workers and the claim loop until the shutdown has drained."""
        try:
            if not await self._recover():
                task_status.started()
                return
            async with trio.open_nursery() as watch:
                watch.start_soon(self._watch_running, name="jobsvc-time-limits")
                async with trio.open_nursery() as workers:
                    self._workers = workers
                    for _ in range(self._settings.workers):
                        self._start_worker()
                    async with trio.open_nursery() as intake:
                        intake.start_soon(self._claim_loop, name="jobsvc-claims")
                        intake.start_soon(self._watch_store, name="jobsvc-store-watcher")
                        task_status.started()
                        await self._shutdown.requested.wait()
                        intake.cancel_scope.cancel()
                    await self._send.aclose()  # workers release what is queued, finish, and exit
                    await self._live_done.wait()
                    # Every outcome is with the recorder now; a written-off handler may still
                    # run, and this nursery waits for it.
                    self._receive.close()
                    self._finalize()
                    watch.cancel_scope.cancel()
        finally:
            # Workers cancelled at the deadline (or the service cancelled from outside)
            # leave claimed jobs in the channel: hand them back.
            self._finalize()

    def _finalize(self) -> None:
        if self.done.is_set():
            return
        for attempt in self._attempts:
            if attempt.phase is Phase.QUEUED:
                self._finish(attempt, Released())
        self.done.set()
        self._recorder.close()
        self.handlers.close()

    def _start_worker(self) -> None:
        assert self._workers is not None
        self._live += 1
        self._workers.start_soon(self._work, self._receive.clone(), name=f"jobsvc-worker-{self._live}")

    async def _recover(self) -> bool:
        """Take back the jobs a crashed process left running. False if shut down meanwhile."""
        delay = RETRY_MIN
        while True:
            try:
                rescued = await self._store.rescue(
                    now=self._clock.now(), max_rescues=self._settings.max_rescues, expired_only=not self._store.exclusive
                )
            except StoreUnavailable as exc:
                log.warning("recovery: store unavailable (%s); retrying in %.1fs", exc, delay)
                with trio.move_on_after(delay):
                    await self._shutdown.requested.wait()
                if self._shutdown.draining:
                    return False
                delay = min(delay * 2, RETRY_MAX)
                continue
            if rescued:
                log.info("recovered %d job(s) left running by a previous process", len(rescued))
            for job in rescued:
                self._observer.job_event("rescued" if job.state is JobState.PENDING else job.state.value, job)
                if job.is_final:
                    self._waiters.notify(job.id)
            return True

    async def _work(self, receive: trio.MemoryReceiveChannel[Attempt]) -> None:
        attempt: Attempt | None = None
        try:
            with trio.CancelScope() as scope:
                self._shutdown.attach(scope)  # cancelled at the end of the grace
                async with receive:
                    async for attempt in receive:
                        try:
                            await self._run(attempt)
                        finally:
                            attempt.ended.set()
                        if attempt.written_off:  # another worker has taken this one's place
                            return
        finally:
            if attempt is None or not attempt.written_off:
                self._worker_ended()

    def _worker_ended(self) -> None:
        self._live -= 1
        if self._live == 0:
            self._live_done.set()

    async def _run(self, attempt: Attempt) -> None:
        """Run one attempt: skip it, hand it back, or run its handler and hand over the outcome."""
        for old in self._attempts.superseded(attempt):  # stopped when this one was claimed
            await old.ended.wait()
        if attempt.lost:  # its lease was lost while it waited: nothing to write
            self._attempts.settle(attempt)
            return
        if self._shutdown.draining:
            self._finish(attempt, Released())
            return
        job = attempt.job
        spec = self._registry.get(job.task)
        if spec is None:  # claims are filtered by task; this is a safety net
            log.warning("job %s: task %r is not registered here; handing it back", job.id, job.task)
            self._finish(attempt, Released())
            return
        ctx = JobContext(
            job_id=job.id,
            task=job.task,
            attempt=job.attempts,
            max_attempts=job.max_attempts,
            lease_token=job.lease_token,
            log=logging.LoggerAdapter(job_log, {"job_id": job.id, "task": job.task, "attempt": job.attempts}),
            rng=self._rng,
        )
        timeout = job.timeout or spec.timeout or self._settings.timeout
        attempt.phase = Phase.RUNNING
        attempt.started_at = started = trio.current_time()
        attempt.timeout = timeout
        if started + timeout < self._watch_timer.deadline:
            self._watch_timer.deadline = started + timeout  # the watcher ends it in time
        self._observer.job_event("started", job, waited=max(0.0, self._clock.now() - job.run_at))
        try:
            outcome = await run_attempt(
                job,
                spec,
                ctx,
                scope=attempt.scope,
                timeout=timeout,
                stopped=lambda: attempt.stop_reason is not None,
                handlers=self.handlers,
            )
        except BaseException:
            # The shutdown deadline (or a forced stop) cancelled the handler: hand the job
            # back without burning the attempt, and let the cancel through.
            if attempt.written_off:
                self._returned_after_write_off(attempt)
            else:
                self._finish(attempt, Released())
            raise
        if attempt.written_off:
            self._returned_after_write_off(attempt)
            return
        attempt.ended_at = trio.current_time()
        self._observer.attempt_finished(job, outcome, attempt.ended_at - started)
        self._finish(attempt, outcome)

    # -- handlers that ignore their cancellation ----------------------------------------

    def _cancelled_at(self, attempt: Attempt) -> float:
        """Trio time at which the running ``attempt`` was (or will be) cancelled."""
        assert attempt.started_at is not None and attempt.timeout is not None
        at = min(attempt.started_at + attempt.timeout, self._shutdown.cancels_at)
        return at if attempt.stopped_at is None else min(at, attempt.stopped_at)

    async def _watch_running(self) -> None:
        """End the running attempts at their time limit, and write off those whose handler
        still runs ``STUCK_AFTER`` seconds after its cancellation.

        A time limit is not a deadline on the attempt's cancel scope: trio registers each
        scope deadline on entry and drops it on exit, which cost about 3 % of the engine's
        instructions per job when nearly every attempt ends long before its limit. This one task
        sleeps until the earliest limit (or the earliest moment an attempt could be stuck)
        and cancels that attempt's scope; a cancel without a ``stop_reason`` is a timeout
        (:func:`~jobsvc.service.executor.run_attempt`). An attempt that starts with a sooner
        limit brings its sleep's deadline forward (no wake-up: most attempts end long before
        the watcher looks); a stopped attempt and the shutdown wake it."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._wake_on_shutdown)
            while True:
                self._stuck_wake = trio.Event()
                now = trio.current_time()
                check_at = math.inf
                for attempt in self._attempts:
                    if attempt.phase is not Phase.RUNNING or attempt.written_off:
                        continue
                    assert attempt.started_at is not None and attempt.timeout is not None
                    if not attempt.scope.cancel_called:
                        limit = attempt.started_at + attempt.timeout
                        if limit <= now:
                            attempt.scope.cancel()  # its time limit (no stop_reason)
                        else:
                            check_at = min(check_at, limit)
                    stuck_at = self._cancelled_at(attempt) + STUCK_AFTER
                    if stuck_at <= now:
                        self.write_off(attempt)
                    else:
                        check_at = min(check_at, stuck_at)
                with trio.move_on_at(check_at) as self._watch_timer:
                    await self._stuck_wake.wait()

    async def _wake_on_shutdown(self) -> None:
        await self._shutdown.requested.wait()
        self._stuck_wake.set()
        await self._shutdown.forced.wait()
        self._stuck_wake.set()

    def write_off(self, attempt: Attempt) -> None:
        """The attempt's handler ignored its cancellation (a blocking call in an ``async
        def``, ``trio.to_thread.run_sync`` without ``abandon_on_cancel``): decide its outcome
        without it, as it would have been had the handler returned, free its job (a retry may
        run elsewhere: this attempt's lease is gone, so nothing it does later can be
        written), and put a new worker in its place. The handler runs on, counted in
        :attr:`stuck`, until it returns; its result is then thrown away."""
        assert attempt.phase is Phase.RUNNING and attempt.started_at is not None and attempt.timeout is not None
        attempt.written_off = True
        self.stuck.add(attempt)
        job = attempt.job
        outcome: Outcome
        if attempt.stop_reason == "cancelled":
            outcome, why = Cancelled(), "its cancel"
        elif attempt.stop_reason is not None:  # its lease was lost: _finish writes nothing
            outcome, why = Released(), "the loss of its lease"
        elif self._shutdown.cancels_at < attempt.started_at + attempt.timeout:
            outcome, why = Released(), "the shutdown"
        else:
            outcome, why = timed_out(attempt.timeout), f"its {attempt.timeout:g}s timeout"
        log.error(
            "job %s attempt %d (task %s): the handler still runs %.1fs after %s; written off "
            "(%s). It ignores cancellation: blocking code in an async def? Make it a plain def "
            "(it then runs in a thread) or @task(..., process=True).",
            job.id, job.attempts, job.task, trio.current_time() - self._cancelled_at(attempt), why,
            type(outcome).__name__ if not isinstance(outcome, Failed) else "Timeout",
        )
        attempt.ended_at = trio.current_time()
        if not isinstance(outcome, Released):
            self._observer.attempt_finished(job, outcome, attempt.ended_at - attempt.started_at)
        self._finish(attempt, outcome)
        attempt.ended.set()  # a new attempt of its job may start: this one holds nothing
        self._start_worker()
        self._worker_ended()

    def _returned_after_write_off(self, attempt: Attempt) -> None:
        self.stuck.discard(attempt)
        assert attempt.ended_at is not None
        log.warning(
            "job %s attempt %d (task %s): the written-off handler returned %.1fs later; its result is discarded",
            attempt.job.id, attempt.job.attempts, attempt.job.task, trio.current_time() - attempt.ended_at,
        )

    def _finish(self, attempt: Attempt, outcome: Outcome) -> None:
        """The attempt ended: hand its outcome to the recorder; its worker is free now."""
        attempt.phase = Phase.RECORDING  # its worker is free now, before the outcome's commit
        if self.backlog:
            self._wake.set()
        if attempt.lost:
            self._attempts.settle(attempt)  # fenced anyway: nothing to write
            return
        job = attempt.job
        delay = None
        if isinstance(outcome, Failed) and not outcome.permanent:
            spec = self._registry.get(job.task)
            backoff = (spec.backoff if spec else None) or self._default_backoff
            delay = retry_delay(attempt=job.attempts, max_attempts=job.max_attempts, backoff=backoff, rng=self._rng)
        self._recorder.put(Finished(job, outcome, self._clock.now(), delay), functools.partial(self._recorded, attempt, outcome))

    def _recorded(self, attempt: Attempt, outcome: Outcome, result: Recorded) -> None:
        self._attempts.settle(attempt)
        job = attempt.job
        if result is FENCED:  # the attempt had lost its job: its outcome is discarded
            self._observer.job_event("fenced", job)
            return
        if result is GAVE_UP:
            log.error("job %s: its outcome could not be written; it will be rescued", job.id)
            return
        assert isinstance(result, Job)
        event = "released" if isinstance(outcome, Released) and result.state is JobState.PENDING else result.state.value
        if attempt.started_at is not None and attempt.ended_at is not None:
            self._observer.job_event(event, result, seconds=attempt.ended_at - attempt.started_at)
        else:
            self._observer.job_event(event, result)
        if result.is_final:
            self._waiters.notify(result.id)
        elif result.state is JobState.RETRYING:
            self.wake(claimable=False, due_at=result.run_at)
        else:  # released: back to pending
            self.wake()

    # -- the claim loop ----------------------------------------------------------------

    async def _claim_loop(self) -> None:
        failures = 0
        while True:
            wake = self._wake = trio.Event()
            if self.backlog and not self._shutdown.draining and self._attempts.idle() > 0:
                try:
                    await self._claim()
                    failures = 0
                    continue
                except Exception as exc:  # noqa: BLE001 - never wedge: back off and try again
                    delay = min(RETRY_MAX, RETRY_MIN * 2**failures)
                    failures += 1
                    if isinstance(exc, StoreUnavailable):
                        log.warning("claims: store unavailable (%s); retrying in %.1fs", exc, delay)
                    else:
                        log.exception("claims: unexpected error; retrying in %.1fs", delay)
                    await trio.sleep(delay)
                    continue
            look_at = trio.current_time() + self._settings.poll
            if self._next_due is not None:
                look_at = min(look_at, trio.current_time() + max(0.0, self._next_due - self._clock.now()))
            with trio.move_on_at(look_at) as timer:
                await wake.wait()
            if timer.cancelled_caught:  # a job became due, or the poll came round
                self.backlog = True
                self._next_due = None

    @contextmanager
    def ticket(self) -> Iterator[ClaimTicket]:
        """Reserve the idle workers for a claim (when the store may hold due jobs) and
        deliver what it claimed."""
        if not self.backlog or self._shutdown.draining:
            yield ClaimTicket(None)
            return
        with self._attempts.reserve(self._attempts.idle()) as n:
            if n == 0:
                yield ClaimTicket(None)
                return
            # Cleared before looking: whatever makes jobs claimable meanwhile sets them again.
            self.backlog = False
            self._next_due = None
            ticket = ClaimTicket(
                ClaimRequest(owner=self.owner, now=self._clock.now(), lease=self._settings.lease, limit=n, tasks=self.tasks)
            )
            self._claiming += 1
            try:
                yield ticket
            finally:
                self._claiming -= 1
                if not self._claiming:
                    self._claims_done.set()
                    self._claims_done = trio.Event()
                result = ticket.result
                if result is None:  # the transaction failed: look again later
                    self.backlog = True
                else:
                    self.deliver(result.jobs)
        if result is None:
            return
        if len(result.jobs) == n:
            self.backlog = True  # there may be more
            return
        # A due job left unclaimed is locked by another instance's claim: it is theirs.
        due = result.next_run_at
        if due is not None and due > self._clock.now():
            self.wake(claimable=False, due_at=due)

    async def _claim(self) -> None:
        """Claim as many due jobs as there are idle workers, in a transaction of its own."""
        with self.ticket() as ticket:
            if ticket.request is None:
                await trio.lowlevel.checkpoint()
            else:
                # Shielded: once the store has claimed jobs they must reach a worker (or be
                # released), never be dropped by a cancellation.
                with trio.CancelScope(shield=True):
                    ticket.result = await self._store.claim(
                        owner=ticket.request.owner,
                        now=ticket.request.now,
                        lease=ticket.request.lease,
                        limit=ticket.request.limit,
                        tasks=ticket.request.tasks,
                    )

    async def _watch_store(self) -> None:
        """Other instances' NOTIFY (PostgreSQL) wakes the claim loop."""
        while True:
            try:
                await self._store.wait_for_work()
            except Exception:  # noqa: BLE001 - the poll still finds the work; try again soon
                log.exception("store watcher: unexpected error")
                await trio.sleep(self._settings.poll)
            self.wake()

    # -- reading -----------------------------------------------------------------------

    def statistics(self) -> dict[str, object]:
        stats = self._send.statistics()
        return {
            "workers": self._settings.workers,
            "busy_workers": self._attempts.busy() - stats.current_buffer_used,
            "channel_buffered": stats.current_buffer_used,
            "recording": sum(1 for a in self._attempts if a.phase is Phase.RECORDING),
            "abandoned_threads": self.handlers.abandoned,
            "stuck_handlers": len(self.stuck),
            "handler_processes": self.handlers.processes,
        }
