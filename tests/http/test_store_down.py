"""The store going away: every request gets 503 problem+json with Retry-After (never a 500,
never a 2xx for a job that was not committed), /ready is 503, and service resumes when the
store comes back. The PostgreSQL version of this, with a real server restart, is
tests/e2e/test_pg_cluster.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from jobsvc.app import create_app
from jobsvc.errors import StoreUnavailable
from jobsvc.service import JobService
from jobsvc.store import MemoryStore


class SwitchableStore(MemoryStore):
    """A memory store whose every transaction fails with StoreUnavailable while ``down``."""

    down = False

    def __getattribute__(self, name: str) -> Any:
        attr = super().__getattribute__(name)
        if name in {"_write", "_read"}:  # every store call goes through one of these

            async def guarded(*args: Any, **kwargs: Any) -> Any:
                if super(SwitchableStore, self).__getattribute__("down"):
                    raise StoreUnavailable("connection refused")
                return await attr(*args, **kwargs)

            return guarded
        return attr


@pytest.fixture
async def down_client(start_service: Any) -> AsyncIterator[tuple[httpx.AsyncClient, SwitchableStore, JobService]]:
    store = SwitchableStore()
    service = await start_service(store=store)
    transport = httpx.ASGITransport(app=create_app(service), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
        yield client, store, service


async def test_store_down_gives_503_never_500(down_client: Any, autojump_clock: Any) -> None:
    """With the store down, submissions, reads, listings and actions are 503 problem+json
    with Retry-After; /ready is 503; nothing was accepted; after recovery all works."""
    client, store, _service = down_client
    first = (await client.post("/jobs", json={"task": "echo", "payload": 1, "id": "before"})).json()
    store.down = True
    requests = [
        client.post("/jobs", json={"task": "echo", "payload": 2, "id": "during"}),
        client.post("/jobs/batch", json={"jobs": [{"task": "noop"}]}),
        client.post("/submit", json={"id": 7, "task_type": "echo", "payload": "x"}),
        client.get(f"/jobs/{first['id']}"),
        client.get("/jobs"),
        client.post(f"/jobs/{first['id']}/retry"),
        client.post(f"/jobs/{first['id']}/cancel"),
        client.get("/stats"),
    ]
    for request in requests:
        r = await request
        assert r.status_code == 503, r.text
        assert r.headers["content-type"] == "application/problem+json"
        assert r.headers["retry-after"] == "1"
        assert r.json()["type"] == "urn:jobsvc:problem:store-unavailable"
        assert "Traceback" not in r.text
    ready = await client.get("/ready")
    assert (ready.status_code, ready.json()["reason"]) == (503, "store unavailable: connection refused")
    # /metrics still answers (an outage is when they matter), without the store-wide gauges
    metrics = await client.get("/metrics")
    assert metrics.status_code == 200
    errors = dict(line.rsplit(" ", 1) for line in metrics.text.splitlines() if line.startswith("jobsvc_store_errors_total{"))
    assert float(errors['jobsvc_store_errors_total{operation="counts"}']) >= 1
    assert "jobsvc_queue_jobs{" not in metrics.text
    store.down = False
    assert (await client.get("/ready")).status_code == 200
    assert (await client.get("/jobs/during")).status_code == 404  # the 503 submission was not kept
    done = (await client.get("/jobs/before", params={"wait": 30})).json()
    assert done["state"] == "succeeded"


async def test_a_removed_sqlite_file_gives_503_and_an_unready_service(start_service: Any, tmp_path: Any, autojump_clock: Any) -> None:
    """The database file deleted under a running service: submissions are refused (503,
    never a 202 for a job written into a deleted file), /ready is 503 and says why."""
    from pathlib import Path

    from jobsvc.store import open_store

    path = tmp_path / "jobs.db"
    async with open_store(f"sqlite:///{path}") as store:
        service = await start_service(store=store)
        transport = httpx.ASGITransport(app=create_app(service), raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            assert (await client.post("/jobs", json={"task": "echo", "payload": 1})).status_code == 202
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)  # noqa: ASYNC240 - a test's setup, instant
            r = await client.post("/jobs", json={"task": "echo", "payload": 2})
            assert (r.status_code, r.json()["type"]) == (503, "urn:jobsvc:problem:store-unavailable")
            assert "removed or replaced" in r.json()["detail"]
            ready = await client.get("/ready")
            assert ready.status_code == 503 and "removed or replaced" in ready.json()["reason"]
        service.force_stop()
        await service.stopped.wait()


NUL_REQUESTS = [
    ("GET", "/jobs/a%00b"),
    ("GET", "/jobs/a%00b?wait=1"),
    ("GET", "/status/a%00b"),
    ("POST", "/jobs/a%00b/cancel"),
    ("POST", "/jobs/a%00b/retry"),
    ("GET", "/jobs?task=x%00y"),
    ("GET", "/jobs?task=x%00y&state=dead"),
]


@pytest.mark.postgres
async def test_a_nul_byte_never_reaches_postgresql_as_an_error(start_service: Any, pg_url: str, autojump_clock: Any) -> None:
    """A NUL in a job id or a task filter (PostgreSQL text cannot hold one): 404 for a job,
    an empty page for a listing; never a 500."""
    from jobsvc.store import open_store

    async with open_store(pg_url) as store:
        service = await start_service(store=store)
        transport = httpx.ASGITransport(app=create_app(service), raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            for method, url in NUL_REQUESTS:
                r = await client.request(method, url)
                assert r.status_code in (200, 404), (method, url, r.status_code, r.text)
                if r.status_code == 200:
                    assert r.json()["jobs"] == []
        service.force_stop()
        await service.stopped.wait()


@pytest.mark.postgres
async def test_the_postgresql_store_treats_nul_text_as_matching_nothing(pg_url: str) -> None:
    """Below the HTTP layer too: get, list and find with a NUL byte find nothing."""
    from jobsvc.models import Job
    from jobsvc.store import open_store

    async with open_store(pg_url) as store:
        assert await store.get("a\x00b") is None
        assert await store.list_jobs(task="x\x00") == []
        ghost = Job(id="a\x00b", task="t", payload=None, max_attempts=1, run_at=0.0, created_at=0.0, updated_at=0.0, idempotency_key="k\x00")
        assert await store.find([ghost]) == [None]
