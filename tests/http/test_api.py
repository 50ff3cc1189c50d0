"""The HTTP API, in process: httpx.AsyncClient over ASGITransport against a running JobService
on the memory store. Time-driven tests use ``autojump_clock`` and assert exact virtual times."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from jobsvc.app import create_app
from jobsvc.clock import TrioClock
from jobsvc.codec import iso
from jobsvc.service import JobService
from jobsvc.tasks import Registry

JSON = {"content-type": "application/json"}
PROBLEM_KEYS = {"type", "title", "status", "detail"}


# -- fixtures and helpers ------------------------------------------------------------


@pytest.fixture
def registry() -> Registry:
    """The test tasks plus the demo module, so the seed service's ``email`` task exists."""
    return Registry.from_modules(["testtasks", "jobsvc.demo"])


async def _no_traceback(response: httpx.Response) -> None:
    await response.aread()
    assert "Traceback" not in response.text
    assert 'File "' not in response.text


@pytest.fixture(autouse=True)
def no_traceback_anywhere(client: httpx.AsyncClient) -> None:
    """Every response of every test in this module is checked for a leaked traceback."""
    client.event_hooks = {"request": [], "response": [_no_traceback]}


@asynccontextmanager
async def client_for(service: JobService) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(service), raise_app_exceptions=False)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://localhost", event_hooks={"response": [_no_traceback]}
    ) as c:
        yield c


def assert_problem(r: httpx.Response, status: int, slug: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert PROBLEM_KEYS <= set(body), body
    assert body["status"] == status
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["detail"], str) and body["detail"]
    if slug is not None:
        assert body["type"] == f"urn:jobsvc:problem:{slug}"
    assert "Traceback" not in r.text and 'File "' not in r.text
    return body  # type: ignore[no-any-return]


async def post_raw(client: httpx.AsyncClient, body: bytes, url: str = "/jobs", **headers: str) -> httpx.Response:
    return await client.post(url, content=body, headers={**JSON, **headers})


async def submit(client: httpx.AsyncClient, body: dict[str, Any], **headers: str) -> dict[str, Any]:
    r = await client.post("/jobs", json=body, headers=headers)
    assert r.status_code == 202, r.text
    return r.json()  # type: ignore[no-any-return]


def now_iso(clock: TrioClock, offset: float = 0.0) -> str:
    stamp = iso(clock.now() + offset)
    assert stamp is not None
    return stamp


# -- submit and read -----------------------------------------------------------------


async def test_post_jobs_returns_202_location_and_the_public_job(
    client: httpx.AsyncClient, clock: TrioClock, autojump_clock: Any
) -> None:
    """POST /jobs answers 202 with Location /jobs/{id} and the job as the public allow-list."""
    r = await client.post("/jobs", json={"task": "echo", "payload": {"a": [1, 2]}, "delay": 10, "priority": 3})
    assert r.status_code == 202
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert r.headers["location"] == f"/jobs/{body['id']}"
    assert r.headers["cache-control"] == "no-store"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert body == {
        "id": body["id"],
        "task": "echo",
        "state": "pending",
        "payload": {"a": [1, 2]},
        "priority": 3,
        "attempts": 0,
        "max_attempts": 5,
        "rescues": 0,
        "timeout": None,
        "run_at": now_iso(clock, 10),
        "created_at": now_iso(clock),
        "updated_at": now_iso(clock),
        "finished_at": None,
        "result": None,
        "errors": [],
        "idempotency_key": None,
        "cancel_requested": False,
        "tenant": None,
    }
    assert len(body["id"]) == 36  # a generated UUID


async def test_get_job_returns_the_stored_job(client: httpx.AsyncClient) -> None:
    """GET /jobs/{id} returns exactly what POST /jobs returned for a job that has not moved."""
    created = await submit(client, {"task": "noop", "id": "get-me", "delay": 60})
    r = await client.get("/jobs/get-me")
    assert r.status_code == 200
    assert r.json() == created


async def test_job_runs_to_succeeded_with_its_result(client: httpx.AsyncClient, autojump_clock: Any) -> None:
    """A submitted echo job is run by a worker and ends succeeded with the payload as its result."""
    job = await submit(client, {"task": "echo", "payload": {"hello": "world"}})
    r = await client.get(f"/jobs/{job['id']}?wait=10")
    assert r.status_code == 200
    body = r.json()
    assert (body["state"], body["result"], body["attempts"], body["errors"]) == ("succeeded", {"hello": "world"}, 1, [])
    assert body["finished_at"] is not None


async def test_wait_returns_when_the_job_finishes_at_the_exact_virtual_time(
    client: httpx.AsyncClient, clock: TrioClock, autojump_clock: Any
) -> None:
    """GET /jobs/{id}?wait=10 on a 2.5 s nap returns at exactly t0+2.5 with the finished job."""
    t0 = trio.current_time()
    job = await submit(client, {"task": "nap", "payload": {"seconds": 2.5}})
    r = await client.get(f"/jobs/{job['id']}?wait=10")
    assert trio.current_time() - t0 == 2.5
    body = r.json()
    assert (r.status_code, body["state"], body["result"]) == (200, "succeeded", {"slept": 2.5})
    assert body["finished_at"] == now_iso(clock)


async def test_wait_gives_up_after_its_timeout_at_the_exact_virtual_time(
    client: httpx.AsyncClient, autojump_clock: Any
) -> None:
    """GET /jobs/{id}?wait=3 on a job that never finishes returns it, still running, at t0+3."""
    job = await submit(client, {"task": "hang"})
    t0 = trio.current_time()
    r = await client.get(f"/jobs/{job['id']}?wait=3")
    assert trio.current_time() - t0 == 3
    assert (r.status_code, r.json()["state"]) == (200, "running")


