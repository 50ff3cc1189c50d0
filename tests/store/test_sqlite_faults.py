"""The SQLite store under faults: its file removed or replaced while it runs, writes that
fail (a read-only database, a full disk), and recovery without a restart.

A real full disk (a small tmpfs) and a read-only mount are in the fault campaign
(tests/faults); here the same conditions are made by SQLite itself, deterministically:
``PRAGMA query_only`` (every write refused) and ``PRAGMA max_page_count`` (the database
cannot grow: "database or disk is full")."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import pytest

from jobsvc.errors import StoreUnavailable
from jobsvc.models import Job, JobState
from jobsvc.store.sqlite import WAL_SIZE_LIMIT, SQLiteStore, open_sqlite_store

NOW = 1_000_000.0


def job(job_id: str, payload: object = None) -> Job:
    return Job(id=job_id, task="t", payload=payload, max_attempts=3, run_at=NOW, created_at=NOW, updated_at=NOW)


@pytest.fixture
async def sqlite(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    async with open_sqlite_store(str(tmp_path / "jobs.db")) as store:
        yield store


@pytest.mark.parametrize("how", ["removed", "replaced"])
async def test_a_database_file_removed_or_replaced_stops_every_write(sqlite: SQLiteStore, tmp_path: Path, how: str) -> None:
    """Writes after the file was removed (or replaced by another file) fail with
    StoreUnavailable naming the reason, and keep failing; ping says so too. Nothing is
    acknowledged into a file nobody will read again."""
    await sqlite.insert([job("before")])
    path = tmp_path / "jobs.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)  # noqa: ASYNC240 - a test's setup, instant
    if how == "replaced":
        path.write_bytes(b"")  # a new file (a new inode) at the same path
    for attempt in ("after", "again"):
        with pytest.raises(StoreUnavailable, match="was removed or replaced while jobsvc was running"):
            await sqlite.insert([job(attempt)])
    with pytest.raises(StoreUnavailable, match="restart jobsvc"):
        await sqlite.ping()


async def test_readiness_follows_failing_writes_and_comes_back(sqlite: SQLiteStore) -> None:
    """A read-only database: writes fail, ping fails (it tries a real write); once writes
    are possible again, ping passes and so do writes, without a restart."""
    await sqlite.ping()
    sqlite._writer.execute("PRAGMA query_only = ON")
    with pytest.raises(StoreUnavailable, match="readonly"):
        await sqlite.insert([job("refused")])
    with pytest.raises(StoreUnavailable, match="readonly"):
        await sqlite.ping()
    sqlite._writer.execute("PRAGMA query_only = OFF")
    await sqlite.ping()
    assert sqlite.write_error is None
    assert (await sqlite.insert([job("accepted")]))[0].created
    assert await sqlite.get("refused") is None


async def test_failing_writes_are_logged_when_they_start_and_when_they_end(sqlite: SQLiteStore, caplog: pytest.LogCaptureFixture) -> None:
    """One WARNING when writes start failing, not one per batch (a full disk under load
    wrote a line per request: 96 MB of log in the fault campaign), and one when they work
    again, with the number of batches that failed meanwhile."""
    caplog.set_level(logging.WARNING, logger="jobsvc")
    sqlite._writer.execute("PRAGMA query_only = ON")
    for i in range(5):
        with pytest.raises(StoreUnavailable):
            await sqlite.insert([job(f"refused{i}")])
    sqlite._writer.execute("PRAGMA query_only = OFF")
    await sqlite.insert([job("accepted")])
    await sqlite.insert([job("accepted too")])
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("jobsvc")]
    assert len(lines) == 2, lines
    assert lines[0].startswith("SQLite writes are failing: attempt to write a readonly database")
    assert lines[1].startswith("SQLite writes work again (5 failed batch(es) since: attempt to write a readonly database")


async def test_a_full_database_refuses_then_recovers(sqlite: SQLiteStore) -> None:
    """The database cannot grow: the insert fails (StoreUnavailable, nothing half-written,
    the counts unchanged); with room again, readiness and writes come back."""
    await sqlite.insert([job("small")])
    pages = sqlite._writer.execute("PRAGMA page_count").fetchone()[0]
    sqlite._writer.execute(f"PRAGMA max_page_count = {pages}")
    with pytest.raises(StoreUnavailable, match="full"):
        await sqlite.insert([job(f"big{i}", "x" * 100_000) for i in range(3)])
    assert sqlite.write_error is not None and "full" in sqlite.write_error
    assert (await sqlite.counts()).by_state()[JobState.PENDING] == 1
    sqlite._writer.execute("PRAGMA max_page_count = 1073741823")
    await sqlite.ping()
    assert (await sqlite.insert([job("big", "x" * 100_000)]))[0].created
    assert (await sqlite.counts()).by_state()[JobState.PENDING] == 2


async def test_the_wal_is_kept_bounded(sqlite: SQLiteStore) -> None:
    """Every connection truncates the WAL back to WAL_SIZE_LIMIT after a checkpoint."""
    for conn in (sqlite._writer, *sqlite._readers):
        assert conn.execute("PRAGMA journal_size_limit").fetchone()[0] == WAL_SIZE_LIMIT


async def test_counts_survive_a_reopen(tmp_path: Path) -> None:
    """Counts are counted when the store opens: what a previous process left is there."""
    path = str(tmp_path / "c.db")
    async with open_sqlite_store(path) as store:
        await store.insert([job("a"), attrs.evolve(job("b"), state=JobState.DEAD)])
    async with open_sqlite_store(path) as store:
        counts = (await store.counts()).by_state()
        assert (counts[JobState.PENDING], counts[JobState.DEAD]) == (1, 1)
    assert os.path.exists(path)  # noqa: ASYNC240 - a test's check, instant
