"""The service on the in-memory store under trio's autojump clock: exact virtual times.

The clock fixture's epoch makes ``clock.now() == EPOCH + trio.current_time()``, and jitter
is pinned at its ceiling, so every backoff is exact.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
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
from jobsvc.service.runner import CLAIM_WAIT
from jobsvc.store import ClaimResult, Finished, InsertResult, MemoryStore

EPOCH = float(2**30)


async def submit(service: JobService, task: str, payload: Any = None, **fields: Any) -> Job:
    [done] = await service.submit([JobRequest(task=task, payload=payload, **fields)])
    return done.job


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
async def service(start_service: Any, store: MemoryStore) -> JobService:
    return await start_service(store=store)  # type: ignore[no-any-return]


async def stored(store: MemoryStore, job_id: str) -> Job:
    job = await store.get(job_id)
    assert job is not None
    return job


# -- retries, timeouts, priorities, delays --------------------------------------------


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


async def test_a_shorter_time_limit_started_later_still_fires_on_time(service: JobService, autojump_clock: Any) -> None:
    """Time limits are kept by one watcher, not by scope deadlines: an attempt started while
    a longer one runs (limit at t=50) still ends at its own limit (t=1+2), not later."""
    long = await submit(service, "nap", {"seconds": 100}, timeout=50, max_attempts=1)
    await trio.sleep(1)
    short = await submit(service, "nap", {"seconds": 100}, timeout=2, max_attempts=1)
    done = await service.wait(short.id, 100)
    assert (done.state, done.errors[0].type, done.errors[0].at - EPOCH, trio.current_time()) == (JobState.DEAD, "Timeout", 3.0, 3.0)
    done = await service.wait(long.id, 100)
    assert (done.state, done.errors[0].type, done.errors[0].at - EPOCH) == (JobState.DEAD, "Timeout", 50.0)


async def test_permanent_error_skips_the_retries(service: JobService, autojump_clock: Any) -> None:
    """PermanentError dead-letters after one attempt."""
    job = await submit(service, "permanent")
    done = await service.wait(job.id, 100)
    assert (done.state, done.attempts, trio.current_time()) == (JobState.DEAD, 1, 0.0)
    assert done.errors[0].type == "PermanentError"


async def test_a_result_that_is_not_json_fails_the_attempt(service: JobService, autojump_clock: Any) -> None:
    """A handler returning a non-JSON value fails with TypeError."""
    job = await submit(service, "unserializable", max_attempts=1)
    done = await service.wait(job.id, 100)
    assert (done.state, done.errors[0].type) == (JobState.DEAD, "TypeError")


@pytest.mark.parametrize("kind", ["SystemExit", "KeyboardInterrupt", "GeneratorExit", "BaseException"])
async def test_a_handler_raising_a_base_exception_fails_only_its_attempt(service: JobService, store: MemoryStore, kind: str, autojump_clock: Any) -> None:
    """A handler raising SystemExit, KeyboardInterrupt, GeneratorExit or a bare
    BaseException fails its attempt like any error (retried, then dead); the service
    survives and the next job runs."""
    job = await submit(service, "raise_base", kind, max_attempts=2)
    done = await service.wait(job.id, 100)
    assert (done.state, done.attempts, [e.type for e in done.errors]) == (JobState.DEAD, 2, [kind, kind])
    assert trio.current_time() == 1.0
    assert (await service.wait((await submit(service, "echo", "alive")).id, 10)).state is JobState.SUCCEEDED


async def test_overflow_is_claimed_from_the_store(start_service: Any, autojump_clock: Any) -> None:
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
    await trio.sleep(0.5)  # it runs (t=0 to 1); the next three wait for the worker
    low = await submit(service, "nap", {"seconds": 1}, priority=-5)
    high = await submit(service, "nap", {"seconds": 1}, priority=5)
    mid = await submit(service, "nap", {"seconds": 1})
    done = {j.id: (await service.wait(j.id, 100)).finished_at - EPOCH for j in (low, high, mid)}
    assert (done[high.id], done[mid.id], done[low.id]) == (2.0, 3.0, 4.0)


async def test_delayed_job_runs_at_its_time(service: JobService, autojump_clock: Any) -> None:
    """delay=7 runs at exactly t=7 (the claim loop sleeps until it is due)."""
    job = await submit(service, "echo", "hi", delay=7)
    assert job.run_at == EPOCH + 7
    done = await service.wait(job.id, 100)
    assert (done.state, done.result, done.finished_at) == (JobState.SUCCEEDED, "hi", EPOCH + 7)


async def test_a_delayed_job_runs_on_time_with_a_long_poll_interval(start_service: Any, autojump_clock: Any) -> None:
    """The claim loop wakes at the next due time, not at the next poll: a job due at t=2.5
    runs at t=2.5 with poll=100."""
    service = await start_service(poll=100)
    job = await submit(service, "echo", "x", delay=2.5)
    done = await service.wait(job.id, 100)
    assert done.finished_at == EPOCH + 2.5


async def test_the_demo_task_uses_the_services_random_source(start_service: Any, autojump_clock: Any) -> None:
    """jobsvc.demo's email draws from the service's rng: pinned high it always succeeds at
    t=0.05; the fixture's rng is the ceiling (1.0), above the failure rate."""
    service = await start_service()
    job = await submit(service, "email", "send welcome email")
    done = await service.wait(job.id, 100)
    assert (done.state, done.attempts, done.result, done.finished_at) == (JobState.SUCCEEDED, 1, {"sent": "send welcome email"}, EPOCH + 0.05)


