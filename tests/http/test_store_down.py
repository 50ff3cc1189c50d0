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
    async with httpx.AsyncClient(transport=transport, base_url="http://jobsvc.test") as client:
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