@pytest.mark.parametrize("wait", ["abc", "-1", "60.5", "1e9", "nan", "inf", "", "0x10"])
async def test_wait_rejects_bad_values_with_400(client: httpx.AsyncClient, wait: str) -> None:
    """wait must be a number of seconds from 0 to 60; anything else is a 400 problem."""
    await submit(client, {"task": "noop", "id": "w", "delay": 60})
    r = await client.get("/jobs/w", params={"wait": wait})
    body = assert_problem(r, 400, "bad-request")
    assert body["detail"] == "wait must be a number of seconds between 0 and 60"


async def test_wait_zero_returns_at_once(client: httpx.AsyncClient, autojump_clock: Any) -> None:
    """wait=0 is allowed and returns the job as it is, without waiting."""
    await submit(client, {"task": "noop", "id": "w0", "delay": 60})
    t0 = trio.current_time()
    r = await client.get("/jobs/w0?wait=0")
    assert (r.status_code, r.json()["state"], trio.current_time()) == (200, "pending", t0)


# -- ids and idempotency -------------------------------------------------------------


async def test_client_supplied_id_replay_and_conflict(client: httpx.AsyncClient) -> None:
    """Same id + same body -> 200 with the first job; same id + another body -> 409 problem."""
    first = await client.post("/jobs", json={"id": "order-42", "task": "echo", "payload": 1, "delay": 60})
    assert (first.status_code, first.headers["location"], first.json()["id"]) == (202, "/jobs/order-42", "order-42")
    again = await client.post("/jobs", json={"id": "order-42", "task": "echo", "payload": 1, "delay": 60})
    assert again.status_code == 200
    assert again.headers["location"] == "/jobs/order-42"
    assert again.json() == first.json()
    other = await client.post("/jobs", json={"id": "order-42", "task": "echo", "payload": 2, "delay": 60})
    body = assert_problem(other, 409, "conflict")
    assert body["detail"] == "a job with id 'order-42' exists with a different body (job order-42)"


async def test_numeric_id_is_the_string_id(client: httpx.AsyncClient) -> None:
    """A numeric id (as the seed service sends) is stored as its decimal string."""
    r = await client.post("/jobs", json={"id": 7, "task": "noop", "delay": 60})
    assert (r.status_code, r.json()["id"], r.headers["location"]) == (202, "7", "/jobs/7")


async def test_idempotency_key_replay_returns_the_first_job(client: httpx.AsyncClient) -> None:
    """Same Idempotency-Key + same body -> 200 and the first job; another body -> 409 problem."""
    body = {"task": "echo", "payload": {"n": 1}, "delay": 60}
    first = await client.post("/jobs", json=body, headers={"Idempotency-Key": "key-1"})
    assert first.status_code == 202
    assert first.json()["idempotency_key"] == "key-1"
    replay = await client.post("/jobs", json={"delay": 60, "payload": {"n": 1}, "task": "echo"}, headers={"Idempotency-Key": "key-1"})
    assert replay.status_code == 200
    assert replay.json() == first.json()
    assert replay.headers["location"] == f"/jobs/{first.json()['id']}"
    conflict = await client.post("/jobs", json={**body, "payload": {"n": 2}}, headers={"Idempotency-Key": "key-1"})
    problem = assert_problem(conflict, 409, "conflict")
    assert problem["detail"] == f"a job with Idempotency-Key 'key-1' exists with a different body (job {first.json()['id']})"
    listed = (await client.get("/jobs")).json()["jobs"]
    assert [j["id"] for j in listed] == [first.json()["id"]]


@pytest.mark.parametrize("key", ["", "k" * 256])
async def test_idempotency_key_length_is_checked(client: httpx.AsyncClient, key: str) -> None:
    """An Idempotency-Key of 0 or more than 255 characters is a 400 problem."""
    r = await client.post("/jobs", json={"task": "noop"}, headers={"Idempotency-Key": key})
    body = assert_problem(r, 400, "bad-request")
    assert body["detail"] == "the Idempotency-Key header must be 1 to 255 characters"


async def test_batch_idempotency_key_length_is_checked(client: httpx.AsyncClient) -> None:
    """POST /jobs/batch applies the same 1..255 character Idempotency-Key rule as POST /jobs."""
    r = await client.post("/jobs/batch", json={"jobs": [{"task": "noop"}]}, headers={"Idempotency-Key": "k" * 300})
    body = assert_problem(r, 400, "bad-request")
    assert body["detail"] == "the Idempotency-Key header must be 1 to 255 characters"
    assert (await client.get("/jobs")).json()["jobs"] == []


# -- batches ---------------------------------------------------------------------------


async def test_batch_creates_all_jobs_with_per_item_created(client: httpx.AsyncClient) -> None:
    """POST /jobs/batch -> 202, one entry per item in order, created=False for an existing id."""
    await submit(client, {"id": "old", "task": "noop", "delay": 60})
    r = await client.post(
        "/jobs/batch",
        json={"jobs": [{"id": "b1", "task": "noop", "delay": 60}, {"id": "old", "task": "noop", "delay": 60}, {"id": "b2", "task": "echo", "payload": 5, "delay": 60}]},
    )
    assert r.status_code == 202
    jobs = r.json()["jobs"]
    assert [(j["id"], j["task"], j["created"]) for j in jobs] == [("b1", "noop", True), ("old", "noop", False), ("b2", "echo", True)]
    listed = (await client.get("/jobs")).json()["jobs"]
    assert [j["id"] for j in listed] == ["old", "b1", "b2"]