async def test_the_demo_task_dead_letters_when_the_random_source_says_fail(nursery: trio.Nursery, settings: Any, clock: Any, autojump_clock: Any) -> None:
    """Pinned low, the demo email fails every attempt: 3 attempts with backoff 1 s then 2 s
    (its own Backoff, no jitter at the floor... the rng is 0: full jitter gives 0 s)."""
    from harness import serve_until_shutdown

    from jobsvc.tasks import Registry

    service = await nursery.start(
        lambda task_status: serve_until_shutdown(
            settings, store=MemoryStore(), registry=Registry.from_modules(["jobsvc.demo"]), clock=clock, rng=lambda low, high: low, task_status=task_status
        )
    )
    job = await submit(service, "email", "x")
    done = await service.wait(job.id, 100)
    assert (done.state, done.attempts) == (JobState.DEAD, 3)
    assert [e.message for e in done.errors] == ["Job processing failed. Network issues?"] * 3
    assert done.finished_at == EPOCH + 0.15  # three 0.05 s attempts, retried at once (jitter 0)


# -- shutdown ---------------------------------------------------------------------------


async def test_graceful_shutdown_lets_short_jobs_finish(service: JobService, store: MemoryStore, autojump_clock: Any) -> None:
    """A 2 s job still running at shutdown (t=1) finishes at t=2, within the 5 s grace."""
    job = await submit(service, "nap", {"seconds": 2})
    await trio.sleep(1)
    service.begin_shutdown()
    await service.stopped.wait()
    assert trio.current_time() == 2.0
    assert (await stored(store, job.id)).state is JobState.SUCCEEDED


async def test_drain_deadline_cancels_and_releases(service: JobService, store: MemoryStore, autojump_clock: Any) -> None:
    """A 100 s job at shutdown (t=1, grace 5) is cancelled at t=6 and released: pending,
    no attempt burnt, nothing left running."""
    job = await submit(service, "nap", {"seconds": 100})
    await trio.sleep(1)
    service.begin_shutdown()
    await service.stopped.wait()
    assert trio.current_time() == 6.0
    after = await stored(store, job.id)
    assert (after.state, after.attempts, after.lease_owner) == (JobState.PENDING, 0, None)
    assert (await store.counts()).by_state()[JobState.RUNNING] == 0


async def test_force_stop_releases_at_once(service: JobService, store: MemoryStore, autojump_clock: Any) -> None:
    """A second signal (force_stop) cancels the running job now; it is still released."""
    job = await submit(service, "nap", {"seconds": 100})
    await trio.sleep(1)
    service.begin_shutdown()
    await trio.sleep(1)
    service.force_stop()
    await service.stopped.wait()
    assert trio.current_time() == 2.0
    after = await stored(store, job.id)
    assert (after.state, after.attempts) == (JobState.PENDING, 0)


async def test_submissions_are_refused_while_draining(service: JobService) -> None:
    """After begin_shutdown, submit raises ServiceUnavailable (HTTP 503)."""
    service.begin_shutdown()
    with pytest.raises(ServiceUnavailable):
        await submit(service, "noop")
    assert (await service.ready()) == (False, "draining")


async def test_a_long_poll_returns_when_the_drain_begins(service: JobService, autojump_clock: Any) -> None:
    """A client long-polling a job that will not finish gets its answer as soon as the
    drain begins (t=3), not at the end of its wait (t=60)."""
    job = await submit(service, "echo", 1, delay=1000)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_begin_at, service, 3)
        polled = await service.wait(job.id, 60)
    assert (polled.state, trio.current_time()) == (JobState.PENDING, 3.0)


async def _begin_at(service: JobService, t: float) -> None:
    await trio.sleep_until(t)
    service.begin_shutdown()


async def test_nothing_is_left_running_after_shutdown_with_a_full_channel(start_service: Any, store: MemoryStore, autojump_clock: Any) -> None:
    """Claimed jobs waiting in the channel at shutdown are released, not left running."""
    service = await start_service(store=store, workers=3, grace=1)
    jobs = [await submit(service, "nap", {"seconds": 50}) for _ in range(10)]
    await trio.sleep(1)
    service.begin_shutdown()
    await service.stopped.wait()
    assert trio.current_time() == 2.0
    for job in jobs:
        after = await stored(store, job.id)
        assert (after.state, after.attempts, after.lease_owner) == (JobState.PENDING, 0, None)


