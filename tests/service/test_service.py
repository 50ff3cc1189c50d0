"""The service on the in-memory store under trio's autojump clock: exact virtual times.

The clock fixture's epoch makes ``service.clock.now() == EPOCH + trio.current_time()``,
and jitter is pinned at its ceiling, so every backoff is exact.
"""

from __future__ import annotations

from typing import Any

import attrs
import pytest
import trio
import trio.testing

from jobsvc import models
from jobsvc.codec import JobRequest
from jobsvc.errors import ServiceUnavailable, StoreUnavailable, TooManyPending
from jobsvc.models import ErrorRecord, Job, JobState
from jobsvc.service import JobService
from jobsvc.store import MemoryStore

EPOCH = float(2**30)


async def submit(service: JobService, task: str, payload: Any = None, **fields: Any) -> Job:
    [done] = await service.submit([JobRequest(task=task, payload=payload, **fields)])
    return done.job


async def test_fail_twice_then_succeed_finishes_at_the_backoff_sum(service: JobService, autojump_clock: Any) -> None:
    """Two failures with base 1 s: retries at t=1 and t=1+2; success at exactly t=3."""
    job = await submit(service, "flaky", {"fail_times": 2})
    done = await service.wait(job.id, 100)
    assert trio.current_time() == 3.0
    assert (done.state, done.attempts, done.result) == (JobState.SUCCEEDED, 3, {"attempt": 3})
    assert [(e.attempt, e.at - EPOCH, e.type) for e in done.errors] == [(1, 0.0, "Boom"), (2, 1.0, "Boom")]
    assert done.finished_at == EPOCH + 3.0


async def test_out_of_attempts_is_dead_with_history(service: JobService, autojump_clock: Any) -> None:
    """max_attempts=3 failing always: dead after attempts at t=0, 1, 3."""
    job = await submit(service, "flaky", {"fail_times": 99}, max_attempts=3)
    done = await service.wait(job.id, 100)
    assert (done.state, done.attempts, trio.current_time()) == (JobState.DEAD, 3, 3.0)
    assert [e.message for e in done.errors] == ["failure 1 of 99", "failure 2 of 99", "failure 3 of 99"]


async def test_timeout_fires_at_its_deadline(service: JobService, autojump_clock: Any) -> None:
    """'hang' has timeout 10 s, 2 attempts, 1 s backoff: timeouts at t=10 and t=21."""
    job = await submit(service, "hang")
    done = await service.wait(job.id, 100)
    assert (done.state, trio.current_time()) == (JobState.DEAD, 21.0)
    assert [(e.type, e.at - EPOCH) for e in done.errors] == [("Timeout", 10.0), ("Timeout", 21.0)]


async def test_per_job_timeout_overrides_the_task(service: JobService, autojump_clock: Any) -> None:
    """A submission's timeout wins over the task's."""
    job = await submit(service, "nap", {"seconds": 5}, timeout=2, max_attempts=1)
    done = await service.wait(job.id, 100)
    assert (done.state, done.errors[0].type, trio.current_time()) == (JobState.DEAD, "Timeout", 2.0)


async def test_permanent_error_skips_the_retries(service: JobService, autojump_clock: Any) -> None:
    """PermanentError dead-letters after one attempt."""
    job = await submit(service, "permanent")
    done = await service.wait(job.id, 100)
    assert (done.state, done.attempts, trio.current_time()) == (JobState.DEAD, 1, 0.0)
    assert done.errors[0].type == "PermanentError"


async def test_a_result_that_is_not_json_fails_the_attempt(service: JobService, autojump_clock: Any) -> None:
    """A handler returning a non-JSON value fails with TypeError (and is retried)."""
    job = await submit(service, "unserializable", max_attempts=1)
    done = await service.wait(job.id, 100)
    assert (done.state, done.errors[0].type) == (JobState.DEAD, "TypeError")


async def test_overflow_is_dispatched_from_the_store(start_service: Any, autojump_clock: Any) -> None:
    """With 2 workers, ten 1-second jobs finish in five waves: the last at t=5."""
    service = await start_service(workers=2)
    jobs = [await submit(service, "nap", {"seconds": 1}) for _ in range(10)]
    finished = [await service.wait(j.id, 100) for j in jobs]
    assert all(j.state is JobState.SUCCEEDED for j in finished)
    assert sorted(j.finished_at - EPOCH for j in finished) == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]


