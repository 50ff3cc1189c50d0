"""Handlers that are not async: a plain ``def`` in a thread, ``process=True`` in a worker
process. Real time (threads and processes do not follow trio's clock), kept short."""

from __future__ import annotations

import os
from typing import Any

import httpx
import pytest
import trio
from obs.helpers import Metrics  # tests/ is on sys.path
from testtasks import RELEASE

from jobsvc.app import create_app
from jobsvc.codec import JobRequest
from jobsvc.models import JobState
from jobsvc.service import JobService
from jobsvc.store import MemoryStore
from jobsvc.tasks import task


async def submit(service: JobService, name: str, payload: Any = None, **fields: Any) -> str:
    [done] = await service.submit([JobRequest(task=name, payload=payload, **fields)])
    return done.job.id


async def metrics(service: JobService) -> Metrics:
    transport = httpx.ASGITransport(app=create_app(service))
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
        return Metrics((await client.get("/metrics")).text)


async def until(predicate: Any, *, within: float = 10.0) -> None:
    with trio.fail_after(within):
        while not predicate():  # noqa: ASYNC110 - threads and processes: poll, bounded
            await trio.sleep(0.01)


async def test_a_plain_def_handler_runs_in_a_thread(start_service: Any) -> None:
    """The event loop stays free: the handler ran in a worker thread."""
    service = await start_service()
    job_id = await submit(service, "in_thread")
    done = await service.wait(job_id, 10)
    assert (done.state, done.result) == (JobState.SUCCEEDED, {"in_a_thread": True, "job": job_id})


async def test_a_blocking_thread_handler_still_times_out_and_is_counted_until_it_returns(start_service: Any) -> None:
    """Its timeout (0.5 s) ends the attempt although the thread cannot be stopped: the thread
    is abandoned, counted while it runs on, and no longer once it returns."""
    RELEASE.clear()
    service = await start_service()
    job_id = await submit(service, "blocking")
    with trio.fail_after(5):
        done = await service.wait(job_id, 10)
    assert (done.state, done.errors[0].type) == (JobState.DEAD, "Timeout")
    assert service.statistics()["abandoned_threads"] == 1
    assert (await metrics(service)).value("jobsvc_handler_threads_abandoned") == 1
    RELEASE.set()
    await until(lambda: service.statistics()["abandoned_threads"] == 0)
    assert (await metrics(service)).value("jobsvc_handler_threads_abandoned") == 0


async def test_a_blocking_thread_handler_does_not_hold_the_shutdown(start_service: Any) -> None:
    """At the end of the grace (0.3 s) the attempt is released and the service stops, while
    the thread runs on (abandoned)."""
    RELEASE.clear()
    store = MemoryStore()
    service = await start_service(store=store, grace=0.3, timeout=60)
    job_id = await submit(service, "blocking", timeout=60)
    await until(lambda: service.statistics()["busy_workers"] == 1)
    service.begin_shutdown()
    with trio.fail_after(5):
        await service.stopped.wait()
    job = await store.get(job_id)
    assert job is not None and (job.state, job.attempts) == (JobState.PENDING, 0)
    RELEASE.set()


async def test_a_process_handler_runs_in_a_worker_process(start_service: Any) -> None:
    """process=True: another process, the payload validated there, the context passed."""
    service = await start_service()
    job_id = await submit(service, "in_process", {"seconds": 1.5})
    with trio.fail_after(30):
        done = await service.wait(job_id, 30)
    assert done.state is JobState.SUCCEEDED
    assert done.result["pid"] != os.getpid() and (done.result["seconds"], done.result["attempt"]) == (1.5, 1)
    assert (await metrics(service)).value("jobsvc_handler_processes") == service.statistics()["handler_processes"] >= 1


async def test_a_process_handlers_errors_keep_their_type(start_service: Any) -> None:
    """An exception in the worker process fails the attempt with its own type name; a
    PermanentError there dead-letters at once."""
    service = await start_service()
    with trio.fail_after(30):
        failed = await service.wait(await submit(service, "process_fails", "x"), 30)
        permanent = await service.wait(await submit(service, "process_fails", "permanent", max_attempts=3), 30)
    assert (failed.state, failed.errors[0].type, failed.errors[0].message) == (JobState.DEAD, "ValueError", "bad payload 'x'")
    assert (permanent.state, permanent.attempts, permanent.errors[0].type) == (JobState.DEAD, 1, "PermanentError")


async def test_a_stuck_process_handler_is_killed_at_its_timeout(start_service: Any) -> None:
    """A handler stuck in C code (time.sleep(60)) ends at its 0.5 s timeout: its process is
    killed, and the next job gets a fresh one."""
    service = await start_service()
    with trio.fail_after(30):
        stuck = await service.wait(await submit(service, "process_stuck"), 30)
        assert (stuck.state, stuck.errors[0].type) == (JobState.DEAD, "Timeout")
        fine = await service.wait(await submit(service, "in_process", {"seconds": 1}), 30)
    assert fine.state is JobState.SUCCEEDED
    assert service.statistics()["handler_processes"] == 1


async def test_a_stuck_process_handler_does_not_hold_the_shutdown(start_service: Any) -> None:
    """At the end of the grace the stuck process is killed and the job released."""
    store = MemoryStore()
    service = await start_service(store=store, grace=0.3)
    job_id = await submit(service, "process_stuck", timeout=60)
    await until(lambda: service.statistics()["handler_processes"] == 1, within=30)
    service.begin_shutdown()
    with trio.fail_after(10):
        await service.stopped.wait()
    job = await store.get(job_id)
    assert job is not None and (job.state, job.attempts) == (JobState.PENDING, 0)
    assert service.statistics()["handler_processes"] == 0


def test_process_handlers_must_be_plain_functions_at_module_level() -> None:
    """An async def cannot run in a worker process; a nested function cannot be found there."""
    with pytest.raises(TypeError, match="not an async def"):

        @task("bad", process=True)
        async def bad(payload: Any, ctx: Any) -> None: ...

    with pytest.raises(TypeError, match="module level"):

        @task("nested", process=True)
        def nested(payload: Any, ctx: Any) -> None: ...