async def test_shutdown_while_recovery_waits_for_the_store(nursery: trio.Nursery, registry: Any, settings: Any, clock: Any, autojump_clock: Any) -> None:
    """A service that starts while the store is down still stops on the first signal."""
    from jobsvc.service import Shutdown, open_service

    class DownStore(MemoryStore):
        async def rescue(self, **kwargs: Any) -> list[Job]:
            raise StoreUnavailable("connection refused")

    shutdown = Shutdown(grace=5)
    opened = trio.Event()

    async def run() -> None:
        async with open_service(settings, store=DownStore(), registry=registry, clock=clock, shutdown=shutdown):
            opened.set()

    nursery.start_soon(run)
    await trio.sleep(3)
    assert not opened.is_set()
    shutdown.begin()
    with trio.fail_after(60):  # a regression fails here instead of hanging
        await shutdown.stopped.wait()
    assert trio.current_time() == 3.0 and opened.is_set()


# -- cancel and retry -------------------------------------------------------------------


async def test_cancel_a_running_job(service: JobService, autojump_clock: Any) -> None:
    """Cancelling a running handler goes through its attempt's cancel scope: cancelled at t=1."""
    job = await submit(service, "hang")
    await trio.sleep(1)
    flagged = await service.cancel(job.id)
    assert flagged.state is JobState.RUNNING and flagged.cancel_requested
    done = await service.wait(job.id, 100)
    assert (done.state, done.finished_at) == (JobState.CANCELLED, EPOCH + 1)


async def test_cancel_a_waiting_job(service: JobService, store: MemoryStore, autojump_clock: Any) -> None:
    """A delayed job cancelled before its time never runs."""
    job = await submit(service, "echo", 1, delay=10)
    cancelled = await service.cancel(job.id)
    assert cancelled.state is JobState.CANCELLED
    await trio.sleep(20)
    after = await stored(store, job.id)
    assert (after.state, after.attempts) == (JobState.CANCELLED, 0)


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


async def test_redrive_of_a_task_not_registered_here_does_not_run_it(service: JobService, store: MemoryStore, autojump_clock: Any) -> None:
    """A dead job whose task this instance does not know is redriven to pending but never
    handed to a local worker (and nothing crashes)."""
    ghost = models.fail(
        models.claim(Job(id="g", task="ghost", payload=None, max_attempts=1, run_at=EPOCH, created_at=EPOCH, updated_at=EPOCH), owner="x", now=EPOCH, lease=5),
        error=ErrorRecord.make(attempt=1, at=EPOCH, type="E", message="m"),
        now=EPOCH,
        delay=None,
    )
    await store.insert([ghost])
    assert (await service.retry("g")).state is JobState.PENDING
    await trio.sleep(10)
    after = await stored(store, "g")
    assert (after.state, after.attempts) == (JobState.PENDING, 0)
    assert (await service.wait((await submit(service, "echo", 1)).id, 10)).state is JobState.SUCCEEDED


async def test_handler_with_a_nursery_is_released_at_the_deadline(service: JobService, store: MemoryStore, autojump_clock: Any) -> None:
    """Cancellation that reaches the worker inside an exception group (the handler's own
    nursery) still releases the job: nothing is left running."""
    job = await submit(service, "nursery_hang")
    await trio.sleep(1)
    service.begin_shutdown()
    await service.stopped.wait()
    assert trio.current_time() == 6.0
    after = await stored(store, job.id)
    assert (after.state, after.attempts, after.lease_owner) == (JobState.PENDING, 0, None)


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


# -- backpressure and idempotency ---------------------------------------------------------


async def test_too_many_pending(start_service: Any, autojump_clock: Any) -> None:
    """At max_pending waiting jobs, new submissions get TooManyPending (HTTP 429)."""
    service = await start_service(max_pending=2)
    await submit(service, "echo", 1, delay=60)
    await submit(service, "echo", 2, delay=60)
    with pytest.raises(TooManyPending, match="2 jobs are pending"):
        await submit(service, "echo", 3, delay=60)


async def test_a_replay_is_answered_even_above_max_pending(start_service: Any, autojump_clock: Any) -> None:
    """Resubmitting jobs already accepted returns them (created=False) while the queue is
    over the limit; a new job is still refused."""
    service = await start_service(max_pending=2)
    first = await submit(service, "echo", 1, delay=60, id="a")
    await submit(service, "echo", 2, delay=60, id="b")
    [again] = await service.submit([JobRequest(task="echo", payload=1, delay=60, id="a")])
    assert (again.created, again.job.id, again.job.seq) == (False, "a", first.seq)
    with pytest.raises(TooManyPending):
        await submit(service, "echo", 3, delay=60, id="c")


async def test_a_batch_larger_than_max_pending_gets_in_below_the_limit(start_service: Any, autojump_clock: Any) -> None:
    """Admission looks at the queue before the batch: a batch of 5 with max_pending=3 gets in
    on an empty queue (its retries would otherwise never succeed); the next one waits."""
    service = await start_service(max_pending=3)
    done = await service.submit([JobRequest(task="echo", payload=i, delay=60) for i in range(5)])
    assert all(d.created for d in done)
    with pytest.raises(TooManyPending, match="5 jobs are pending"):
        await submit(service, "echo", 9, delay=60)


async def test_idempotent_resubmission(service: JobService) -> None:
    """Same id and body: the first job, created=False; nothing new is inserted."""
    [first] = await service.submit([JobRequest(task="echo", payload=1, id="same")])
    [again] = await service.submit([JobRequest(task="echo", payload=1, id="same")])
    assert first.created and not again.created and again.job.id == "same"
    assert len(await service.list_jobs()) == 1