async def test_priority_decides_who_runs_next(start_service: Any, autojump_clock: Any) -> None:
    """One busy worker: queued jobs then run highest priority first."""
    service = await start_service(workers=1)
    await submit(service, "nap", {"seconds": 1})
    low = await submit(service, "nap", {"seconds": 1}, priority=-5)
    high = await submit(service, "nap", {"seconds": 1}, priority=5)
    mid = await submit(service, "nap", {"seconds": 1})
    done = {j.id: (await service.wait(j.id, 100)).finished_at - EPOCH for j in (low, high, mid)}
    assert (done[high.id], done[mid.id], done[low.id]) == (2.0, 3.0, 4.0)


async def test_delayed_job_runs_at_its_time(service: JobService, autojump_clock: Any) -> None:
    """delay=7 runs at exactly t=7."""
    job = await submit(service, "echo", "hi", delay=7)
    assert job.run_at == EPOCH + 7
    done = await service.wait(job.id, 100)
    assert (done.state, done.result, done.finished_at) == (JobState.SUCCEEDED, "hi", EPOCH + 7)


async def test_graceful_shutdown_lets_short_jobs_finish(service: JobService, autojump_clock: Any) -> None:
    """A 2 s job still running at shutdown (t=1) finishes at t=2, within the 5 s grace."""
    job = await submit(service, "nap", {"seconds": 2})
    await trio.sleep(1)
    service.begin_shutdown()
    await service.stopped.wait()
    assert trio.current_time() == 2.0
    stored = await service.store.get(job.id)
    assert stored is not None and stored.state is JobState.SUCCEEDED


async def test_drain_deadline_cancels_and_releases(service: JobService, autojump_clock: Any) -> None:
    """A 100 s job at shutdown (t=1, grace 5) is cancelled at t=6 and released: pending,
    no attempt burnt, nothing left running."""
    job = await submit(service, "nap", {"seconds": 100})
    await trio.sleep(1)
    service.begin_shutdown()
    await service.stopped.wait()
    assert trio.current_time() == 6.0
    stored = await service.store.get(job.id)
    assert stored is not None
    assert (stored.state, stored.attempts, stored.lease_owner) == (JobState.PENDING, 0, None)
    counts = await service.store.count_by_state()
    assert counts[JobState.RUNNING] == 0


async def test_force_stop_releases_at_once(service: JobService, autojump_clock: Any) -> None:
    """A second signal (force_stop) cancels the running job now; it is still released."""
    job = await submit(service, "nap", {"seconds": 100})
    await trio.sleep(1)
    service.begin_shutdown()
    await trio.sleep(1)
    service.force_stop()
    await service.stopped.wait()
    assert trio.current_time() == 2.0
    stored = await service.store.get(job.id)
    assert stored is not None and stored.state is JobState.PENDING and stored.attempts == 0


async def test_submissions_are_refused_while_draining(service: JobService) -> None:
    """After begin_shutdown, submit raises ServiceUnavailable (HTTP 503)."""
    service.begin_shutdown()
    with pytest.raises(ServiceUnavailable):
        await submit(service, "noop")
    assert (await service.ready()) == (False, "draining")


async def test_cancel_a_running_job(service: JobService, autojump_clock: Any) -> None:
    """Cancelling a running handler goes through its cancel scope: cancelled at t=1."""
    job = await submit(service, "hang")
    await trio.sleep(1)
    flagged = await service.cancel(job.id)
    assert flagged.state is JobState.RUNNING and flagged.cancel_requested
    done = await service.wait(job.id, 100)
    assert (done.state, done.finished_at) == (JobState.CANCELLED, EPOCH + 1)


async def test_cancel_a_waiting_job(service: JobService, autojump_clock: Any) -> None:
    """A delayed job cancelled before its time never runs."""
    job = await submit(service, "echo", 1, delay=10)
    cancelled = await service.cancel(job.id)
    assert cancelled.state is JobState.CANCELLED
    await trio.sleep(20)
    stored = await service.store.get(job.id)
    assert stored is not None and stored.state is JobState.CANCELLED and stored.attempts == 0


async def test_retry_from_the_dead_letter_queue(service: JobService, autojump_clock: Any) -> None:
    """A dead job redriven gets fresh attempts and runs again."""
    job = await submit(service, "flaky", {"fail_times": 1}, max_attempts=1)
    dead = await service.wait(job.id, 100)
    assert dead.state is JobState.DEAD
    again = await service.retry(job.id)
    assert (again.state, again.attempts) == (JobState.PENDING, 0)
    done = await service.wait(job.id, 100)
    # flaky fails attempt 1 again (attempts restart), so the redriven job dies again
    assert (done.state, len(done.errors)) == (JobState.DEAD, 2)


