"""Property tests of the input boundary: whatever is posted, the answer is a 2xx job or a 4xx
problem+json, never a 5xx and never a traceback.

pytest-trio runs each Hypothesis example in a fresh ``trio.run``, but it does NOT set the trio
fixtures up again per example (the second example gets the first run's closed nursery and
client). So each example starts its own service and client with :func:`running_client`, built
exactly like conftest's ``start_service`` + ``client``; only sync fixtures are shared.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

import attrs
import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jobsvc.app import create_app
from jobsvc.clock import TrioClock
from jobsvc.config import Settings
from jobsvc.metrics import PrometheusObserver
from jobsvc.service import open_service
from jobsvc.store import MemoryStore
from jobsvc.tasks import Registry

# Task names come from the same modules as the `registry` fixture (tests/testtasks.py + built-ins).
TASKS = Registry.from_modules(["testtasks"]).names()

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=20,
)

#: Values for the JobRequest fields: mostly plausible, sometimes anything at all.
field_values = {
    "id": st.none() | st.integers(min_value=-5, max_value=10**6) | st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:@+=-]{0,20}", fullmatch=True) | json_values,
    "max_attempts": st.none() | st.integers(min_value=-2, max_value=1002) | json_values,
    "delay": st.none() | st.floats(min_value=-1, max_value=4e7, allow_nan=False) | json_values,
    "priority": st.integers(min_value=-1001, max_value=1001) | json_values,
    "timeout": st.none() | st.floats(min_value=0, max_value=1e5, allow_nan=False) | json_values,
    "run_at": st.none() | st.text(max_size=30) | json_values,
    "extra": json_values,
}


@st.composite
def job_objects(draw: st.DrawFn) -> dict[str, Any]:
    """{"task": <a registered task>, "payload": <random JSON>, ...some optional fields}."""
    body: dict[str, Any] = {"task": draw(st.sampled_from(TASKS)), "payload": draw(json_values)}
    for name in draw(st.sets(st.sampled_from(sorted(field_values)), max_size=4)):
        body[name] = draw(field_values[name])
    if body["task"] == "sleep" and draw(st.booleans()):
        body["payload"] = {"seconds": draw(st.floats(min_value=-1, max_value=10, allow_nan=False) | json_values)}
    return body


@attrs.frozen
class Env:
    registry: Registry
    settings: Settings
    clock: TrioClock


@pytest.fixture
def env(registry: Registry, settings: Settings, clock: TrioClock) -> Env:
    return Env(registry, settings, clock)


@asynccontextmanager
async def running_client(env: Env) -> AsyncIterator[httpx.AsyncClient]:
    """A running JobService (memory store, the test settings) and a client for its app."""
    async with open_service(
        env.settings,
        store=MemoryStore(),
        registry=env.registry,
        clock=env.clock,
        rng=lambda low, high: high,
        owner="test-owner",
        observer=PrometheusObserver(),
    ) as service:
        transport = httpx.ASGITransport(app=create_app(service), raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            yield client
        service.force_stop()


def assert_not_a_server_error(r: httpx.Response) -> None:
    assert "Traceback" not in r.text and 'File "' not in r.text
    if r.status_code in (200, 202):
        assert r.headers["content-type"] == "application/json"
        assert isinstance(r.json()["id"], str)
        return
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert {"type", "title", "status", "detail"} <= set(body)
    assert body["status"] == r.status_code


@settings(database=None)
@given(value=json_values)
async def test_any_json_value_is_a_job_or_a_4xx_problem(env: Env, value: Any) -> None:
    """Any JSON value posted to /jobs gets 202/200 or a 4xx problem+json, never a 5xx or a traceback."""
    async with running_client(env) as client:
        r = await client.post("/jobs", content=json.dumps(value).encode(), headers={"content-type": "application/json"})
    assert_not_a_server_error(r)


@settings(database=None)
@given(body=job_objects())
async def test_any_job_shaped_object_is_a_job_or_a_4xx_problem(env: Env, body: dict[str, Any]) -> None:
    """A job object with a registered task and random payload/fields gets 2xx or a 4xx problem."""
    async with running_client(env) as client:
        r = await client.post("/jobs", json=body)
    assert_not_a_server_error(r)
    if r.status_code == 202:
        assert r.json()["task"] == body["task"]
        assert r.headers["location"] == f"/jobs/{r.json()['id']}"


@settings(database=None)
@given(items=st.lists(job_objects() | json_values, min_size=0, max_size=4))
async def test_any_batch_is_jobs_or_a_4xx_problem(env: Env, items: list[Any]) -> None:
    """Any list of items posted to /jobs/batch gets 202 or a 4xx problem, never a 5xx."""
    async with running_client(env) as client:
        r = await client.post("/jobs/batch", json={"jobs": items})
    assert "Traceback" not in r.text
    if r.status_code == 202:
        assert len(r.json()["jobs"]) == len(items)
    else:
        assert 400 <= r.status_code < 500, (r.status_code, r.text)
        assert r.headers["content-type"] == "application/problem+json"


@settings(database=None)
@given(body=st.binary(max_size=200), content_type=st.sampled_from(["application/json", "", "text/plain"]))
async def test_random_bytes_never_give_a_5xx(env: Env, body: bytes, content_type: str) -> None:
    """Random bytes posted to /jobs (any content type) give 2xx or a 4xx problem, never a 5xx."""
    headers = {"content-type": content_type} if content_type else {}
    async with running_client(env) as client:
        r = await client.post("/jobs", content=body, headers=headers)
    assert_not_a_server_error(r)
    if content_type == "text/plain":
        assert r.status_code == 415


@settings(database=None)
@given(job_id=st.text(min_size=1, max_size=40).filter(lambda s: s not in {".", ".."} and "/" not in s), wait=st.none() | st.text(max_size=8))
async def test_any_job_id_and_wait_give_a_4xx_problem(env: Env, job_id: str, wait: str | None) -> None:
    """GET /jobs/{id}?wait= with any id and any wait text on an empty store is a 400 or 404 problem."""
    # Ids holding "/" are left out: %2F decodes into the path, and Starlette answers a trailing
    # slash with a 307 redirect (routing, not the handler).
    params = {} if wait is None else {"wait": wait}
    async with running_client(env) as client:
        r = await client.get(f"/jobs/{quote(job_id, safe='')}", params=params)
    assert r.status_code in (400, 404), (r.status_code, r.text)
    assert r.headers["content-type"] == "application/problem+json"


@settings(database=None)
@given(text=st.lists(st.integers(0xD800, 0xDFFF).map(chr) | st.characters(), min_size=1, max_size=5).map("".join))
async def test_any_string_payload_is_a_job_or_a_4xx_problem(env: Env, text: str) -> None:
    """Any string that JSON can carry as escapes (lone surrogates included) gives 2xx or a 4xx, never a 5xx."""
    body = json.dumps({"task": "echo", "payload": text, "delay": 60}).encode()  # ensure_ascii: \\uXXXX escapes
    async with running_client(env) as client:
        r = await client.post("/jobs", content=body, headers={"content-type": "application/json"})
    assert_not_a_server_error(r)