# -- the one route: claims at insert, the claim loop, the recorder ----------------------


@attrs.define
class CountingStore(MemoryStore):
    """Records the store calls the service makes."""

    calls: list[str] = attrs.field(factory=list)

    def __attrs_post_init__(self) -> None:
        MemoryStore.__init__(self)

    async def insert(self, jobs: Sequence[Job]) -> list[InsertResult]:
        self.calls.append("insert")
        return await super().insert(jobs)

    async def claim(self, **kwargs: Any) -> ClaimResult:
        result = await super().claim(**kwargs)
        self.calls.append(f"claim:{len(result.jobs)}")
        return result

    async def record(self, finished: Sequence[Finished]) -> list[Job | None]:
        self.calls.append(f"record:{len(finished)}")
        return await super().record(finished)


async def test_a_job_submitted_to_idle_workers_costs_no_claim_write(start_service: Any, autojump_clock: Any) -> None:
    """Claim at insert: with workers idle, a submission is inserted already claimed (running,
    leased to this process) and its outcome is the only other write: insert + record, no
    claim for it."""
    store = CountingStore()
    service = await start_service(store=store)
    await trio.sleep(0.5)  # the start-up claim has found nothing
    store.calls.clear()
    [done] = await service.submit([JobRequest(task="echo", payload="x")])
    assert (done.job.state, done.job.lease_owner, done.job.attempts) == (JobState.RUNNING, "test-owner", 1)
    finished = await service.wait(done.job.id, 10)
    assert finished.state is JobState.SUCCEEDED
    assert store.calls == ["insert", "record:1"]


async def test_jobs_beyond_the_idle_workers_wait_for_the_claim_loop(start_service: Any, autojump_clock: Any) -> None:
    """Two workers, a batch of five: two are claimed at insert, three stay pending and the
    claim loop takes them as workers free up."""
    store = CountingStore()
    service = await start_service(store=store, workers=2)
    await trio.sleep(0.5)
    store.calls.clear()
    done = await service.submit([JobRequest(task="nap", payload={"seconds": 1}) for _ in range(5)])
    assert [d.job.state for d in done] == [JobState.RUNNING] * 2 + [JobState.PENDING] * 3
    for d in done:
        await service.wait(d.job.id, 100)
    assert store.calls[0] == "insert" and sum(int(c.split(":")[1]) for c in store.calls if c.startswith("claim")) == 3


@attrs.define
class SlowRecords(MemoryStore):
    """record waits for ``gate`` (an outcome's commit that takes a while)."""

    gate: trio.Event = attrs.field(factory=trio.Event)

    def __attrs_post_init__(self) -> None:
        MemoryStore.__init__(self)

    async def record(self, finished: Sequence[Finished]) -> list[Job | None]:
        await self.gate.wait()
        return await super().record(finished)


async def test_workers_do_not_wait_for_their_outcome_to_be_committed(start_service: Any, autojump_clock: Any) -> None:
    """One worker, outcomes that cannot be committed yet: the worker still runs the next
    jobs; the three outcomes are then committed together, in one transaction, and the leases
    were held meanwhile (the jobs stayed running)."""
    store = SlowRecords()
    service = await start_service(store=store, workers=1)
    jobs = [await submit(service, "nap", {"seconds": 1}) for _ in range(3)]
    await trio.sleep(3.5)
    assert [j.state for j in [await stored(store, j.id) for j in jobs]] == [JobState.RUNNING] * 3
    store.gate.set()
    finished = [await service.wait(j.id, 10) for j in jobs]
    assert all(j.state is JobState.SUCCEEDED for j in finished)
    assert [j.finished_at for j in finished] == [EPOCH + 1, EPOCH + 2, EPOCH + 3]  # when each handler ended


async def test_running_jobs_never_outnumber_the_workers(start_service: Any, store: MemoryStore, autojump_clock: Any) -> None:
    """Claims follow idle workers: at no time do more attempts run (or wait in the channel)
    than there are workers, and the store holds no more running jobs than that plus the
    attempts whose outcome is being committed (a worker does not wait for that commit)."""
    service = await start_service(store=store, workers=3)
    jobs = [await submit(service, "nap", {"seconds": 1 + i % 3}) for i in range(20)]
    most_busy = 0
    while (await store.counts()).by_state()[JobState.SUCCEEDED] < len(jobs):
        stats = service.statistics()
        most_busy = max(most_busy, stats["busy_workers"] + stats["channel_buffered"])
        running = (await store.counts()).by_state()[JobState.RUNNING]
        assert running <= 3 + stats["recording"], (running, stats)
        await trio.sleep(0.25)
    assert most_busy == 3


# -- leases, rescue, recovery -------------------------------------------------------------


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
    assert (await stored(store, "o2")).state is JobState.RUNNING
    done = await service.wait("o2", 100)
    assert (done.state, done.rescues, done.finished_at) == (JobState.SUCCEEDED, 1, EPOCH + 3)