async def test_too_many_pending(start_service: Any, autojump_clock: Any) -> None:
    """Above max_pending waiting jobs, submissions get TooManyPending (HTTP 429)."""
    service = await start_service(max_pending=2)
    await submit(service, "echo", 1, delay=60)
    await submit(service, "echo", 2, delay=60)
    with pytest.raises(TooManyPending, match="2 jobs are pending"):
        await submit(service, "echo", 3, delay=60)


class SharedStore(MemoryStore):
    """A memory store that pretends other processes use it too (like PostgreSQL)."""

    exclusive = False


def orphan(job_id: str, *, lease_expires_at: float, rescues: int = 0) -> Job:
    job = Job(id=job_id, task="echo", payload="x", max_attempts=3, run_at=EPOCH, created_at=EPOCH, updated_at=EPOCH, rescues=rescues)
    return models.claim(job, owner="crashed-instance", now=EPOCH, lease=lease_expires_at - EPOCH)


async def test_startup_rescues_every_running_job_of_an_exclusive_store(start_service: Any, autojump_clock: Any) -> None:
    """SQLite/memory: a job left running by a crash is rescued at start and runs."""
    store = MemoryStore()
    await store.insert([orphan("o1", lease_expires_at=EPOCH + 1000)])
    service = await start_service(store=store)
    done = await service.wait("o1", 100)
    assert (done.state, done.rescues, done.attempts, done.finished_at) == (JobState.SUCCEEDED, 1, 1, EPOCH)


async def test_expired_lease_is_rescued_by_the_sweep(start_service: Any, autojump_clock: Any) -> None:
    """Shared store: another owner's job is left alone until its lease expires (t=3),
    then the heartbeat sweep (every 1 s) rescues it and it runs."""
    store = SharedStore()
    await store.insert([orphan("o2", lease_expires_at=EPOCH + 3)])
    service = await start_service(store=store)
    await trio.sleep(2.5)
    running = await store.get("o2")
    assert running is not None and running.state is JobState.RUNNING
    done = await service.wait("o2", 100)
    assert (done.state, done.rescues, done.finished_at) == (JobState.SUCCEEDED, 1, EPOCH + 3)


async def test_job_that_keeps_killing_workers_is_quarantined(start_service: Any, autojump_clock: Any) -> None:
    """The third rescue sends the job to the dead-letter queue with WorkerLost."""
    store = MemoryStore()
    await store.insert([orphan("poison", lease_expires_at=EPOCH, rescues=2)])
    await start_service(store=store)
    stored = await store.get("poison")
    assert stored is not None and stored.state is JobState.DEAD and stored.errors[-1].type == "WorkerLost"


async def test_heartbeats_keep_a_long_job_leased(start_service: Any, autojump_clock: Any) -> None:
    """A 20 s job with a 5 s lease is never rescued: heartbeats renew its lease."""
    store = SharedStore()
    service = await start_service(store=store)
    job = await submit(service, "nap", {"seconds": 20})
    done = await service.wait(job.id, 100)
    assert (done.state, done.rescues, done.finished_at) == (JobState.SUCCEEDED, 0, EPOCH + 20)


@attrs.define
class FlakyStore(MemoryStore):
    """Fails the first ``failures`` saves with StoreUnavailable."""

    failures: int = 0

    def __attrs_post_init__(self) -> None:
        MemoryStore.__init__(self)

    async def save(self, new: Job, *, expected: Job) -> bool:
        if self.failures:
            self.failures -= 1
            raise StoreUnavailable("database is locked")
        return await super().save(new, expected=expected)


async def test_completion_write_is_retried_while_the_store_is_down(start_service: Any, autojump_clock: Any) -> None:
    """The outcome of a finished attempt is retried with backoff (0.1 s, 0.2 s) until saved."""
    store = FlakyStore(failures=2)
    service = await start_service(store=store)
    job = await submit(service, "echo", "ok")
    done = await service.wait(job.id, 100)
    assert (done.state, done.result) == (JobState.SUCCEEDED, "ok")
    assert trio.current_time() == pytest.approx(0.3)


