"""jobsvc.client against the real app, in process: ``AsyncClient`` over ``httpx.ASGITransport``
in front of a running ``JobService`` (memory store, trio's virtual clock, jitter at its
ceiling), so retries, backoff and long polls are asserted at exact virtual times."""

from __future__ import annotations

import datetime as dt
import re
import subprocess
import sys
from collections.abc import AsyncIterator

import httpx
import pytest
import trio
import trio.testing

from jobsvc import client as client_module
from jobsvc.app import create_app
from jobsvc.client import (
    AsyncClient,
    IllegalTransition,
    InvalidJob,
    JobNotFound,
    JobSpec,
    JobState,
    RetryPolicy,
    ServerUnreachable,
    UnknownTask,
    WaitTimeout,
)
from jobsvc.codec import JobRequest
from jobsvc.service import JobService

BASE = "http://localhost"


class LoseResponses(httpx.AsyncBaseTransport):
    """Passes each request to the app, then loses the answers to the first ``lose`` requests
    matching ``method`` and ``path`` (a ReadTimeout, as if the connection dropped): the server
    has acted, the client does not know it."""

    def __init__(self, inner: httpx.AsyncBaseTransport, *, method: str, path: str, lose: int = 1) -> None:
        self.inner = inner
        self.method = method
        self.path = path
        self.lose = lose
        self.seen: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        await response.aread()
        if request.method == self.method and request.url.path == self.path:
            self.seen.append(request)
            if self.lose:
                self.lose -= 1
                raise httpx.ReadTimeout("the answer was lost", request=request)
        return response


def asgi(service: JobService) -> httpx.ASGITransport:
    return httpx.ASGITransport(app=create_app(service), raise_app_exceptions=False)


@pytest.fixture
async def jobs(service: JobService) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(BASE, transport=asgi(service)) as c:
        yield c


async def test_submit_and_wait_until_success_at_the_exact_virtual_time(jobs: AsyncClient, autojump_clock: trio.testing.MockClock) -> None:
    job = await jobs.submit("flaky", {"fail_times": 2}, id="f1", priority=5)
    # A worker was idle: the job was claimed in the same transaction that accepted it.
    assert (job.id, job.task, job.state, job.priority, job.payload) == ("f1", "flaky", JobState.RUNNING, 5, {"fail_times": 2})
    assert job.idempotency_key and len(job.idempotency_key) == 32
    assert job.created_at.tzinfo is not None and job.finished_at is None

    done = await jobs.wait("f1", timeout=100)

    # Attempts at t=0, 1 and 1+2=3 (backoff ceilings 1 and 2): succeeded at exactly t=3.
    assert trio.current_time() == 3
    assert (done.state, done.attempts, done.result, done.is_final) == (JobState.SUCCEEDED, 3, {"attempt": 3}, True)
    assert [(e.attempt, e.type, e.message) for e in done.errors] == [(1, "Boom", "failure 1 of 2"), (2, "Boom", "failure 2 of 2")]
    assert done.finished_at is not None and done.finished_at - done.created_at == dt.timedelta(seconds=3)
    assert (await jobs.get("f1")) == done
    assert done.raw["state"] == "succeeded"


async def test_wait_times_out_with_the_jobs_last_state(jobs: AsyncClient, autojump_clock: trio.testing.MockClock) -> None:
    await jobs.submit("nap", {"seconds": 25}, id="slow")
    with pytest.raises(WaitTimeout, match="^job slow is still running after 10s$") as caught:
        await jobs.wait("slow", timeout=10)
    assert trio.current_time() == 10
    assert caught.value.job.state is JobState.RUNNING


async def test_list_pages_and_iter_jobs_follows_next(jobs: AsyncClient, autojump_clock: trio.testing.MockClock) -> None:
    submitted = await jobs.submit_batch([JobSpec(task="nap", payload={"seconds": 50}, id=f"b{i}") for i in range(5)])
    assert [j.id for j in submitted] == ["b0", "b1", "b2", "b3", "b4"]

    page = await jobs.list(task="nap", limit=2)
    assert [j.id for j in page.jobs] == ["b0", "b1"] and page.next is not None

    assert [j.id async for j in jobs.iter_jobs(task="nap", page_size=2)] == ["b0", "b1", "b2", "b3", "b4"]
    assert [j.id async for j in jobs.iter_jobs(["pending", JobState.RUNNING], page_size=1)] == ["b0", "b1", "b2", "b3", "b4"]
    assert [j.id async for j in jobs.iter_jobs(JobState.SUCCEEDED)] == []


async def test_retry_and_cancel(jobs: AsyncClient, autojump_clock: trio.testing.MockClock) -> None:
    await jobs.submit("permanent", id="p")
    dead = await jobs.wait("p", timeout=10)
    assert dead.state is JobState.DEAD and [e.type for e in dead.errors] == ["PermanentError"]

    again = await jobs.retry("p")
    assert again.state is JobState.PENDING and again.attempts == 0 and len(again.errors) == 1

    await jobs.submit("hang", id="h")
    await trio.sleep(1)
    asked = await jobs.cancel("h")
    assert asked.state is JobState.RUNNING and asked.cancel_requested
    assert (await jobs.wait("h", timeout=10)).state is JobState.CANCELLED

    with pytest.raises(IllegalTransition) as caught:
        await jobs.cancel("h")
    assert (caught.value.status, caught.value.slug, caught.value.instance) == (409, "illegal-transition", "/jobs/h/cancel")