async def test_job_that_keeps_killing_workers_is_quarantined(start_service: Any, autojump_clock: Any) -> None:
    """The third rescue sends the job to the dead-letter queue with WorkerLost."""
    store = MemoryStore()
    await store.insert([orphan("poison", lease_expires_at=EPOCH, rescues=2)])
    await start_service(store=store)
    after = await stored(store, "poison")
    assert after.state is JobState.DEAD and after.errors[-1].type == "WorkerLost"


async def test_heartbeats_keep_a_long_job_leased(start_service: Any, autojump_clock: Any) -> None:
    """A 20 s job with a 5 s lease is never rescued: heartbeats renew its lease."""
    store = SharedStore()
    service = await start_service(store=store)
    job = await submit(service, "nap", {"seconds": 20})
    done = await service.wait(job.id, 100)
    assert (done.state, done.rescues, done.finished_at) == (JobState.SUCCEEDED, 0, EPOCH + 20)


async def test_a_lost_lease_stops_the_local_handler_before_the_next_attempt_starts(start_service: Any, autojump_clock: Any) -> None:
    """Another instance's sweep takes back a job this process still runs (attempt token 1,
    as if our heartbeats had failed); this very process then claims it again (token 2) at
    its next poll, t=0.7, between two heartbeats. Claiming it again stops attempt 1 at once;
    attempt 2 starts only after attempt 1's handler has returned; the two never run at
    once, and only attempt 2's outcome is written."""
    from testtasks import RUNS

    RUNS.clear()
    store = SharedStore()
    service = await start_service(store=store, workers=2, poll=0.7)
    job = await submit(service, "tracked", {"seconds": 3})
    await trio.sleep(0.5)
    await store.modify(job.id, lambda j: models.rescue(j, now=EPOCH + 0.5, max_rescues=3))  # another instance
    done = await service.wait(job.id, 100)
    assert (done.state, done.lease_token, done.rescues, done.result) == (JobState.SUCCEEDED, 2, 1, {"token": 2})
    assert RUNS == [(1, "start", 0.0), (1, "cancelled", 0.7), (2, "start", 0.7), (2, "end", 3.7)]
    assert done.finished_at == EPOCH + 3.7


@attrs.define
class FlakyRecords(MemoryStore):
    """Fails the first ``failures`` record calls with StoreUnavailable."""

    failures: int = 0

    def __attrs_post_init__(self) -> None:
        MemoryStore.__init__(self)

    async def record(self, finished: Sequence[Finished]) -> list[Job | None]:
        if self.failures:
            self.failures -= 1
            raise StoreUnavailable("database is locked")
        return await super().record(finished)


async def test_an_outcome_write_is_retried_while_the_store_is_down(start_service: Any, autojump_clock: Any) -> None:
    """The outcome of a finished attempt is retried with backoff (0.1 s, 0.2 s) until written."""
    service = await start_service(store=FlakyRecords(failures=2))
    job = await submit(service, "echo", "ok")
    done = await service.wait(job.id, 100)
    assert (done.state, done.result) == (JobState.SUCCEEDED, "ok")
    assert done.finished_at == pytest.approx(EPOCH + 0.3)


@attrs.define
class OutageStore(MemoryStore):
    """record fails with StoreUnavailable until trio time ``until``."""

    until: float = 0.0

    def __attrs_post_init__(self) -> None:
        MemoryStore.__init__(self)

    async def record(self, finished: Sequence[Finished]) -> list[Job | None]:
        if trio.current_time() < self.until:
            raise StoreUnavailable("disk I/O error")
        return await super().record(finished)


async def test_an_outcome_that_cannot_be_written_is_not_kept_alive(start_service: Any, autojump_clock: Any) -> None:
    """If an outcome cannot be written within RECORD_DEADLINE (30 s), the attempt is given
    up and no longer heartbeated: its lease lapses, it is rescued and runs again once the
    store is back."""
    service = await start_service(store=OutageStore(until=40.0))
    job = await submit(service, "echo", "x")
    done = await service.wait(job.id, 200)
    assert (done.state, done.result) == (JobState.SUCCEEDED, "x")
    # Retries at t=0.1, 0.3, 0.7, 1.5, 3.1, 6.3, then every 5 s: given up at t=31.3, the
    # first retry past 30 s. The lease, renewed last at t=31, lapses at t=36: the sweep
    # rescues the job, it runs again at t=36, and that outcome is written after t=40.
    assert (done.rescues, done.lease_token) == (1, 2)
    assert done.finished_at == EPOCH + 36
    assert trio.current_time() >= 40


@attrs.define
class CancelDuringWrite(MemoryStore):
    """A client's cancel lands just before the worker's outcome write (the first record)."""

    armed: bool = True

    def __attrs_post_init__(self) -> None:
        MemoryStore.__init__(self)

    async def record(self, finished: Sequence[Finished]) -> list[Job | None]:
        if self.armed:
            self.armed = False
            for f in finished:
                await self.modify(f.job.id, lambda j: models.request_cancel(j, now=j.updated_at))
        return await super().record(finished)