async def test_batch_with_invalid_items_is_422_naming_paths_and_inserts_nothing(client: httpx.AsyncClient) -> None:
    """Invalid batch items -> 422 listing every problem with its $.jobs[i] path; no job is stored."""
    r = await client.post(
        "/jobs/batch",
        json={"jobs": [{"task": "noop"}, {"task": "noop", "max_attempts": "3"}, 5, {"task": "sleep", "payload": {"seconds": "x"}}]},
    )
    body = assert_problem(r, 422, "invalid-job")
    assert body["errors"] == [
        "invalid value for type, expected int | None @ $.jobs[1].max_attempts",
        "expected a JSON object, got a number @ $.jobs[2]",
    ]
    r = await client.post("/jobs/batch", json={"jobs": [{"task": "noop"}, {"task": "sleep", "payload": {"seconds": "x"}}]})
    body = assert_problem(r, 422, "invalid-job")
    assert body["errors"] == ["invalid value for type, expected float @ $.jobs[1].payload.seconds"]
    assert (await client.get("/jobs")).json() == {"jobs": [], "next": None}


@pytest.mark.parametrize("body", [[], {"jobs": []}, {"jobs": {}}, {"jobs": [], "x": 1}, {"jobs": [{"task": "noop"}] * 1001}])
async def test_batch_shape_errors_are_422(client: httpx.AsyncClient, body: Any) -> None:
    """A batch body that is not {"jobs": [1..1000 items]} is a 422 problem."""
    assert_problem(await client.post("/jobs/batch", json=body), 422, "invalid-job")


async def test_batch_unknown_task_names_the_item_path(client: httpx.AsyncClient) -> None:
    """An unknown task in item 1 of a batch is reported at $.jobs[1].task."""
    r = await client.post("/jobs/batch", json={"jobs": [{"task": "noop"}, {"task": "nope"}]})
    body = assert_problem(r, 422, "unknown-task")
    assert body["errors"] == ["unknown task 'nope' @ $.jobs[1].task"]


async def test_batch_with_a_conflicting_item_inserts_nothing(client: httpx.AsyncClient) -> None:
    """A batch answered 409 (one item conflicts with an existing job) stores none of its items."""
    await submit(client, {"id": "taken", "task": "noop", "delay": 60})
    r = await client.post("/jobs/batch", json={"jobs": [{"id": "fresh", "task": "noop"}, {"id": "taken", "task": "echo"}]})
    body = assert_problem(r, 409, "conflict")
    assert body["detail"] == "a job with id 'taken' exists with a different body (job taken)"
    assert_problem(await client.get("/jobs/fresh"), 404, "job-not-found")
    assert [j["id"] for j in (await client.get("/jobs")).json()["jobs"]] == ["taken"]


# -- listing and the dead-letter queue -------------------------------------------------


async def test_listing_pages_through_next_and_sees_every_job_once(client: httpx.AsyncClient) -> None:
    """GET /jobs?limit=3 pages 7 jobs as 3+3+1 through `next`, each exactly once, in submit order."""
    ids = [(await submit(client, {"task": "noop", "delay": 60, "id": f"p{i}"}))["id"] for i in range(7)]
    seen, pages, url = [], [], "/jobs?limit=3&state=pending"
    while url is not None:
        r = await client.get(url)
        assert r.status_code == 200
        page = r.json()
        pages.append(len(page["jobs"]))
        seen.extend(j["id"] for j in page["jobs"])
        url = page["next"]
        if url is not None:
            assert "state=pending" in url and "limit=3" in url
    assert seen == ids
    assert pages == [3, 3, 1]


async def test_listing_filters_by_state_and_task(client: httpx.AsyncClient) -> None:
    """state= and task= filter the listing; state takes a comma-separated list."""
    await submit(client, {"id": "n1", "task": "noop", "delay": 60})
    await submit(client, {"id": "e1", "task": "echo", "delay": 60})
    await submit(client, {"id": "n2", "task": "noop", "delay": 60})
    await client.post("/jobs/n2/cancel")

    async def ids(query: str) -> list[str]:
        r = await client.get(f"/jobs?{query}")
        assert r.status_code == 200
        return [j["id"] for j in r.json()["jobs"]]

    assert await ids("task=noop") == ["n1", "n2"]
    assert await ids("state=pending") == ["n1", "e1"]
    assert await ids("state=pending&task=noop") == ["n1"]
    assert await ids("state=cancelled,pending") == ["n1", "e1", "n2"]
    assert await ids("state=succeeded") == []
    assert await ids("task=nope") == []


@pytest.mark.parametrize("query", ["state=bogus", "state=pending,", "limit=0", "limit=1001", "limit=x", "after=-1", "limit=1.5"])
async def test_listing_bad_query_is_400(client: httpx.AsyncClient, query: str) -> None:
    """A bad state filter, limit or cursor is a 400 problem."""
    assert_problem(await client.get(f"/jobs?{query}"), 400, "bad-request")


async def test_bad_state_filter_names_the_states(client: httpx.AsyncClient) -> None:
    """The 400 for an unknown state names it and lists the known ones."""
    body = assert_problem(await client.get("/jobs?state=done"), 400, "bad-request")
    assert body["detail"] == "unknown state 'done'; states are pending, running, retrying, succeeded, dead, cancelled"


@pytest.mark.parametrize("param", ["limit", "after"])
async def test_listing_superscript_digit_is_400(client: httpx.AsyncClient, param: str) -> None:
    """A non-ASCII 'digit' such as ² in limit/after is a 400 problem, not a 500."""
    body = assert_problem(await client.get("/jobs", params={param: "\u00b2"}), 400, "bad-request")
    assert body["detail"].startswith(f"{param} must be a whole number between ")


async def test_dead_jobs_are_the_dead_letter_queue(client: httpx.AsyncClient, autojump_clock: Any) -> None:
    """A job that raises PermanentError is dead and listed by GET /jobs?state=dead with its error."""
    job = await submit(client, {"task": "permanent", "id": "doomed"})
    await submit(client, {"task": "noop", "id": "fine"})
    r = await client.get("/jobs/doomed?wait=10")
    assert r.json()["state"] == "dead"
    await trio.testing.wait_all_tasks_blocked()
    dead = (await client.get("/jobs?state=dead")).json()
    assert [j["id"] for j in dead["jobs"]] == [job["id"]]
    [error] = dead["jobs"][0]["errors"]
    assert (error["attempt"], error["type"], error["message"]) == (1, "PermanentError", "this can never work")