async def test_idempotent_resubmission(service: JobService) -> None:
    """Same id and body: the first job, created=False; nothing new is inserted."""
    [first] = await service.submit([JobRequest(task="echo", payload=1, id="same")])
    [again] = await service.submit([JobRequest(task="echo", payload=1, id="same")])
    assert first.created and not again.created and again.job.id == "same"
    assert len(await service.list_jobs()) == 1


@attrs.define
class FailingClaims(MemoryStore):
    """claim_due raises ``errors`` in turn before working."""

    errors: list[Exception] = attrs.field(factory=list)

    def __attrs_post_init__(self) -> None:
        MemoryStore.__init__(self)

    async def claim_due(self, **kwargs: Any) -> list[Job]:
        if self.errors:
            raise self.errors.pop(0)
        return await super().claim_due(**kwargs)


async def test_dispatcher_backs_off_and_recovers(start_service: Any, autojump_clock: Any) -> None:
    """The dispatcher survives store outages and even unexpected errors: it retries after
    0.1 s, then 0.2 s, and the waiting job runs at t=0.3."""
    store = FailingClaims(errors=[StoreUnavailable("down"), RuntimeError("bug")])
    [waiting] = await store.insert([Job(id="w", task="echo", payload=1, max_attempts=1, run_at=EPOCH, created_at=EPOCH, updated_at=EPOCH)])
    service = await start_service(store=store)
    done = await service.wait("w", 100)
    assert done.state is JobState.SUCCEEDED and done.finished_at == pytest.approx(EPOCH + 0.3, abs=1e-6)
    assert waiting.job.state is JobState.PENDING


async def test_nothing_is_left_running_after_shutdown_with_a_full_channel(start_service: Any, autojump_clock: Any) -> None:
    """Claimed jobs waiting in the channel at shutdown are released, not left running."""
    service = await start_service(workers=3, grace=1)
    jobs = [await submit(service, "nap", {"seconds": 50}) for _ in range(10)]
    await trio.sleep(1)
    service.begin_shutdown()
    await service.stopped.wait()
    assert trio.current_time() == 2.0
    states = [(await service.store.get(j.id)).state for j in jobs]  # type: ignore[union-attr]
    stuck = [await service.store.get(j.id) for j in jobs]
    assert states.count(JobState.PENDING) == 10, [s for s in stuck if s and s.state is not JobState.PENDING]
    for job in jobs:
        stored = await service.store.get(job.id)
        assert stored is not None and stored.attempts == 0 and stored.lease_owner is None


async def test_never_more_running_jobs_than_workers(start_service: Any, autojump_clock: Any) -> None:
    """Claims follow idle workers: at no time are more jobs 'running' than there are workers
    (a crash can then only orphan jobs that were really executing)."""
    service = await start_service(workers=3)
    jobs = [await submit(service, "nap", {"seconds": 1 + i % 3}) for i in range(20)]
    most = 0
    while True:
        counts = await service.store.count_by_state()
        most = max(most, counts[JobState.RUNNING])
        if counts[JobState.SUCCEEDED] == len(jobs):
            break
        await trio.sleep(0.25)
    assert most == 3


# -- regressions from the review of the worker/shutdown paths --------------------------


async def test_a_result_that_cannot_be_stored_fails_the_attempt(start_service: Any, tmp_path: Any) -> None:
    """A result with a lone surrogate fails its attempt (UnicodeEncodeError) instead of
    crashing the service at write time; an error message with one is stored escaped.
    (SQLite, real clock: the store's encoder is the one that matters.)"""
    from jobsvc.store import open_store

    async with open_store(f"sqlite:///{tmp_path / 'j.db'}") as store:
        service = await start_service(store=store)
        with trio.fail_after(10):
            bad_result = await service.wait((await submit(service, "surrogate_result")).id, 10)
            bad_error = await service.wait((await submit(service, "surrogate_error")).id, 10)
            fine = await service.wait((await submit(service, "echo", "still alive")).id, 10)
        assert (bad_result.state, bad_result.errors[0].type) == (JobState.DEAD, "UnicodeEncodeError")
        assert (bad_error.state, bad_error.errors[0].message) == (JobState.DEAD, "no such file: caf\\udce9.txt")
        assert (fine.state, fine.result) == (JobState.SUCCEEDED, "still alive")
        service.force_stop()


