"""The metrics reporter on PostgreSQL: exactly one instance per database holds the
reporter lock (on its LISTEN connection); it hands over when that instance goes away, and
an instance that lost its LISTEN connection takes it again after reconnecting."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
import trio
from helpers import Metrics
from pg_fixtures import admin_connect

from jobsvc.app import create_app
from jobsvc.store.postgres import REPORTER_LOCK, PostgresStore, open_postgres_store

pytestmark = pytest.mark.postgres

RETRY = 0.1  #: the stores' reporter_retry in these tests (seconds)


def lock_holder(url: str) -> int | None:
    """Backend pid holding the reporter lock, according to the server."""
    with admin_connect(url) as conn:
        row = conn.execute(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND ((classid::bigint << 32) | objid::bigint) = %s AND objsubid = 1 "
            # advisory locks are per database: another test database's reporter is not ours
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            (REPORTER_LOCK,),
        ).fetchone()
    return None if row is None else int(row[0])


async def hold(url: str, release: trio.Event, *, task_status: trio.TaskStatus[PostgresStore] = trio.TASK_STATUS_IGNORED) -> None:
    """Open a store, hand it over, and close it once ``release`` is set."""
    async with open_postgres_store(url) as store:
        store.reporter_retry = RETRY
        task_status.started(store)
        await release.wait()


async def until(predicate: Callable[[], bool]) -> None:
    while not predicate():  # noqa: ASYNC110 - polling real connections, bounded by the caller's fail_after
        await trio.sleep(0.02)


async def test_exactly_one_reporter_and_the_role_is_handed_over(pg_url: str, nursery: trio.Nursery) -> None:
    """Two stores on one database: one reporter, holding the lock on its LISTEN connection;
    closing it makes the other the reporter within a retry period or so."""
    with trio.fail_after(20):
        releases = [trio.Event(), trio.Event()]
        stores: list[PostgresStore] = [await nursery.start(hold, pg_url, release) for release in releases]
        await trio.sleep(3 * RETRY)  # the second has tried again a few times meanwhile
        assert [s.is_reporter for s in stores] == [True, False]
        assert await trio.to_thread.run_sync(lock_holder, pg_url) == stores[0].listener_pid
        releases[0].set()
        await until(lambda: stores[1].is_reporter)
        assert not stores[0].is_reporter
        assert await trio.to_thread.run_sync(lock_holder, pg_url) == stores[1].listener_pid
        releases[1].set()
        await until(lambda: stores[1].listener_pid is None)
        assert not stores[1].is_reporter


async def test_the_reporter_takes_the_role_again_after_a_reconnect(pg_url: str, nursery: trio.Nursery) -> None:
    """The server drops the reporter's LISTEN connection: the role goes with it, and the
    listener takes it again when it reconnects (no other instance is there to take it)."""
    with trio.fail_after(20):
        store: PostgresStore = await nursery.start(hold, pg_url, trio.Event())
        old_pid = store.listener_pid
        assert store.is_reporter and old_pid is not None
        with admin_connect(pg_url) as conn:
            conn.execute("SELECT pg_terminate_backend(%s)", (old_pid,))
        await until(lambda: store.listener_reconnects > 0 and store.is_reporter)
        assert store.listener_pid != old_pid
        assert await trio.to_thread.run_sync(lock_holder, pg_url) == store.listener_pid


async def test_summing_the_store_wide_gauges_over_instances_counts_each_job_once(
    pg_url: str, nursery: trio.Nursery, start_service: Callable[..., Any]
) -> None:
    """Two services on one database: only the reporter exports jobsvc_queue_jobs, so the sum
    over both /metrics is the number of jobs."""
    with trio.fail_after(20):
        stores = [await nursery.start(hold, pg_url, trio.Event()) for _ in range(2)]
        services = [await start_service(store=store) for store in stores]
        texts = []
        for i, service in enumerate(services):
            transport = httpx.ASGITransport(app=create_app(service), raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
                if i == 0:
                    job = (await client.post("/jobs", json={"task": "noop"})).json()
                    assert (await client.get(f"/jobs/{job['id']}", params={"wait": 10})).json()["state"] == "succeeded"
                texts.append(Metrics((await client.get("/metrics")).text))
    assert [m.value("jobsvc_store_reporter") for m in texts] == [1, 0]
    assert sum(sum(m.series("jobsvc_queue_jobs").values()) for m in texts) == 1
    assert texts[0].value("jobsvc_queue_jobs", state="succeeded", task="noop") == 1
    assert texts[1].series("jobsvc_queue_jobs") == {}