async def test_fail_task_exhausts_attempts_then_is_dead(client: httpx.AsyncClient, autojump_clock: Any) -> None:
    """The built-in fail task retries with backoff 1 s then 2 s and is dead after 3 attempts."""
    t0 = trio.current_time()
    job = await submit(client, {"task": "fail", "payload": {"message": "nope"}})
    body = (await client.get(f"/jobs/{job['id']}?wait=60")).json()
    assert trio.current_time() - t0 == 3
    assert (body["state"], body["attempts"]) == ("dead", 3)
    assert [(e["attempt"], e["type"], e["message"]) for e in body["errors"]] == [(i, "TaskFailed", "nope") for i in (1, 2, 3)]


# -- retry and cancel ----------------------------------------------------------------


async def test_retry_puts_a_dead_job_back_and_it_runs_again(client: httpx.AsyncClient, autojump_clock: Any) -> None:
    """POST /jobs/{id}/retry on a dead job -> 200 pending with fresh attempts; it runs again."""
    await submit(client, {"task": "permanent", "id": "again"})
    assert (await client.get("/jobs/again?wait=10")).json()["state"] == "dead"
    r = await client.post("/jobs/again/retry")
    assert r.status_code == 200
    body = r.json()
    assert (body["state"], body["attempts"], body["finished_at"], len(body["errors"])) == ("pending", 0, None, 1)
    body = (await client.get("/jobs/again?wait=10")).json()
    assert (body["state"], body["attempts"], [e["attempt"] for e in body["errors"]]) == ("dead", 1, [1, 1])


async def test_retry_of_a_succeeded_job_is_409(client: httpx.AsyncClient, autojump_clock: Any) -> None:
    """Retrying a succeeded job is an illegal transition: 409 problem, and the job is unchanged."""
    await submit(client, {"task": "noop", "id": "done"})
    before = (await client.get("/jobs/done?wait=10")).json()
    assert before["state"] == "succeeded"
    body = assert_problem(await client.post("/jobs/done/retry"), 409, "illegal-transition")
    assert body["detail"] == "job done is succeeded; cannot redrive"
    assert (await client.get("/jobs/done")).json() == before


async def test_retry_and_cancel_of_an_unknown_job_are_404(client: httpx.AsyncClient) -> None:
    """retry and cancel of a job id that does not exist are 404 problems."""
    assert_problem(await client.post("/jobs/ghost/retry"), 404, "job-not-found")
    assert_problem(await client.post("/jobs/ghost/cancel"), 404, "job-not-found")


async def test_cancel_a_pending_job_is_200_cancelled(client: httpx.AsyncClient, clock: TrioClock, autojump_clock: Any) -> None:
    """Cancelling a delayed (pending) job cancels it at once: 200 with state cancelled."""
    await submit(client, {"task": "noop", "id": "later", "delay": 3600})
    r = await client.post("/jobs/later/cancel")
    assert r.status_code == 200
    body = r.json()
    assert (body["state"], body["cancel_requested"], body["finished_at"]) == ("cancelled", False, now_iso(clock))
    assert_problem(await client.post("/jobs/later/cancel"), 409, "illegal-transition")


async def test_cancel_a_running_job_is_202_then_cancelled(client: httpx.AsyncClient, autojump_clock: Any) -> None:
    """Cancelling a running hang job -> 202 (still running, cancel requested), then it is cancelled."""
    await submit(client, {"task": "hang", "id": "stuck"})
    await trio.testing.wait_all_tasks_blocked()
    assert (await client.get("/jobs/stuck")).json()["state"] == "running"
    t0 = trio.current_time()
    r = await client.post("/jobs/stuck/cancel")
    assert r.status_code == 202
    assert (r.json()["state"], r.json()["cancel_requested"]) == ("running", True)
    body = (await client.get("/jobs/stuck?wait=10")).json()
    assert (body["state"], body["attempts"], body["errors"]) == ("cancelled", 1, [])
    assert trio.current_time() == t0  # cancellation is immediate, not a timeout


async def test_retry_of_a_cancelled_job_runs_it(client: httpx.AsyncClient, autojump_clock: Any) -> None:
    """A cancelled job can be redriven with POST /jobs/{id}/retry and then runs to completion."""
    await submit(client, {"task": "echo", "id": "revive", "payload": "x", "delay": 3600})
    await client.post("/jobs/revive/cancel")
    r = await client.post("/jobs/revive/retry")
    assert (r.status_code, r.json()["state"]) == (200, "pending")
    body = (await client.get("/jobs/revive?wait=10")).json()
    assert (body["state"], body["result"]) == ("succeeded", "x")


# -- tasks, health, readiness, metrics -----------------------------------------------


async def test_tasks_lists_every_task_with_its_payload_schema(client: httpx.AsyncClient, registry: Registry) -> None:
    """GET /tasks lists the registered tasks by name with payload_schema and effective defaults."""
    r = await client.get("/tasks")
    assert r.status_code == 200
    tasks = {t["name"]: t for t in r.json()["tasks"]}
    assert sorted(tasks) == registry.names()
    assert {"echo", "email", "fail", "flaky", "hang", "nap", "noop", "permanent", "sleep"} <= set(tasks)
    assert tasks["sleep"]["payload_schema"] == {
        "type": "object",
        "properties": {"seconds": {"type": "number"}},
        "required": ["seconds"],
        "additionalProperties": False,
    }
    assert tasks["flaky"]["payload_schema"]["properties"] == {"fail_times": {"type": "integer"}}
    assert tasks["flaky"]["payload_schema"]["required"] == []
    assert tasks["email"]["payload_schema"] == {"type": "string"}
    assert tasks["echo"]["payload_schema"] == {}
    assert tasks["hang"] == {
        "name": "hang",
        "description": "Never finishes on its own.",
        "payload_schema": {},
        "max_attempts": 2,
        "timeout": 10,
        "backoff": {"base": 1, "cap": 1, "jitter": "none"},
    }
    assert (tasks["noop"]["max_attempts"], tasks["noop"]["timeout"], tasks["noop"]["backoff"]) == (
        5, 30, {"base": 1, "cap": 60, "jitter": "full"},
    )


