"""Tenants in the SQL schemas: the SQLite upgrade (schema 1 -> 2) and the PostgreSQL
migration 3 of databases that already hold jobs, and the indexes that keep a tenant's
listing a keyset range scan. The behaviour every store shares is in test_contract.py."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import psycopg
import pytest

from jobsvc.models import Job, JobState
from jobsvc.store import open_store
from jobsvc.store import sqlite as sqlite_store

NOW = 1_700_000_000.0

#: The SQLite schema as jobsvc 0.2.0 created it (schema version 1), word for word.
SQLITE_V1 = """
CREATE TABLE jobs (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    id               TEXT    NOT NULL UNIQUE,
    task             TEXT    NOT NULL,
    state            TEXT    NOT NULL,
    payload          TEXT    NOT NULL,
    priority         INTEGER NOT NULL DEFAULT 0,
    attempts         INTEGER NOT NULL DEFAULT 0,
    max_attempts     INTEGER NOT NULL,
    rescues          INTEGER NOT NULL DEFAULT 0,
    timeout          REAL,
    run_at           REAL    NOT NULL,
    created_at       REAL    NOT NULL,
    updated_at       REAL    NOT NULL,
    finished_at      REAL,
    result           TEXT,
    errors           TEXT    NOT NULL DEFAULT '[]',
    idempotency_key  TEXT    UNIQUE,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    fingerprint      TEXT    NOT NULL DEFAULT '',
    lease_owner      TEXT,
    lease_token      INTEGER NOT NULL DEFAULT 0,
    lease_expires_at REAL
);
CREATE INDEX jobs_due ON jobs (priority DESC, run_at, seq) WHERE state IN ('pending', 'retrying');
CREATE INDEX jobs_state_seq ON jobs (state, seq);
CREATE INDEX jobs_task_seq ON jobs (task, seq);
CREATE INDEX jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL;
CREATE TABLE jobsvc_health (id INTEGER PRIMARY KEY CHECK (id = 1), probes INTEGER NOT NULL);
PRAGMA user_version = 1;
"""


def job(job_id: str, *, tenant: str | None = None, key: str | None = None, fingerprint: str = "f") -> Job:
    return Job(
        id=job_id, task="t", payload=None, max_attempts=3, run_at=NOW, created_at=NOW, updated_at=NOW,
        tenant=tenant, idempotency_key=key, fingerprint=fingerprint,
    )  # fmt: skip


def make_v1_database(path: Path) -> None:
    """A schema-1 file holding 5 jobs (one with an idempotency key, one dead), whose
    AUTOINCREMENT counter is past them: jobs 6 to 9 were deleted (pruned)."""
    with sqlite3.connect(path) as conn:
        conn.executescript(SQLITE_V1)
        for i in range(1, 10):
            state = "dead" if i == 2 else "pending"
            conn.execute(
                "INSERT INTO jobs (id, task, state, payload, max_attempts, run_at, created_at, updated_at, idempotency_key, fingerprint) "
                "VALUES (?, 't', ?, 'null', 3, ?, ?, ?, ?, 'f')",
                (f"old{i}", state, NOW, NOW, NOW, "key-1" if i == 1 else None),
            )
        conn.execute("DELETE FROM jobs WHERE seq > 5")
    conn.close()


async def test_sqlite_schema_1_is_upgraded_keeping_jobs_seqs_and_keys(tmp_path: Path) -> None:
    """Opening a schema-1 database upgrades it to 2 in place: every job is kept (with no
    tenant), the seq counter does not go back (a client's cursor stays valid), the old
    idempotency key still replays, and the same key in a tenant is a new job."""
    path = tmp_path / "v1.db"
    make_v1_database(path)
    async with open_store(f"sqlite:///{path}") as store:
        jobs = await store.list_jobs()
        assert [(j.id, j.seq, j.tenant) for j in jobs] == [(f"old{i}", i, None) for i in range(1, 6)]
        counts = (await store.counts()).by_state()
        assert (counts[JobState.PENDING], counts[JobState.DEAD]) == (4, 1)
        [replay] = await store.insert([job("again", key="key-1")])
        assert not replay.created and replay.job.id == "old1"
        [tenant_job] = await store.insert([job("acme:1", tenant="acme", key="key-1")])
        assert tenant_job.created and tenant_job.job.seq > 9  # after the 9 jobs ever inserted: no seq reused
        assert [j.id for j in await store.list_jobs(tenant="acme")] == ["acme:1"]
        assert (await store.counts(tenant="acme")).waiting == 1
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == sqlite_store.SCHEMA_VERSION == 2
        indexes = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'jobs'")}
        assert {"jobs_due", "jobs_idempotency", "jobs_tenant_seq", "jobs_tenant_state_seq"} <= indexes
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    async with open_store(f"sqlite:///{path}") as store:  # opening again changes nothing
        assert len(await store.list_jobs()) == 6


async def test_sqlite_tenant_listing_is_a_range_scan_of_a_tenant_index(tmp_path: Path) -> None:
    """A tenant's listing (with or without a state filter), as the store sends it, walks a
    tenant index in seq order: no sort, no scan of other tenants' jobs."""
    path = tmp_path / "plan.db"
    async with open_store(f"sqlite:///{path}") as store:
        await store.insert([job(f"j{i}", tenant=f"t{i % 5}") for i in range(50)])
    sent: list[str] = []
    with sqlite3.connect(path) as conn:
        conn.set_trace_callback(sent.append)  # the statements with their values filled in
        tx = sqlite_store._SQLiteTx(conn)
        assert len(tx.select(states=(), task=None, after=None, limit=3, tenant="t1")) == 3
        assert len(tx.select(states=[JobState.PENDING], task=None, after=3, limit=3, tenant="t1")) == 3
        conn.set_trace_callback(None)
        plain, by_state = (" | ".join(row[-1] for row in conn.execute("EXPLAIN QUERY PLAN " + sql)) for sql in sent)
    conn.close()
    assert "USING INDEX jobs_tenant_seq (tenant=? AND seq>?)" in plain and "TEMP B-TREE" not in plain, plain
    assert "USING INDEX jobs_tenant_state_seq (tenant=? AND state=? AND seq>?)" in by_state, by_state
    assert "TEMP B-TREE" not in by_state, by_state


# -- PostgreSQL ------------------------------------------------------------------------------


@pytest.mark.postgres
async def test_postgres_migration_3_keeps_jobs_counts_and_keys(pg_empty_url: str) -> None:
    """A database at schema version 2 holding jobs: migration 3 gives them no tenant, keeps
    their counts and idempotency keys, and from then on counts by tenant and scopes keys
    to tenants."""
    from jobsvc.store import postgres

    with psycopg.connect(pg_empty_url) as conn:
        conn.execute(postgres._CREATE_SCHEMA_TABLE)
        for number, name, statements in postgres.MIGRATIONS[:2]:
            for statement in statements:
                conn.execute(statement)
            conn.execute("INSERT INTO jobsvc_schema (version, name) VALUES (%s, %s)", (number, name))
        conn.execute(
            "INSERT INTO jobs (id, task, state, payload, max_attempts, run_at, created_at, updated_at, idempotency_key, fingerprint) "
            "SELECT 'old' || i, 't', CASE WHEN i % 2 = 0 THEN 'pending' ELSE 'dead' END, 'null', 5, 0, 0, 0, "
            "CASE WHEN i = 1 THEN 'key-1' END, 'f' FROM generate_series(1, 7) i"
        )
    assert (await postgres.migrate(pg_empty_url))[0] == "tenants: a tenant per job, idempotency keys per tenant, counts by tenant"
    async with open_store(pg_empty_url) as store:
        counts = (await store.counts()).by_state()
        assert (counts[JobState.PENDING], counts[JobState.DEAD]) == (3, 4)
        old = await store.get("old1")
        assert old is not None and old.tenant is None and old.idempotency_key == "key-1"
        [replay] = await store.insert([job("again", key="key-1")])
        assert not replay.created and replay.job.id == "old1"
        [created] = await store.insert([job("acme:1", tenant="acme", key="key-1")])
        assert created.created
        assert (await store.counts(tenant="acme")).waiting == 1
        assert (await store.counts()).waiting == 4
        assert [j.id for j in await store.list_jobs(tenant="acme")] == ["acme:1"]


@pytest.mark.postgres
async def test_postgres_tenant_listing_can_walk_the_partial_tenant_indexes(pg_url: str) -> None:
    """The listing queries name the partial indexes' condition, so PostgreSQL can walk a
    tenant index in seq order (no sort) for a tenant, with or without a state filter."""
    from jobsvc.store import postgres

    base = postgres._LIST_BASE + postgres._LIST_TENANT + postgres._LIST_AFTER
    with psycopg.connect(pg_url) as conn:
        conn.execute("SET enable_seqscan = off")
        conn.execute("SET enable_bitmapscan = off")
        params = {"tenant": "acme", "after": 0, "limit": 10, "states": ["pending"]}
        plain = "\n".join(r[0] for r in conn.execute("EXPLAIN " + base + postgres._LIST_TAIL, params))
        by_state = "\n".join(r[0] for r in conn.execute("EXPLAIN " + base + postgres._LIST_STATES + postgres._LIST_TAIL, params))
    assert "jobs_tenant_seq" in plain and "Sort" not in plain, plain
    assert "jobs_tenant_" in by_state and "Sort" not in by_state, by_state