async def test_redrive_of_a_task_not_registered_here_does_not_run_it(service: JobService, autojump_clock: Any) -> None:
    """A dead job whose task this instance does not know is redriven to pending but never
    handed to a local worker (and nothing crashes)."""
    ghost = models.fail(
        models.claim(Job(id="g", task="ghost", payload=None, max_attempts=1, run_at=EPOCH, created_at=EPOCH, updated_at=EPOCH), owner="x", now=EPOCH, lease=5),
        error=ErrorRecord.make(attempt=1, at=EPOCH, type="E", message="m"),
        now=EPOCH,
        delay=None,
    )
    await service.store.insert([ghost])
    assert (await service.retry("g")).state is JobState.PENDING
    await trio.sleep(10)
    stored = await service.store.get("g")
    assert stored is not None and (stored.state, stored.attempts) == (JobState.PENDING, 0)
    assert (await service.wait((await submit(service, "echo", 1)).id, 10)).state is JobState.SUCCEEDED


async def test_handler_with_a_nursery_is_released_at_the_deadline(service: JobService, autojump_clock: Any) -> None:
    """Cancellation that reaches the worker inside an exception group (the handler's own
    nursery) still releases the job: nothing is left running."""
    job = await submit(service, "nursery_hang")
    await trio.sleep(1)
    service.begin_shutdown()
    await service.stopped.wait()
    assert trio.current_time() == 6.0
    stored = await service.store.get(job.id)
    assert stored is not None and (stored.state, stored.attempts, stored.lease_owner) == (JobState.PENDING, 0, None)


@attrs.define
class OutageStore(MemoryStore):
    """save and modify fail with StoreUnavailable until trio time ``until``."""

    until: float = 0.0

    def __attrs_post_init__(self) -> None:
        MemoryStore.__init__(self)

    async def save(self, new: Job, *, expected: Job) -> bool:
        if trio.current_time() < self.until:
            raise StoreUnavailable("disk I/O error")
        return await super().save(new, expected=expected)


async def test_an_outcome_that_cannot_be_written_is_not_kept_alive(start_service: Any, autojump_clock: Any) -> None:
    """If an outcome cannot be written within RECORD_DEADLINE (30 s), the job is no longer
    heartbeated: its lease lapses, it is rescued and runs again once the store is back."""
    store = OutageStore(until=40.0)
    service = await start_service(store=store)
    job = await submit(service, "echo", "x")
    done = await service.wait(job.id, 200)
    assert (done.state, done.result) == (JobState.SUCCEEDED, "x")
    # Outcome given up at t=30; the lease (renewed last at t=29, or at t=30 when that tick
    # runs first) lapses 5 s later, when the sweep rescues the job and it runs again; that
    # outcome is written once the store is back.
    assert (done.rescues, done.lease_token) == (1, 2)
    assert done.finished_at in (EPOCH + 34, EPOCH + 35)
    assert trio.current_time() >= 40


async def test_a_lost_lease_stops_the_local_handler(start_service: Any, autojump_clock: Any) -> None:
    """When another instance rescues a job this one still runs (our heartbeats failed), the
    next heartbeat sees it and cancels the local handler; its outcome is fenced; the job
    then runs again under a new token, and nothing crashes."""
    store = SharedStore()
    service = await start_service(store=store)
    job = await submit(service, "nap", {"seconds": 3})
    await trio.sleep(0.5)
    # Another instance's sweep takes the job back (as if our lease had expired).
    await store.modify(job.id, lambda j: models.rescue(j, now=EPOCH + 0.5, max_rescues=3))
    done = await service.wait(job.id, 100)
    assert (done.state, done.lease_token, done.rescues) == (JobState.SUCCEEDED, 2, 1)
    assert done.finished_at == EPOCH + 4.0  # re-claimed at t=1 (heartbeat -> wake), 3 s nap


@attrs.define
class CancelDuringWrite(MemoryStore):
    """A client's cancel lands just before the worker's outcome write (the first modify)."""

    armed: bool = True

    def __attrs_post_init__(self) -> None:
        MemoryStore.__init__(self)

    async def modify(self, job_id: str, change: Any) -> Job:
        if self.armed:
            self.armed = False
            await super().modify(job_id, lambda j: models.request_cancel(j, now=j.updated_at))
        return await super().modify(job_id, change)