async def test_health(client: httpx.AsyncClient) -> None:
    """GET /health is 200 with a fixed body."""
    r = await client.get("/health")
    assert (r.status_code, r.json()) == (200, {"status": "ok", "message": "Service status: All good!"})


async def test_ready_then_503_while_draining_and_submissions_503(client: httpx.AsyncClient, service: JobService) -> None:
    """/ready is 200 until begin_shutdown, then 503 + Retry-After; POST /jobs then 503 + Retry-After."""
    r = await client.get("/ready")
    assert r.status_code == 200
    assert r.json() == {
        "status": "ready", "reason": "ok", "workers": 2, "busy_workers": 0, "channel_buffered": 0, "recording": 0,
        "draining": False, "owner": "test-owner", "store": "memory", "store_stats": {},
        "abandoned_threads": 0, "stuck_handlers": 0, "handler_processes": 0,
    }
    service.begin_shutdown()
    r = await client.get("/ready")
    assert (r.status_code, r.headers["retry-after"]) == (503, "1")
    assert (r.json()["status"], r.json()["reason"], r.json()["draining"]) == ("unavailable", "draining", True)
    r = await client.post("/jobs", json={"task": "noop"})
    body = assert_problem(r, 503, "unavailable")
    assert r.headers["retry-after"] == "1"
    assert body["detail"] == "the service is shutting down; retry on another instance or later"


async def test_metrics_count_job_events(client: httpx.AsyncClient, autojump_clock: Any) -> None:
    """/metrics is Prometheus text with job counters and store-wide jobs by state and task
    (the full set is checked in tests/obs)."""
    job = await submit(client, {"task": "noop"})
    await client.get(f"/jobs/{job['id']}?wait=10")
    r = await client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    lines = r.text.splitlines()
    assert 'jobsvc_jobs_submitted_total{task="noop"} 1.0' in lines
    assert 'jobsvc_job_outcomes_total{outcome="succeeded",task="noop"} 1.0' in lines
    assert 'jobsvc_queue_jobs{state="succeeded",task="noop"} 1.0' in lines
    assert 'jobsvc_queue_jobs{state="pending",task="noop"} 0.0' in lines


async def test_max_pending_gives_429_with_retry_after(start_service: Callable[..., Any]) -> None:
    """With max_pending=2, a third pending submission is 429 + Retry-After; room frees it again."""
    service = await start_service(max_pending=2)
    async with client_for(service) as c:
        for i in range(2):
            assert (await c.post("/jobs", json={"task": "noop", "id": f"q{i}", "delay": 60})).status_code == 202
        r = await c.post("/jobs", json={"task": "noop", "id": "q2", "delay": 60})
        body = assert_problem(r, 429, "too-many-pending")
        assert r.headers["retry-after"] == "1"
        assert body["detail"] == "2 jobs are pending (the limit is 2); retry later"
        assert_problem(await c.get("/jobs/q2"), 404)
        assert (await c.post("/jobs/q0/cancel")).status_code == 200
        assert (await c.post("/jobs", json={"task": "noop", "id": "q2", "delay": 60})).status_code == 202


# -- the seed service's endpoints ------------------------------------------------------


async def test_seed_submit_and_status(client: httpx.AsyncClient, autojump_clock: Any) -> None:
    """The seed curl flow works unchanged: POST /submit {"id": 1, "task_type": "email", ...}, GET /status/1."""
    r = await client.post("/submit", json={"id": 1, "task_type": "email", "payload": "send welcome email"})
    assert r.status_code == 202
    assert r.headers["location"] == "/jobs/1"
    body = r.json()
    assert (body["message"], body["id"], body["task"], body["payload"], body["status_url"]) == (
        "Job accepted. Processing shortly...", "1", "email", "send welcome email", "/status/1",
    )
    again = await client.post("/submit", json={"id": 1, "task_type": "email", "payload": "send welcome email"})
    assert (again.status_code, again.json()["message"]) == (200, "Job already accepted.")
    final = (await client.get("/jobs/1?wait=60")).json()
    r = await client.get("/status/1")
    assert r.status_code == 200
    status = r.json()
    assert status["status"] == status["state"] == final["state"]
    # The demo task fails at random (50 %): either it got through or it used its 3 attempts.
    if status["state"] == "succeeded":
        assert status["result"] == {"sent": "send welcome email"}
    else:
        assert status["state"] == "dead"
        assert [e["message"] for e in status["errors"]] == ["Job processing failed. Network issues?"] * 3


async def test_seed_errors_are_problems(client: httpx.AsyncClient) -> None:
    """/submit validates like /jobs (paths say task_type); /status of an unknown job is 404."""
    body = assert_problem(await client.post("/submit", json={"id": 1, "payload": "x"}), 422, "invalid-job")
    assert body["errors"] == ["required field missing @ $.task_type"]
    body = assert_problem(await client.post("/submit", json={"id": 1, "task_type": ""}), 422, "invalid-job")
    assert body["errors"] == ["task must not be empty @ $.task_type"]
    assert_problem(await client.get("/status/404"), 404, "job-not-found")