async def test_problems_become_typed_errors(jobs: AsyncClient) -> None:
    with pytest.raises(JobNotFound, match="no job has the id 'nope'") as not_found:
        await jobs.get("nope")
    assert (not_found.value.status, not_found.value.type) == (404, "urn:jobsvc:problem:job-not-found")

    with pytest.raises(UnknownTask) as unknown:
        await jobs.submit("no-such-task")
    assert "echo" in unknown.value.known_tasks and unknown.value.errors == ["unknown task 'no-such-task' @ $.task"]

    with pytest.raises(InvalidJob) as invalid:
        await jobs.submit("flaky", {"fail_times": 1}, delay=-1, max_attempts=0)
    assert type(invalid.value) is InvalidJob and (invalid.value.status, invalid.value.slug) == (422, "invalid-job")
    assert invalid.value.errors == [
        "max_attempts must be between 1 and 1000, not 0 @ $.max_attempts",
        "delay must be between 0 and 3.16224e+07, not -1.0 @ $.delay",
    ]
    with pytest.raises(InvalidJob) as invalid:
        await jobs.submit("flaky", {"fail_times": "two"})
    assert [e.rpartition(" @ ")[2] for e in invalid.value.errors] == ["$.payload.fail_times"]


async def test_a_job_id_is_quoted_into_one_path_segment(jobs: AsyncClient) -> None:
    with pytest.raises(JobNotFound, match=re.escape("no job has the id 'a b?c#d'")):
        await jobs.get("a b?c#d")


async def test_tasks_stats_health_ready(jobs: AsyncClient, autojump_clock: trio.testing.MockClock) -> None:
    await jobs.submit("echo", "hi", id="e")
    await jobs.wait("e", timeout=5)

    tasks = {t.name: t for t in await jobs.tasks()}
    assert {"echo", "fail", "flaky", "hang"} <= set(tasks)
    assert (tasks["hang"].max_attempts, tasks["hang"].timeout, tasks["hang"].backoff) == (2, 10.0, {"base": 1.0, "cap": 1.0, "jitter": "none"})

    stats = await jobs.stats()
    assert stats.jobs["succeeded"] == 1 and stats.jobs["pending"] == 0
    assert (stats.instance.workers, stats.instance.store, stats.instance.draining) == (2, "memory", False)
    assert stats.oldest_due_age is None

    assert (await jobs.health()).status == "ok"
    readiness = await jobs.ready()
    assert readiness.ready and readiness.raw["workers"] == 2


async def test_a_lost_answer_to_submit_is_retried_with_the_same_key_and_makes_one_job(service: JobService, autojump_clock: trio.testing.MockClock) -> None:
    lossy = LoseResponses(asgi(service), method="POST", path="/jobs", lose=2)
    policy = RetryPolicy(max_retries=3, rng=lambda low, high: high)
    async with AsyncClient(BASE, transport=lossy, retry=policy) as jobs:
        job = await jobs.submit("nap", {"seconds": 60})
        everything = [j async for j in jobs.iter_jobs()]

    keys = [r.headers["idempotency-key"] for r in lossy.seen]
    assert len(keys) == 3 and len(set(keys)) == 1
    assert [j.id for j in everything] == [job.id]  # the server acted three times, created once
    assert trio.current_time() == 0.5 + 1.0  # backoff ceilings before retries 1 and 2


async def test_a_cancel_that_may_have_arrived_is_not_resent(service: JobService, autojump_clock: trio.testing.MockClock) -> None:
    await service.submit([JobRequest(task="nap", payload={"seconds": 60}, id="c", delay=100)])
    lossy = LoseResponses(asgi(service), method="POST", path="/jobs/c/cancel")
    async with AsyncClient(BASE, transport=lossy) as jobs:
        with pytest.raises(ServerUnreachable, match="cannot reach jobsvc at http://localhost: the answer was lost$"):
            await jobs.cancel("c")
        assert len(lossy.seen) == 1
        assert (await jobs.get("c")).state is JobState.CANCELLED


def test_the_public_names_are_exported() -> None:
    defined = {
        name
        for name, value in vars(client_module).items()
        if not name.startswith("_") and callable(value) and getattr(value, "__module__", None) == "jobsvc.client"
    }
    assert defined <= set(client_module.__all__)
    assert all(hasattr(client_module, name) for name in client_module.__all__)
    assert client_module.__all__ == sorted(client_module.__all__, key=lambda n: (not n.isupper(), n[0].islower(), n))


def test_the_client_imports_nothing_of_the_server_side() -> None:
    code = "import sys, jobsvc.client; print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in ('jobsvc', 'trio', 'starlette', 'hypercorn', 'sqlite3', 'psycopg'))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60).stdout
    assert out.split() == ["jobsvc", "jobsvc.client", "jobsvc.errors", "jobsvc.models", "jobsvc.retry"]


async def test_the_clients_never_reuse_a_connection_the_server_may_be_closing() -> None:
    """jobsvc closes a keep-alive connection idle for KEEP_ALIVE_TIMEOUT seconds; a pooled
    connection reused that late races the close and fails its request (httpx's default
    expiry is 5 s, the same). Both clients let an idle connection go sooner."""
    from jobsvc.server import KEEP_ALIVE_TIMEOUT

    sync = client_module.Client("http://127.0.0.1:9")
    asynchronous = client_module.AsyncClient("http://127.0.0.1:9")
    try:
        for http in (sync._http, asynchronous._http):
            expiry = http._transport._pool._keepalive_expiry  # type: ignore[union-attr]
            assert expiry == client_module.KEEPALIVE_EXPIRY < KEEP_ALIVE_TIMEOUT
    finally:
        sync.close()
        await asynchronous.aclose()