async def test_a_cancel_during_the_outcome_write_is_not_lost(start_service: Any, autojump_clock: Any) -> None:
    """A failed attempt that would retry becomes cancelled if a cancel arrived meanwhile."""
    service = await start_service(store=CancelDuringWrite())
    job = await submit(service, "flaky", {"fail_times": 5})
    done = await service.wait(job.id, 100)
    assert (done.state, done.attempts) == (JobState.CANCELLED, 1)
    await trio.sleep(30)
    assert (await service.store.get(job.id)).attempts == 1  # type: ignore[union-attr]


async def test_cancelling_another_instances_job_leaves_nothing_behind(start_service: Any, autojump_clock: Any) -> None:
    """A cancel request for a job another instance runs is left to that instance; when the
    job is later redriven and runs here, it is not cancelled by a stale local request."""
    store = SharedStore()
    await store.insert([orphan("remote", lease_expires_at=EPOCH + 1000)])
    service = await start_service(store=store)
    flagged = await service.cancel("remote")
    assert flagged.state is JobState.RUNNING and flagged.cancel_requested
    # The other instance honours it.
    await store.modify("remote", lambda j: models.cancel(j, now=EPOCH + 1))
    await service.retry("remote")
    done = await service.wait("remote", 100)
    assert (done.state, done.result) == (JobState.SUCCEEDED, "x")


class DownStore(MemoryStore):
    async def rescue(self, **kwargs: Any) -> list[Job]:
        raise StoreUnavailable("connection refused")


async def test_shutdown_while_recovery_waits_for_the_store(nursery: trio.Nursery, registry: Any, settings: Any, clock: Any, autojump_clock: Any) -> None:
    """A service that starts while the store is down still stops on the first signal."""
    service = JobService(store=DownStore(), registry=registry, settings=settings, clock=clock)
    nursery.start_soon(service.run)
    await trio.sleep(3)
    service.begin_shutdown()
    with trio.fail_after(60):  # a regression fails here instead of hanging
        await service.stopped.wait()
    assert trio.current_time() == 3.0


async def test_long_polls_leave_no_state_behind(service: JobService, autojump_clock: Any) -> None:
    """A long poll that times out removes its wake-up event."""
    job = await submit(service, "echo", 1, delay=60)
    assert (await service.wait(job.id, 2)).state is JobState.PENDING
    assert trio.current_time() == 2.0
    assert service._finished == {} and service._waiters == {}


async def test_a_handler_error_raised_during_its_timeout_is_a_failed_attempt(service: JobService, autojump_clock: Any) -> None:
    """A handler whose nursery raises an error while being timed out ends the attempt as a
    Timeout (the service survives), not as a crash or a silent release."""
    job = await submit(service, "messy_nursery")
    done = await service.wait(job.id, 100)
    assert (done.state, done.attempts, done.errors[0].type, done.finished_at) == (JobState.DEAD, 1, "Timeout", EPOCH + 2)
    assert (await service.wait((await submit(service, "echo", 1)).id, 10)).state is JobState.SUCCEEDED


async def test_a_handler_error_raised_during_a_cancel_is_a_cancel(service: JobService, autojump_clock: Any) -> None:
    """The same handler cancelled by a client ends cancelled, and the service survives."""
    job = await submit(service, "messy_nursery")
    await trio.sleep(1)
    await service.cancel(job.id)
    done = await service.wait(job.id, 100)
    assert (done.state, done.finished_at) == (JobState.CANCELLED, EPOCH + 1)
    assert (await service.wait((await submit(service, "echo", 1)).id, 10)).state is JobState.SUCCEEDED


class SlowHeartbeat(MemoryStore):
    """The heartbeat's answer arrives 0.5 s after the store renewed (a thread hop or a
    network round trip)."""

    async def heartbeat(self, **kwargs: Any) -> dict[str, bool]:
        renewed = await super().heartbeat(**kwargs)
        await trio.sleep(0.5)
        return renewed


async def test_a_late_heartbeat_answer_leaves_no_stale_cancel(start_service: Any, autojump_clock: Any) -> None:
    """A cancel request reported by a heartbeat whose answer arrives after the attempt
    ended does not cancel the job's next run here."""
    service = await start_service(store=SlowHeartbeat())
    job = await submit(service, "slow_first_failure")
    await trio.sleep(0.95)
    await service.store.modify(job.id, lambda j: models.request_cancel(j, now=j.updated_at))  # via another instance
    first = await service.wait(job.id, 100)
    assert first.state is JobState.DEAD
    await trio.sleep(1)
    await service.retry(job.id)
    done = await service.wait(job.id, 100)
    assert (done.state, done.result) == (JobState.SUCCEEDED, "ok")