# -- every error is a problem ----------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (b'{"task": "noop"', "the request body is not valid JSON: Expecting ',' delimiter at line 1 column 16"),
        (b'{"task": "noop"}\xff', "the request body is not valid UTF-8"),
        (b'{"task": "\xc3("}', "the request body is not valid UTF-8"),
        (b'{"task": "echo", "payload": NaN}', "the request body is not acceptable JSON: NaN is not valid JSON"),
        (b'{"task": "echo", "payload": -Infinity}', "the request body is not acceptable JSON: -Infinity is not valid JSON"),
        (b'{"task": "echo", "task": "noop"}', "the request body is not acceptable JSON: duplicate key 'task'"),
        (b'{"task": "echo", "payload": {"a": 1, "a": 2}}', "the request body is not acceptable JSON: duplicate key 'a'"),
        (b"", "the request body is empty; send a JSON object"),
        (b"  \n\t ", "the request body is empty; send a JSON object"),
    ],
)
async def test_bad_json_is_400(client: httpx.AsyncClient, body: bytes, detail: str) -> None:
    """Malformed JSON, invalid UTF-8, NaN/Infinity, duplicate keys and empty bodies are 400 problems."""
    problem = assert_problem(await post_raw(client, body), 400, "bad-request")
    assert problem["detail"] == detail
    assert problem["instance"] == "/jobs"


@pytest.mark.parametrize("depth", [33, 100, 1000, 100_000])
async def test_deep_nesting_is_400(client: httpx.AsyncClient, depth: int) -> None:
    """JSON nested deeper than 32 levels (33, 100, 1000, 100000) is a 400 problem."""
    body = b'{"task": "echo", "payload": ' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"
    problem = assert_problem(await post_raw(client, body), 400, "bad-request")
    assert problem["detail"] == "the JSON body is nested too deeply (the limit is 32 levels)"


async def test_nesting_of_32_levels_is_accepted(client: httpx.AsyncClient) -> None:
    """Exactly 32 levels of nesting is within the limit."""
    body = b'{"task": "echo", "delay": 60, "payload": ' + b"[" * 31 + b"]" * 31 + b"}"
    assert (await post_raw(client, body)).status_code == 202


async def test_huge_integer_is_400(client: httpx.AsyncClient) -> None:
    """A 5000-digit integer is a 400 problem (CPython's int conversion limit), not a 500."""
    problem = assert_problem(await post_raw(client, b'{"task": "echo", "payload": ' + b"9" * 5000 + b"}"), 400, "bad-request")
    assert "4300 digits" in problem["detail"]


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"])
async def test_non_json_content_type_is_415(client: httpx.AsyncClient, content_type: str) -> None:
    """A body sent with a non-JSON Content-Type is a 415 problem."""
    r = await client.post("/jobs", content=b'{"task": "noop"}', headers={"content-type": content_type})
    problem = assert_problem(r, 415, "unsupported-media-type")
    assert problem["detail"] == f"expected 'Content-Type: application/json', got {content_type!r}"


async def test_json_content_type_with_charset_is_accepted(client: httpx.AsyncClient) -> None:
    """application/json; charset=utf-8 is JSON."""
    r = await client.post("/jobs", content=b'{"task": "noop", "delay": 1}', headers={"content-type": "application/json; charset=utf-8"})
    assert r.status_code == 202


async def test_oversized_body_is_413(client: httpx.AsyncClient) -> None:
    """A body over max_body (256 KiB) with an honest Content-Length is refused before reading: 413."""
    body = b'{"task": "echo", "payload": "' + b"x" * (256 * 1024) + b'"}'
    problem = assert_problem(await post_raw(client, body), 413, "payload-too-large")
    assert problem["detail"] == f"the body is {len(body)} bytes; the limit is 262144"


async def asgi_post(service: JobService, path: str, headers: list[tuple[bytes, bytes]], chunks: list[bytes]) -> tuple[int, dict[str, str], bytes]:
    """Drive the ASGI app directly (httpx's transport leaves its body generator unclosed when the
    app stops reading early, which trio reports as a ResourceWarning)."""
    app = create_app(service)
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
        "headers": [(b"host", b"localhost"), *headers], "client": ("127.0.0.1", 1234), "server": ("127.0.0.1", 80),
    }
    pending = list(chunks)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        chunk = pending.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(pending)}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = sent[0]
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, body


async def test_oversized_body_with_a_lying_content_length_is_413(service: JobService) -> None:
    """A big body under a small, lying Content-Length is counted while streaming: 413, unread chunks left."""
    chunks = [b'{"task": "echo", "payload": "'] + [b"x" * 65536] * 5 + [b'"}']
    headers = [(b"content-type", b"application/json"), (b"content-length", b"20")]
    status, response_headers, body = await asgi_post(service, "/jobs", headers, chunks)
    assert (status, response_headers["content-type"]) == (413, "application/problem+json")
    problem = json.loads(body)
    assert (problem["status"], problem["type"], problem["detail"]) == (
        413, "urn:jobsvc:problem:payload-too-large", "the body exceeds the limit of 262144 bytes",
    )
    assert b"Traceback" not in body


async def test_streamed_body_without_content_length_is_413(service: JobService) -> None:
    """A chunked body (no Content-Length) over the limit is cut off at the limit: 413."""
    chunks = [b'{"task": "echo", "payload": "'] + [b"x" * 100_000] * 3 + [b'"}']
    status, _, body = await asgi_post(service, "/jobs", [(b"content-type", b"application/json")], chunks)
    assert (status, json.loads(body)["detail"]) == (413, "the body exceeds the limit of 262144 bytes")


async def test_streamed_body_within_the_limit_is_read_whole(service: JobService) -> None:
    """A body in several chunks within the limit is reassembled and accepted."""
    chunks = [b'{"task": "echo", ', b'"payload": "', b"y" * 1000, b'", "delay": 5}']
    status, headers, body = await asgi_post(service, "/jobs", [(b"content-type", b"application/json")], chunks)
    assert (status, json.loads(body)["payload"]) == (202, "y" * 1000)
    assert headers["location"] == f"/jobs/{json.loads(body)['id']}"