async def test_a_cancel_during_the_outcome_write_is_not_lost(start_service: Any, autojump_clock: Any) -> None:
    """A failed attempt that would retry becomes cancelled if a cancel arrived meanwhile."""
    store = CancelDuringWrite()
    service = await start_service(store=store)
    job = await submit(service, "flaky", {"fail_times": 5})
    done = await service.wait(job.id, 100)
    assert (done.state, done.attempts) == (JobState.CANCELLED, 1)
    await trio.sleep(30)
    assert (await stored(store, job.id)).attempts == 1


async def test_cancelling_another_instances_job_leaves_nothing_behind(start_service: Any, autojump_clock: Any) -> None:
    """A cancel request for a job another instance runs is left to that instance; when the
    job is later redriven and runs here, it is not cancelled by a stale local request."""
    store = SharedStore()
    await store.insert([orphan("remote", lease_expires_at=EPOCH + 1000)])
    service = await start_service(store=store)
    flagged = await service.cancel("remote")
    assert flagged.state is JobState.RUNNING and flagged.cancel_requested
    await store.modify("remote", lambda j: models.cancel(j, now=EPOCH + 1))  # the other instance honours it
    await service.retry("remote")
    done = await service.wait("remote", 100)
    assert (done.state, done.result) == (JobState.SUCCEEDED, "x")


@attrs.define
class FailingClaims(MemoryStore):
    """claim raises ``errors`` in turn before working."""

    errors: list[Exception] = attrs.field(factory=list)

    def __attrs_post_init__(self) -> None:
        MemoryStore.__init__(self)

    async def claim(self, *, owner: str, now: float, lease: float, limit: int, tasks: Collection[str] | None = None) -> ClaimResult:
        if self.errors:
            raise self.errors.pop(0)
        return await super().claim(owner=owner, now=now, lease=lease, limit=limit, tasks=tasks)


async def test_the_claim_loop_backs_off_and_recovers(start_service: Any, autojump_clock: Any) -> None:
    """The claim loop survives store outages and even unexpected errors: it retries after
    0.1 s, then 0.2 s, and the waiting job runs at t=0.3."""
    store = FailingClaims(errors=[StoreUnavailable("down"), RuntimeError("bug")])
    await store.insert([Job(id="w", task="echo", payload=1, max_attempts=1, run_at=EPOCH, created_at=EPOCH, updated_at=EPOCH)])
    service = await start_service(store=store)
    done = await service.wait("w", 100)
    assert done.state is JobState.SUCCEEDED and done.finished_at == pytest.approx(EPOCH + 0.3, abs=1e-6)


async def test_long_polls_leave_no_state_behind(service: JobService, autojump_clock: Any) -> None:
    """A long poll that times out removes its wake-up event."""
    job = await submit(service, "echo", 1, delay=60)
    assert (await service.wait(job.id, 2)).state is JobState.PENDING
    assert trio.current_time() == 2.0
    assert len(service._waiters) == 0 and service._waiters._events == {}


class SlowHeartbeat(MemoryStore):
    """The heartbeat's answer arrives 0.5 s after the store renewed (a thread hop or a
    network round trip)."""

    async def heartbeat(self, **kwargs: Any) -> dict[tuple[str, int], bool]:
        renewed = await super().heartbeat(**kwargs)
        await trio.sleep(0.5)
        return renewed


async def test_a_late_heartbeat_answer_leaves_no_stale_cancel(start_service: Any, autojump_clock: Any) -> None:
    """A cancel request reported by a heartbeat whose answer arrives after the attempt
    ended does not cancel the job's next run here."""
    store = SlowHeartbeat()
    service = await start_service(store=store)
    job = await submit(service, "slow_first_failure")
    await trio.sleep(0.95)
    await store.modify(job.id, lambda j: models.request_cancel(j, now=j.updated_at))  # via another instance
    first = await service.wait(job.id, 100)
    assert first.state is JobState.DEAD
    await trio.sleep(1)
    await service.retry(job.id)
    done = await service.wait(job.id, 100)
    assert (done.state, done.result) == (JobState.SUCCEEDED, "ok")


async def test_a_result_that_cannot_be_stored_fails_the_attempt(start_service: Any, tmp_path: Any) -> None:
    """A result with a lone surrogate fails its attempt (UnicodeEncodeError) instead of
    crashing the service at write time; an error message with one is stored escaped.
    (SQLite, real clock: the store's encoder is the one that matters.)"""
    from jobsvc.store import open_store

    async with open_store(f"sqlite:///{tmp_path / 'j.db'}") as sqlite_store:
        service = await start_service(store=sqlite_store)
        with trio.fail_after(10):
            bad_result = await service.wait((await submit(service, "surrogate_result")).id, 10)
            bad_error = await service.wait((await submit(service, "surrogate_error")).id, 10)
            fine = await service.wait((await submit(service, "echo", "still alive")).id, 10)
        assert (bad_result.state, bad_result.errors[0].type) == (JobState.DEAD, "UnicodeEncodeError")
        assert (bad_error.state, bad_error.errors[0].message) == (JobState.DEAD, "no such file: caf\\udce9.txt")
        assert (fine.state, fine.result) == (JobState.SUCCEEDED, "still alive")
        service.force_stop()
        await service.stopped.wait()




