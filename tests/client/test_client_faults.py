"""jobsvc.client against ``httpx.MockTransport``: the faults a live server will not produce on
demand. The async client runs on trio's ``autojump_clock`` (exact virtual times); the sync
client gets a ``FakeTime`` as its ``sleep`` and ``clock``; one test runs the async client
under asyncio."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Callable, Sequence
from typing import Any

import httpx
import pytest
import trio
import trio.testing
from conftest import FakeTime, job_json

from jobsvc.client import (
    APIError,
    AsyncClient,
    Client,
    Conflict,
    IllegalTransition,
    InvalidJob,
    JobNotFound,
    JobSpec,
    JobState,
    NotFound,
    RequestRejected,
    RetryPolicy,
    ServerError,
    ServerUnreachable,
    TooManyRequests,
    Unavailable,
    UnexpectedResponse,
    UnknownTask,
    WaitTimeout,
    retry_after_seconds,
)
from jobsvc.retry import Backoff

BASE = "http://localhost"
#: Jitter at its ceiling: backoff delays are exact.
CEILING = RetryPolicy(rng=lambda low, high: high)


def problem(status: int, slug: str, detail: str = "it went wrong", headers: dict[str, str] | None = None, **extra: Any) -> httpx.Response:
    body = {"type": f"urn:jobsvc:problem:{slug}", "title": "Title", "status": status, "detail": detail, "instance": "/x", **extra}
    return httpx.Response(status, json=body, headers={"content-type": "application/problem+json", **(headers or {})})


def accepted(**changes: Any) -> httpx.Response:
    return httpx.Response(202, json=job_json(**changes))


class Script:
    """A MockTransport handler that answers from a list (the last answer repeats) and
    records every request, with the virtual time it arrived at when running under trio."""

    def __init__(self, *answers: httpx.Response | Exception, clock: Callable[[], float] | None = None) -> None:
        self.answers = list(answers)
        self.clock = clock
        self.requests: list[httpx.Request] = []
        self.times: list[float] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.clock is not None:
            self.times.append(self.clock())
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    @property
    def keys(self) -> list[str]:
        return [r.headers["idempotency-key"] for r in self.requests]


def sync_client(script: Script, fake_time: FakeTime, retry: RetryPolicy = CEILING) -> Client:
    return Client(BASE, transport=httpx.MockTransport(script), retry=retry, sleep=fake_time.sleep, clock=fake_time.clock)


# -- retries ---------------------------------------------------------------------------


async def test_429_is_retried_after_retry_after_with_the_same_idempotency_key(autojump_clock: trio.testing.MockClock) -> None:
    script = Script(
        problem(429, "too-many-pending", headers={"Retry-After": "7"}),
        problem(429, "too-many-pending", headers={"Retry-After": "7"}),
        accepted(),
        clock=trio.current_time,
    )
    async with AsyncClient(BASE, transport=httpx.MockTransport(script), retry=CEILING) as jobs:
        job = await jobs.submit("echo", {"n": 1})

    assert job.id == "job-1"
    assert script.times == [0, 7, 14]
    assert len(script.keys) == 3 and len(set(script.keys)) == 1 and len(script.keys[0]) == 32
    assert [json.loads(r.content) for r in script.requests] == [{"task": "echo", "payload": {"n": 1}}] * 3


def test_503_is_retried_and_a_given_key_is_sent_on_every_attempt(fake_time: FakeTime) -> None:
    script = Script(problem(503, "unavailable", headers={"Retry-After": "2"}), problem(503, "store-unavailable"), accepted())
    with sync_client(script, fake_time) as jobs:
        jobs.submit("echo", idempotency_key="my-key", delay=dt.timedelta(minutes=1), priority=3)

    assert fake_time.slept == [2.0, 1.0]  # Retry-After, then the backoff ceiling of retry 2
    assert script.keys == ["my-key"] * 3
    assert json.loads(script.requests[0].content) == {"task": "echo", "delay": 60.0, "priority": 3}


def test_each_submit_call_has_its_own_key(fake_time: FakeTime) -> None:
    script = Script(accepted())
    with sync_client(script, fake_time) as jobs:
        jobs.submit("echo")
        jobs.submit("echo")
    assert len(set(script.keys)) == 2


def test_busy_answers_give_up_after_max_retries(fake_time: FakeTime) -> None:
    script = Script(problem(429, "too-many-pending", "10000 jobs are pending", headers={"Retry-After": "1"}))
    with sync_client(script, fake_time, RetryPolicy(max_retries=2)) as jobs, pytest.raises(TooManyRequests) as caught:
        jobs.submit("echo")
    assert (len(script.requests), fake_time.slept) == (3, [1.0, 1.0])
    assert (str(caught.value), caught.value.retry_after, caught.value.status) == ("10000 jobs are pending", 1.0, 429)


def test_a_retry_after_beyond_max_time_is_not_waited_for(fake_time: FakeTime) -> None:
    script = Script(problem(503, "unavailable", headers={"Retry-After": "61"}))
    with sync_client(script, fake_time, RetryPolicy(max_time=60)) as jobs, pytest.raises(Unavailable) as caught:
        jobs.stats()
    assert (len(script.requests), fake_time.slept, caught.value.retry_after) == (1, [], 61.0)


def test_max_time_counts_from_the_first_attempt(fake_time: FakeTime) -> None:
    script = Script(problem(503, "unavailable", headers={"Retry-After": "25"}))
    with sync_client(script, fake_time, RetryPolicy(max_retries=10, max_time=60)) as jobs, pytest.raises(Unavailable):
        jobs.tasks()
    assert fake_time.slept == [25.0, 25.0]  # a third wait would end at t=75 > 60


def test_connection_errors_are_retried_with_capped_backoff(fake_time: FakeTime) -> None:
    script = Script(httpx.ConnectError("[Errno 111] Connection refused"))
    policy = RetryPolicy(max_retries=5, max_time=100, backoff=Backoff(base=1, cap=4), rng=lambda low, high: high)
    with sync_client(script, fake_time, policy) as jobs, pytest.raises(ServerUnreachable) as caught:
        jobs.get("j")
    assert fake_time.slept == [1, 2, 4, 4, 4]
    assert str(caught.value) == "cannot reach jobsvc at http://localhost: [Errno 111] Connection refused (after 6 attempts)"
    assert caught.value.url == BASE and isinstance(caught.value.__cause__, httpx.ConnectError)


def test_backoff_jitter_comes_from_the_policys_rng(fake_time: FakeTime) -> None:
    script = Script(httpx.ConnectError("refused"))
    policy = RetryPolicy(max_retries=2, backoff=Backoff(base=1, cap=4), rng=lambda low, high: (low + high) / 2)
    with sync_client(script, fake_time, policy) as jobs, pytest.raises(ServerUnreachable):
        jobs.get("j")
    assert fake_time.slept == [0.5, 1.0]


@pytest.mark.parametrize(
    ("error", "call", "attempts"),
    [
        (httpx.ReadTimeout("timed out"), "get", 3),  # a GET may be repeated
        (httpx.ReadTimeout("timed out"), "submit", 3),  # keyed: a repeat returns the first job
        (httpx.ReadTimeout("timed out"), "cancel", 1),  # it may have arrived: not repeated
        (httpx.RemoteProtocolError("peer closed"), "retry", 1),
        (httpx.ConnectError("refused"), "cancel", 3),  # it never left: repeated
        (httpx.ConnectTimeout("timed out"), "retry", 3),
    ],
)
def test_which_calls_are_resent_after_a_transport_error(fake_time: FakeTime, error: Exception, call: str, attempts: int) -> None:
    script = Script(error)
    with sync_client(script, fake_time, RetryPolicy(max_retries=2)) as jobs, pytest.raises(ServerUnreachable):
        getattr(jobs, call)("echo")
    assert len(script.requests) == attempts


def test_no_retries(fake_time: FakeTime) -> None:
    script = Script(httpx.ConnectError("refused"))
    with sync_client(script, fake_time, RetryPolicy.none()) as jobs, pytest.raises(ServerUnreachable, match="refused$"):
        jobs.health()
    assert (len(script.requests), fake_time.slept) == (1, [])


def test_a_timeout_without_text_is_named() -> None:
    script = Script(httpx.ReadTimeout(""))
    with Client(BASE, transport=httpx.MockTransport(script), retry=RetryPolicy.none()) as jobs:
        with pytest.raises(ServerUnreachable, match="^cannot reach jobsvc at http://localhost: ReadTimeout$"):
            jobs.get("j")


# -- problems -> exceptions --------------------------------------------------------------


@pytest.mark.parametrize(
    ("response", "cls"),
    [
        (problem(404, "job-not-found"), JobNotFound),
        (problem(404, "not-found"), NotFound),
        (problem(409, "conflict"), Conflict),
        (problem(409, "illegal-transition"), IllegalTransition),
        (problem(422, "invalid-job"), InvalidJob),
        (problem(422, "unknown-task", known_tasks=["echo"]), UnknownTask),
        (problem(400, "bad-request"), RequestRejected),
        (problem(413, "payload-too-large"), RequestRejected),
        (problem(429, "too-many-pending"), TooManyRequests),
        (problem(500, "internal-error"), ServerError),
        (problem(503, "store-unavailable"), Unavailable),
        (problem(502, "job-not-found"), ServerError),  # a slug that disagrees with the status
        (problem(418, "teapot"), RequestRejected),
    ],
)
def test_problem_json_maps_to_one_exception_class(fake_time: FakeTime, response: httpx.Response, cls: type[APIError]) -> None:
    with sync_client(Script(response), fake_time, RetryPolicy.none()) as jobs, pytest.raises(APIError) as caught:
        jobs.get("j")
    error = caught.value
    assert type(error) is cls
    assert (str(error), error.status, error.title, error.detail, error.instance) == ("it went wrong", response.status_code, "Title", "it went wrong", "/x")
    assert error.type == response.json()["type"] and error.problem == response.json()


def test_problem_fields_are_kept(fake_time: FakeTime) -> None:
    invalid = problem(422, "invalid-job", "the submission is invalid", errors=["expected number @ $.payload.seconds", "bad @ $.id"])
    unknown = problem(422, "unknown-task", "unknown task 'x'", errors=["unknown task 'x' @ $.task"], known_tasks=["echo", "fail"])
    busy = problem(429, "too-many-pending", headers={"Retry-After": "30"})
    with sync_client(Script(invalid, unknown, busy), fake_time, RetryPolicy.none()) as jobs:
        with pytest.raises(InvalidJob) as caught_invalid:
            jobs.submit("sleep", {"seconds": "x"})
        with pytest.raises(UnknownTask) as caught_unknown:
            jobs.submit("x")
        with pytest.raises(TooManyRequests) as caught_busy:
            jobs.submit("echo")
    assert caught_invalid.value.errors == ["expected number @ $.payload.seconds", "bad @ $.id"]
    assert (caught_unknown.value.known_tasks, caught_unknown.value.errors) == (["echo", "fail"], ["unknown task 'x' @ $.task"])
    assert caught_busy.value.retry_after == 30.0


@pytest.mark.parametrize(
    ("response", "cls", "message"),
    [
        (httpx.Response(502, text="<html><body>Bad   gateway</body></html>"), ServerError, "HTTP 502: <html><body>Bad gateway</body></html>"),
        (httpx.Response(504), ServerError, "HTTP 504 Gateway Timeout"),
        (httpx.Response(404, text="Not here"), NotFound, "HTTP 404: Not here"),
        (httpx.Response(200, text="<html>"), UnexpectedResponse, "unexpected answer to GET /jobs/j: the body is not JSON"),
        (httpx.Response(304), UnexpectedResponse, "unexpected answer to GET /jobs/j: HTTP 304"),
        (httpx.Response(200, json=[1]), UnexpectedResponse, "unexpected answer to GET /jobs/j: expected a JSON object, got list @ $"),
    ],
)
def test_answers_that_are_not_jobsvcs(fake_time: FakeTime, response: httpx.Response, cls: type[Exception], message: str) -> None:
    with sync_client(Script(response), fake_time, RetryPolicy.none()) as jobs, pytest.raises(cls) as caught:
        jobs.get("j")
    assert type(caught.value) is cls and str(caught.value) == message


# -- reading answers -----------------------------------------------------------------------


def test_unknown_fields_are_ignored_and_kept_in_raw(fake_time: FakeTime) -> None:
    body = job_json(
        state="dead",
        shard=7,
        finished_at="2026-11-29T10:00:02.5+01:00",
        errors=[{"attempt": 1, "at": "2026-11-29T10:00:01Z", "type": "Boom", "message": "no", "trace_id": "t"}],
    )
    with sync_client(Script(httpx.Response(200, json=body)), fake_time) as jobs:
        job = jobs.get("job-1")
    assert job.state is JobState.DEAD and job.is_final and job.raw == body and job.raw["shard"] == 7
    assert job.finished_at == dt.datetime(2026, 11, 29, 9, 0, 2, 500000, tzinfo=dt.UTC)
    assert job.errors[0].at == dt.datetime(2026, 11, 29, 10, 0, 1, tzinfo=dt.UTC) and job.errors[0].raw["trace_id"] == "t"


@pytest.mark.parametrize(
    ("changes", "problem_text"),
    [
        ({"state": None}, "invalid value for type, expected JobState @ $.state"),
        ({"state": "paused"}, "invalid value for type, expected JobState @ $.state"),
        ({"attempts": "1"}, "invalid value for type, expected int @ $.attempts"),
        ({"attempts": True}, "invalid value for type, expected int @ $.attempts"),
        ({"created_at": "2026-11-29T10:00:00"}, "invalid value for type, expected datetime @ $.created_at"),
        ({"created_at": "yesterday"}, "invalid value for type, expected datetime @ $.created_at"),
        ({"errors": [{"attempt": 1}]}, "required field missing @ $.errors[0].at"),
    ],
)
def test_fields_the_client_needs_are_checked(fake_time: FakeTime, changes: dict[str, Any], problem_text: str) -> None:
    body = job_json(**changes)
    with sync_client(Script(httpx.Response(200, json=body)), fake_time) as jobs, pytest.raises(UnexpectedResponse) as caught:
        jobs.get("job-1")
    assert problem_text in str(caught.value)
    assert str(caught.value).startswith("unexpected answer to GET /jobs/job-1: ")


def test_a_missing_field_is_named(fake_time: FakeTime) -> None:
    body = job_json()
    del body["state"]
    with sync_client(Script(httpx.Response(200, json=body)), fake_time) as jobs, pytest.raises(UnexpectedResponse, match=r"required field missing @ \$\.state"):
        jobs.get("job-1")


def test_ready_reads_a_503_as_not_ready_and_does_not_retry(fake_time: FakeTime) -> None:
    script = Script(httpx.Response(503, json={"status": "unavailable", "reason": "draining", "workers": 8}, headers={"Retry-After": "1"}))
    with sync_client(script, fake_time) as jobs:
        readiness = jobs.ready()
    assert (readiness.ready, readiness.reason, readiness.raw["workers"], len(script.requests)) == (False, "draining", 8, 1)


def test_ready_without_json_is_an_error(fake_time: FakeTime) -> None:
    with sync_client(Script(httpx.Response(503, text="down")), fake_time, RetryPolicy.none()) as jobs, pytest.raises(Unavailable, match="^HTTP 503: down$"):
        jobs.ready()


# -- wait: long polls ----------------------------------------------------------------------


class LongPolls:
    """``GET /jobs/{id}?wait=S`` the way the server answers it: holds the request for S
    seconds of (virtual) time unless the job becomes final at ``final_at``."""

    def __init__(self, final_at: float = float("inf"), *, early: bool = False) -> None:
        self.final_at = final_at
        self.early = early  # a draining server answers at once
        self.waits: list[str] = []
        self.times: list[float] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        assert len(self.waits) < 20, "the client polls in a loop"  # fail, not hang, if it does
        self.waits.append(request.url.params["wait"])
        self.times.append(trio.current_time())
        if not self.early:
            until = min(trio.current_time() + float(request.url.params["wait"]), self.final_at)
            await trio.sleep_until(until)
        state = "succeeded" if trio.current_time() >= self.final_at else "running"
        return httpx.Response(200, json=job_json(state=state))


async def test_wait_loops_over_long_polls_until_the_job_is_final(autojump_clock: trio.testing.MockClock) -> None:
    polls = LongPolls(final_at=130)
    updates: list[JobState] = []
    async with AsyncClient(BASE, transport=httpx.MockTransport(polls)) as jobs:
        job = await jobs.wait("job-1", on_update=lambda j: updates.append(j.state))
    assert job.state is JobState.SUCCEEDED and trio.current_time() == 130
    assert (polls.waits, polls.times) == (["60", "60", "60"], [0, 60, 120])
    assert updates == [JobState.RUNNING, JobState.RUNNING, JobState.SUCCEEDED]


async def test_wait_asks_for_no_more_than_the_time_left(autojump_clock: trio.testing.MockClock) -> None:
    polls = LongPolls()
    async with AsyncClient(BASE, transport=httpx.MockTransport(polls)) as jobs:
        with pytest.raises(WaitTimeout, match="^job job-1 is still running after 150s$") as caught:
            await jobs.wait("job-1", timeout=150, poll=60)
    assert (polls.waits, trio.current_time(), caught.value.job.state) == (["60", "60", "30"], 150, JobState.RUNNING)


async def test_wait_polls_at_most_once_a_second_when_the_server_answers_early(autojump_clock: trio.testing.MockClock) -> None:
    polls = LongPolls(early=True)
    async with AsyncClient(BASE, transport=httpx.MockTransport(polls)) as jobs:
        with pytest.raises(WaitTimeout):
            await jobs.wait("job-1", timeout=5)
    assert (polls.times, polls.waits) == ([0, 1, 2, 3, 4, 5], ["5", "4", "3", "2", "1", "0"])


async def test_a_long_poll_gets_its_wait_on_top_of_the_read_timeout(autojump_clock: trio.testing.MockClock) -> None:
    seen: list[dict[str, float | None]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.extensions["timeout"])
        return httpx.Response(200, json=job_json(state="succeeded"))

    async with AsyncClient(BASE, transport=httpx.MockTransport(handler), timeout=5) as jobs:
        await jobs.wait("job-1", timeout=45)
        await jobs.get("job-1")
    assert seen == [{"connect": 5, "read": 50, "write": 5, "pool": 5}, {"connect": 5, "read": 5, "write": 5, "pool": 5}]


def test_wait_checks_its_arguments() -> None:
    with Client(BASE, transport=httpx.MockTransport(Script(accepted()))) as jobs:
        with pytest.raises(ValueError, match="timeout must be"):
            jobs.wait("j", timeout=-1)
        with pytest.raises(ValueError, match="poll must be"):
            jobs.wait("j", poll=61)


# -- asyncio -------------------------------------------------------------------------------


def test_the_async_client_runs_under_asyncio() -> None:
    script = Script(problem(503, "unavailable", headers={"Retry-After": "0"}), accepted(state="succeeded"))

    async def main() -> tuple[JobState, JobState]:
        asyncio.get_running_loop()  # this is asyncio, not trio
        async with AsyncClient(BASE, transport=httpx.MockTransport(script), retry=RetryPolicy(max_retries=1)) as jobs:
            submitted = await jobs.submit("echo", 1)  # the retry sleeps in asyncio (anyio)
            done = await jobs.wait(submitted.id, timeout=1)
        return submitted.state, done.state

    submitted, done = asyncio.run(main())
    assert (submitted, done) == (JobState.SUCCEEDED, JobState.SUCCEEDED)
    assert [r.method for r in script.requests] == ["POST", "POST", "GET"]
    assert script.requests[0].headers["idempotency-key"] == script.requests[1].headers["idempotency-key"]


# -- requests and small parts ------------------------------------------------------------------


def test_submit_batch_sends_one_request_with_one_key(fake_time: FakeTime) -> None:
    answer = httpx.Response(202, json={"jobs": [job_json(id="a", created=True), job_json(id="b", created=False)]})
    script = Script(problem(503, "unavailable", headers={"Retry-After": "1"}), answer)
    run_at = dt.datetime(2027, 1, 1, tzinfo=dt.UTC)
    with sync_client(script, fake_time) as jobs:
        created = jobs.submit_batch([JobSpec(task="echo", id="a", run_at=run_at), JobSpec(task="echo", id="b", max_attempts=2, timeout=3)])
    assert [j.id for j in created] == ["a", "b"] and created[0].raw["created"] is True
    assert len(set(script.keys)) == 1 and [r.url.path for r in script.requests] == ["/jobs/batch"] * 2
    assert json.loads(script.requests[0].content) == {
        "jobs": [{"task": "echo", "id": "a", "run_at": "2027-01-01T00:00:00+00:00"}, {"task": "echo", "id": "b", "max_attempts": 2, "timeout": 3}]
    }


def test_list_sends_its_filters_and_follows_next(fake_time: FakeTime) -> None:
    first = httpx.Response(200, json={"jobs": [job_json(id="1")], "next": "/jobs?state=dead%2Cpending&limit=1&after=7"})
    last = httpx.Response(200, json={"jobs": [job_json(id="2")], "next": None})
    script = Script(first, last)
    with sync_client(script, fake_time) as jobs:
        ids = [j.id for j in jobs.iter_jobs([JobState.DEAD, "pending"], task="t", page_size=1)]
    assert ids == ["1", "2"]
    assert [str(r.url) for r in script.requests] == [
        "http://localhost/jobs?state=dead%2Cpending&task=t&limit=1",
        "http://localhost/jobs?state=dead%2Cpending&limit=1&after=7",
    ]


def test_a_base_url_with_a_path_prefix(fake_time: FakeTime) -> None:
    script = Script(httpx.Response(200, json={"jobs": [], "next": None}), httpx.Response(200, json=job_json()))
    with Client("http://proxy.test/jobsvc/", transport=httpx.MockTransport(script)) as jobs:
        jobs.list(after=5)
        jobs.cancel("a b")
    assert str(script.requests[0].url) == "http://proxy.test/jobsvc/jobs?after=5"
    assert script.requests[1].url.raw_path == b"/jobsvc/jobs/a%20b/cancel"


@pytest.mark.parametrize("url", ["127.0.0.1:3000", "ftp://host", "http://", "jobsvc"])
def test_a_bad_url_is_refused_at_once(url: str) -> None:
    with pytest.raises(ValueError, match="invalid jobsvc URL"):
        Client(url)


def test_job_spec_json() -> None:
    assert JobSpec(task="t").to_json() == {"task": "t"}
    assert JobSpec(task="t", payload=0, id=0, priority=0, delay=0).to_json() == {"task": "t", "payload": 0, "id": 0, "priority": 0, "delay": 0}
    assert JobSpec(task="t", run_at="2027-01-01T00:00:00Z").to_json() == {"task": "t", "run_at": "2027-01-01T00:00:00Z"}
    with pytest.raises(ValueError, match="aware datetime"):
        JobSpec(task="t", run_at=dt.datetime(2027, 1, 1)).to_json()  # noqa: DTZ001 - the point of the test


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        (None, None),
        ("3", 3.0),
        (" 2.5 ", 2.5),
        ("-4", 0.0),
        ("soon", None),
        ("nan", None),
        ("Wed, 21 Oct 2026 07:28:30 GMT", 30.0),
        ("Wed, 21 Oct 2026 07:27:00 GMT", 0.0),
    ],
)
def test_retry_after_header(header: str | None, seconds: float | None) -> None:
    now = dt.datetime(2026, 10, 21, 7, 28, tzinfo=dt.UTC)
    assert retry_after_seconds(header, now=now) == seconds


def _names(classes: Sequence[type]) -> list[str]:
    return [c.__name__ for c in classes]


def test_the_exception_tree_is_as_documented() -> None:
    import jobsvc.client as module

    documented = module.__doc__ or ""
    tree = documented[documented.index("    ClientError") :]
    for line in tree.splitlines():
        name = line.strip(" x+").split(" ")[0]
        if not name:
            continue
        cls = getattr(module, name)
        assert issubclass(cls, module.ClientError), name
    assert _names(JobNotFound.__mro__[:5]) == ["JobNotFound", "NotFound", "RequestRejected", "APIError", "ClientError"]
    assert _names(Unavailable.__mro__[:4]) == ["Unavailable", "ServerError", "APIError", "ClientError"]
    assert _names(UnknownTask.__mro__[:4]) == ["UnknownTask", "InvalidJob", "RequestRejected", "APIError"]
    assert _names(IllegalTransition.__mro__[:3]) == ["IllegalTransition", "Conflict", "RequestRejected"]
    assert _names(TooManyRequests.__mro__[:2]) == ["TooManyRequests", "RequestRejected"]