async def test_body_of_exactly_max_body_is_accepted(start_service: Callable[..., Any]) -> None:
    """The limit is inclusive: a body of exactly max_body bytes is read; one byte more is 413."""
    service = await start_service(max_body=64)
    async with client_for(service) as c:
        head = b'{"task": "echo", "delay": 1, "payload": "'
        exact = head + b"x" * (64 - len(head) - 2) + b'"}'
        assert len(exact) == 64
        assert (await post_raw(c, exact)).status_code == 202
        over = head + b"x" * (65 - len(head) - 2) + b'"}'
        assert_problem(await post_raw(c, over), 413, "payload-too-large")


async def test_unknown_task_is_422_with_known_tasks(client: httpx.AsyncClient, registry: Registry) -> None:
    """An unknown task is a 422 problem whose known_tasks lists the registered tasks."""
    problem = assert_problem(await client.post("/jobs", json={"task": "nope"}), 422, "unknown-task")
    assert problem["known_tasks"] == registry.names()
    assert "email" in problem["known_tasks"] and "flaky" in problem["known_tasks"]
    assert problem["errors"] == ["unknown task 'nope' @ $.task"]
    assert problem["detail"] == f"unknown task 'nope'; known tasks: {', '.join(registry.names())}"


@pytest.mark.parametrize(
    ("body", "errors"),
    [
        ({"task": "sleep", "payload": {"seconds": "1"}}, ["invalid value for type, expected float @ $.payload.seconds"]),
        ({"task": "sleep", "payload": {}}, ["required field missing @ $.payload.seconds"]),
        ({"task": "sleep", "payload": {"seconds": 1, "x": 2}}, ["extra fields found (x) @ $.payload"]),
        ({"task": "sleep"}, ["expected a JSON object, got null @ $.payload"]),
        ({"task": "nap", "payload": [1]}, ["expected a JSON object, got an array @ $.payload"]),
        ({"task": "flaky", "payload": {"fail_times": True}}, ["invalid value for type, expected int @ $.payload.fail_times"]),
        ({"task": "email", "payload": 5}, ["invalid value for type, expected str @ $.payload"]),
    ],
)
async def test_bad_payload_is_422_naming_the_field(client: httpx.AsyncClient, body: dict[str, Any], errors: list[str]) -> None:
    """A payload that does not fit the task's payload type is a 422 naming the field by path."""
    problem = assert_problem(await client.post("/jobs", json=body), 422, "invalid-job")
    assert problem["errors"] == errors
    assert (await client.get("/jobs")).json()["jobs"] == []


async def test_payload_range_error_names_the_field_path(client: httpx.AsyncClient) -> None:
    """sleep with seconds=-1 is a 422 whose error path is $.payload.seconds."""
    problem = assert_problem(await client.post("/jobs", json={"task": "sleep", "payload": {"seconds": -1}}), 422, "invalid-job")
    assert problem["errors"] == ["seconds must be >= 0: -1.0 @ $.payload.seconds"]


@pytest.mark.parametrize(
    ("body", "errors"),
    [
        ({"task": "noop", "foo": 1}, ["extra fields found (foo) @ $"]),
        ({"task": "noop", "state": "succeeded", "attempts": 0}, ["extra fields found (attempts, state) @ $"]),
        ({"payload": 1}, ["required field missing @ $.task"]),
        ({"task": "noop", "max_attempts": "3"}, ["invalid value for type, expected int | None @ $.max_attempts"]),
        ({"task": "noop", "max_attempts": True}, ["invalid value for type, expected int | None @ $.max_attempts"]),
        ({"task": "noop", "priority": 1.5}, ["invalid value for type, expected int @ $.priority"]),
        ({"task": "noop", "delay": "5"}, ["invalid value for type, expected float | None @ $.delay"]),
        ({"task": 5}, ["invalid value for type, expected str @ $.task"]),
        ({"task": ""}, ["task must not be empty @ $.task"]),
        ({"task": "noop", "max_attempts": 0}, ["max_attempts must be between 1 and 1000, not 0 @ $.max_attempts"]),
        ({"task": "noop", "id": "-bad"}, ["a job id is 1 to 128 characters: letters, digits and . _ : @ + = -, starting with a letter or digit @ $.id"]),
        ({"task": "noop", "id": -1}, ["a numeric job id must not be negative @ $.id"]),
        ({"task": "noop", "delay": 1, "run_at": "2030-01-01T00:00:00Z"}, ["give either delay or run_at, not both @ $.run_at"]),
        ({"task": "noop", "run_at": "2030-01-01T00:00:00"}, ["run_at must carry a time zone (for example a trailing Z for UTC) @ $.run_at"]),
        ([{"task": "noop"}], ["expected a JSON object, got an array @ $"]),
        ("noop", ["expected a JSON object, got a string @ $"]),
    ],
)
async def test_invalid_submission_is_422_with_paths(client: httpx.AsyncClient, body: Any, errors: list[str]) -> None:
    """Extra keys, missing keys, wrong types (strictly: "3" and true are not ints) and bad values are 422s."""
    problem = assert_problem(await client.post("/jobs", json=body), 422, "invalid-job")
    assert problem["errors"] == errors


async def test_boolean_id_is_422(client: httpx.AsyncClient) -> None:
    """"id": true is not a job id: 422, not a job named "True"."""
    problem = assert_problem(await client.post("/jobs", json={"task": "noop", "id": True}), 422, "invalid-job")
    assert problem["errors"] == ["a job id is a string or a non-negative integer, not a boolean @ $.id"]


async def test_long_numeric_id_is_422(client: httpx.AsyncClient) -> None:
    """A 200-digit numeric id breaks the 128-character id limit like a 200-character string id."""
    r = await post_raw(client, b'{"task": "noop", "delay": 1, "id": ' + b"9" * 200 + b"}")
    assert assert_problem(r, 422, "invalid-job")["errors"] == ["a job id has at most 128 characters @ $.id"]
    r = await post_raw(client, b'{"task": "noop", "delay": 1, "id": ' + b"9" * 128 + b"}")
    assert (r.status_code, r.json()["id"]) == (202, "9" * 128)