async def test_admission_counts_what_the_store_holds_at_start(start_service: Any, autojump_clock: Any) -> None:
    """A service started on a store already over max_pending refuses the very first new
    submission (the estimate starts from a count, not from zero)."""
    store = MemoryStore()
    await store.insert([Job(id=f"old{i}", task="echo", payload=i, max_attempts=1, run_at=EPOCH + 60, created_at=EPOCH, updated_at=EPOCH) for i in range(3)])
    service = await start_service(store=store, max_pending=3)
    with pytest.raises(TooManyPending, match="3 jobs are pending"):
        await submit(service, "echo", 9)


@attrs.define
class GatedClaims(MemoryStore):
    """Every claim after the first waits for ``gate`` (a claim in flight for a while)."""

    gate: trio.Event = attrs.field(factory=trio.Event)
    claims: int = 0
    in_flight: trio.Event = attrs.field(factory=trio.Event)  #: set when a claim waits for the gate

    def __attrs_post_init__(self) -> None:
        MemoryStore.__init__(self)

    async def claim(self, *, owner: str, now: float, lease: float, limit: int, tasks: Collection[str] | None = None) -> ClaimResult:
        self.claims += 1
        if self.claims > 1:
            self.in_flight.set()
            await self.gate.wait()
        return await super().claim(owner=owner, now=now, lease=lease, limit=limit, tasks=tasks)


@pytest.mark.parametrize("claim_ends_after", [0.02, 10.0])
async def test_a_submission_does_not_overtake_jobs_a_claim_in_flight_may_find(start_service: Any, autojump_clock: Any, claim_ends_after: float) -> None:
    """Two workers, older due jobs waiting. At t=1 one worker frees up and the claim loop's
    claim goes out (and stays in flight); at t=2 the other worker frees up. A submission at
    t=2.5 must not take that worker at insert: older jobs wait (the claim in flight may find
    them), so it queues behind them. It waits for the claim (at most CLAIM_WAIT): whether
    the claim comes back full meanwhile (0.02 s) or not (10 s), the submission does not
    overtake."""
    store = GatedClaims()
    olds = [Job(id="old-2s", task="nap", payload={"seconds": 2}, max_attempts=1, run_at=EPOCH - 10, created_at=EPOCH, updated_at=EPOCH)]
    olds += [Job(id=f"old{i}", task="nap", payload={"seconds": 1}, max_attempts=1, run_at=EPOCH - 9, created_at=EPOCH, updated_at=EPOCH) for i in range(4)]
    await store.insert(olds)
    service = await start_service(store=store, workers=2)
    await trio.sleep(2.5)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_open_after, store.gate, claim_ends_after)
            start = trio.current_time()
            new = await submit(service, "nap", {"seconds": 1})
            assert trio.current_time() - start == pytest.approx(min(claim_ends_after, CLAIM_WAIT))
            assert new.state is JobState.PENDING
            nursery.cancel_scope.cancel()
    finally:
        store.gate.set()  # the held claim is shielded: release it whatever happens
    finished = {j.id: (await service.wait(j.id, 30)).finished_at for j in [*olds, new]}
    assert finished[new.id] == max(finished.values())


async def _open_after(gate: trio.Event, seconds: float) -> None:
    await trio.sleep(seconds)
    gate.set()


async def test_a_submission_waits_for_a_claim_that_finds_nothing_and_claims_at_insert(start_service: Any, autojump_clock: Any) -> None:
    """Idle workers, nothing waiting; the claim loop's periodic look is in flight when a job
    is submitted. The submission waits for it (it may find older jobs) and, as it comes
    back empty, claims its job at insert the moment it ends: no claim transaction of its
    own, no wait for the next one."""
    store = GatedClaims()
    service = await start_service(store=store, workers=2)
    await store.in_flight.wait()  # the look after the poll interval, held by the gate
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_open_after, store.gate, 0.02)
        start = trio.current_time()
        new = await submit(service, "echo", "x")
    assert trio.current_time() - start == pytest.approx(0.02)
    assert (new.state, new.lease_owner) == (JobState.RUNNING, "test-owner")
    assert (await service.wait(new.id, 10)).state is JobState.SUCCEEDED
    assert store.claims == 2  # the start-up's and the held one: none for the submission


async def test_a_submission_waits_for_a_slow_claim_no_longer_than_claim_wait(start_service: Any, autojump_clock: Any) -> None:
    """The periodic look hangs (a slow store): the submission gives up waiting after
    CLAIM_WAIT, goes in pending, and the claim that was in flight takes it when it ends."""
    store = GatedClaims()
    service = await start_service(store=store, workers=2)
    await store.in_flight.wait()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_open_after, store.gate, 3.0)
        start = trio.current_time()
        new = await submit(service, "echo", "x")
        assert trio.current_time() - start == pytest.approx(CLAIM_WAIT)
        assert new.state is JobState.PENDING
    done = await service.wait(new.id, 10)
    assert done.state is JobState.SUCCEEDED and done.attempts == 1


@attrs.define
class DurabilityRecorder(MemoryStore):
    """Notes the ``durable`` flag of every write transaction."""

    writes: list[bool] = attrs.field(factory=list)

    def __attrs_post_init__(self) -> None:
        MemoryStore.__init__(self)

    async def _write(self, fn: Any, *, durable: bool = False) -> Any:
        self.writes.append(durable)
        return await super()._write(fn, durable=durable)