async def test_out_of_range_number_is_400(client: httpx.AsyncClient) -> None:
    """1e400 (infinite as a float) is refused like Infinity: 400, and no job is stored."""
    problem = assert_problem(await post_raw(client, b'{"task": "echo", "payload": 1e400}'), 400, "bad-request")
    assert problem["detail"] == "the request body is not acceptable JSON: the number 1e400 is out of range"
    assert (await client.get("/jobs")).json()["jobs"] == []


async def test_lone_surrogate_is_400(client: httpx.AsyncClient) -> None:
    """A string holding a lone UTF-16 surrogate (not encodable as UTF-8) is a 400 problem."""
    problem = assert_problem(await post_raw(client, b'{"task": "echo", "payload": "\\ud800"}'), 400, "bad-request")
    assert problem["detail"] == "the JSON body contains an unpaired surrogate escape (\\ud800 to \\udfff)"
    assert (await client.get("/jobs")).json()["jobs"] == []


@pytest.mark.parametrize("run_at", ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00", "1969-12-31T23:59:59Z"])
async def test_run_at_out_of_range_is_422_and_listing_still_works(client: httpx.AsyncClient, run_at: str) -> None:
    """A run_at outside 1970..9999 UTC is a 422 naming $.run_at, and nothing is stored."""
    problem = assert_problem(await client.post("/jobs", json={"task": "noop", "run_at": run_at}), 422, "invalid-job")
    assert problem["errors"] == [f"run_at must be between 1970-01-01 and 9999-12-31 UTC, not {run_at!r} @ $.run_at"]
    assert (await client.get("/jobs")).json() == {"jobs": [], "next": None}


async def test_unknown_job_is_404(client: httpx.AsyncClient) -> None:
    """GET /jobs/{id} for an id nobody submitted is a 404 problem naming the id."""
    problem = assert_problem(await client.get("/jobs/no-such-job"), 404, "job-not-found")
    assert (problem["detail"], problem["instance"]) == ("no job has the id 'no-such-job'", "/jobs/no-such-job")


async def test_unknown_route_is_404(client: httpx.AsyncClient) -> None:
    """A path with no route is a 404 problem."""
    problem = assert_problem(await client.get("/v2/jobs"), 404, "not-found")
    assert problem["detail"] == "there is no route /v2/jobs"


@pytest.mark.parametrize(("method", "url"), [("DELETE", "/jobs"), ("PUT", "/jobs/x"), ("GET", "/jobs/x/retry"), ("POST", "/health")])
async def test_wrong_method_is_405(client: httpx.AsyncClient, method: str, url: str) -> None:
    """A known path with the wrong method is a 405 problem with an Allow header."""
    r = await client.request(method, url)
    problem = assert_problem(r, 405, "method-not-allowed")
    assert problem["detail"] == f"{method} is not allowed on {url}"
    assert "allow" in r.headers


async def test_handler_bug_is_500_problem_without_traceback(
    client: httpx.AsyncClient, service: JobService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unexpected exception in a handler is a generic 500 problem: no traceback, no file paths."""

    async def broken(job_id: str) -> None:
        raise RuntimeError("secret internal detail in /srv/jobsvc/store.py")

    monkeypatch.setattr(service, "get", broken)
    r = await client.get("/jobs/anything")
    problem = assert_problem(r, 500, "internal-error")
    assert problem == {
        "type": "urn:jobsvc:problem:internal-error",
        "title": "Internal Server Error",
        "status": 500,
        "detail": "an unexpected error occurred; it has been logged",
        "instance": "/jobs/anything",
    }
    for leak in ("Traceback", 'File "', "RuntimeError", "secret", "/srv/"):
        assert leak not in r.text


async def test_problem_bodies_are_valid_json_with_no_store(client: httpx.AsyncClient) -> None:
    """Problems carry Cache-Control: no-store and nosniff like every other response."""
    r = await post_raw(client, b"{")
    assert (r.headers["cache-control"], r.headers["x-content-type-options"]) == ("no-store", "nosniff")
    assert json.loads(r.content)["status"] == 400


async def test_stats_counts_jobs_by_state(client: httpx.AsyncClient) -> None:
    """GET /stats: counts by state, the oldest due job's age and this instance's workers."""
    await client.post("/jobs", json={"task": "echo", "payload": 1, "delay": 60})
    body = (await client.get("/stats")).json()
    assert body["jobs"]["pending"] == 1 and body["jobs"]["succeeded"] == 0
    assert body["oldest_due_age"] is None
    assert body["instance"]["workers"] == 2 and body["instance"]["draining"] is False


async def test_a_page_of_large_jobs_is_bounded_in_bytes(client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """GET /jobs?limit=1000 over jobs with large payloads stops adding jobs once the page
    passes MAX_PAGE_BYTES (always at least one job), and ``next`` continues right after the
    last job shown: following it visits every job once."""
    from jobsvc import app as app_module

    monkeypatch.setattr(app_module, "MAX_PAGE_BYTES", 50_000)
    big = "x" * 20_000
    ids = [(await client.post("/jobs", json={"task": "echo", "payload": big, "delay": 600})).json()["id"] for _ in range(7)]
    seen: list[str] = []
    url: str | None = "/jobs?limit=1000"
    pages = 0
    while url is not None:
        r = await client.get(url)
        assert r.status_code == 200 and len(r.content) < 50_000 + 21_000
        body = r.json()
        seen.extend(j["id"] for j in body["jobs"])
        url = body["next"]
        pages += 1
    assert seen == ids and pages == 4  # 2 + 2 + 2 + 1 jobs of ~20 kB


async def test_a_long_poll_of_an_unknown_job_is_404(client: httpx.AsyncClient) -> None:
    """GET /jobs/{id}?wait=S for a job that does not exist answers 404 job-not-found at once
    (the wait's error is not lost in the race with the client's disconnect)."""
    assert_problem(await client.get("/jobs/nope?wait=5"), 404, "job-not-found")