@pytest.mark.parametrize("exclusive", [True, False])
async def test_claims_are_durable_where_other_processes_outlive_a_database_crash(exclusive: bool) -> None:
    """On a shared store (PostgreSQL) a claim is a durable transaction: a claim forgotten by
    a database crash would hand its lease token to the next claim while the first attempt
    still runs. On an exclusive store a crash takes the attempt with it: no need."""
    store = DurabilityRecorder()
    store.exclusive = exclusive
    await store.insert([Job(id="j", task="echo", payload=1, max_attempts=1, run_at=EPOCH, created_at=EPOCH, updated_at=EPOCH)])
    store.writes.clear()
    await store.claim(owner="w", now=EPOCH, lease=5, limit=1)
    assert store.writes == [not exclusive]


@pytest.mark.parametrize(
    ("drain_delay", "force_at", "expected"),
    [
        (0.0, None, 5 + 10),  # grace, then the slack
        (30.0, None, 5 + 30 + 10),  # an HTTP drain delay longer than the grace is not "stuck"
        (30.0, 2.0, 2 + 3),  # a second signal: the force slack, whatever the delays
    ],
)
async def test_shutdown_is_overdue_only_after_its_whole_budget(
    drain_delay: float, force_at: float | None, expected: float, autojump_clock: Any
) -> None:
    """The watchdog's clock: a stop is overdue ``after_grace`` past grace + drain delay, or
    ``after_force`` past a second signal."""
    from jobsvc.service import Shutdown

    shutdown = Shutdown(grace=5, drain_delay=drain_delay)
    shutdown.begin()
    async with trio.open_nursery() as nursery:
        if force_at is not None:
            async def second_signal() -> None:
                await trio.sleep(force_at)
                shutdown.force()

            nursery.start_soon(second_signal)
        await shutdown.overdue(after_grace=10, after_force=3)
    assert trio.current_time() == expected


# -- handlers that ignore their cancellation ----------------------------------------------


async def scrape_metrics(service: JobService) -> Any:
    import httpx
    from obs.helpers import Metrics  # tests/ is on sys.path

    from jobsvc.app import create_app

    transport = httpx.ASGITransport(app=create_app(service))
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
        return Metrics((await client.get("/metrics")).text)


async def test_a_handler_deaf_to_its_timeout_is_written_off_and_its_worker_replaced(
    service: JobService, autojump_clock: Any
) -> None:
    """Timeout 5 s: at 5 + STUCK_AFTER (1 s) both workers' attempts are written off as
    timed out; replacement workers run the next job at once, while the deaf handlers run on
    (counted) until they return at 100 s, their results discarded."""
    from jobsvc.service.runner import STUCK_AFTER

    deaf = [await submit(service, "deaf", 100.0) for _ in range(2)]  # both workers
    echo = await submit(service, "echo", "after")
    for job in deaf:
        done = await service.wait(job.id, 60)
        assert (done.state, done.errors[0].type, done.finished_at) == (JobState.DEAD, "Timeout", EPOCH + 5 + STUCK_AFTER)
    assert service.statistics()["stuck_handlers"] == 2
    assert (await scrape_metrics(service)).value("jobsvc_handlers_stuck") == 2
    done = await service.wait(echo.id, 60)
    assert (done.state, done.finished_at) == (JobState.SUCCEEDED, EPOCH + 6)
    await trio.sleep(100 - trio.current_time() + 0.001)
    assert service.statistics()["stuck_handlers"] == 0
    assert (await scrape_metrics(service)).value("jobsvc_handlers_stuck") == 0
    assert [(await service.get(job.id)).state for job in deaf] == [JobState.DEAD, JobState.DEAD]  # results discarded


async def test_a_handler_deaf_to_a_clients_cancel_is_written_off_as_cancelled(service: JobService, autojump_clock: Any) -> None:
    job = await submit(service, "deaf", 3.0, timeout=60)
    await trio.sleep(1)
    await service.cancel(job.id)
    done = await service.wait(job.id, 60)
    assert (done.state, done.finished_at) == (JobState.CANCELLED, EPOCH + 2)


async def test_a_shutdown_settles_past_a_handler_deaf_to_it(start_service: Any, autojump_clock: Any) -> None:
    """Shutdown at 1 s, grace 5 s: the deaf handler is cancelled at 6 s, written off at 7 s
    and its job handed back; the shutdown has then settled (what lets `jobsvc serve` exit),
    while ``stopped`` waits for the handler to return (at 50 s)."""
    store = MemoryStore()
    service = await start_service(store=store)
    job = await submit(service, "deaf", 50.0, timeout=600)
    await trio.sleep(1)
    service.begin_shutdown()
    await service.shutdown.settled.wait()
    assert trio.current_time() == 7
    released = await store.get(job.id)
    assert released is not None and (released.state, released.attempts) == (JobState.PENDING, 0)
    assert not service.stopped.is_set()
    await service.stopped.wait()
    assert trio.current_time() == 50
