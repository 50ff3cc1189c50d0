"""The throwaway PostgreSQL cluster fixture (tests/pg_cluster.py): it restarts and crashes
without touching the shared server, and leaves no process, database or folder behind."""

from __future__ import annotations

import psycopg
import pytest
from pg_cluster import PgCluster, _alive, throwaway_cluster
from pg_fixtures import admin_connect

pytestmark = [pytest.mark.postgres, pytest.mark.e2e]


def _count(url: str) -> int:
    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        row = conn.execute("SELECT count(*) FROM t").fetchone()
        assert row is not None
        return int(row[0])


def test_restart_and_crash_keep_committed_data_and_leave_nothing_behind() -> None:
    """A committed row survives a fast restart and a SIGKILL of the postmaster (crash
    recovery); the shared server's databases are unchanged; at the end every server process
    is gone and so is the folder."""
    with admin_connect() as shared:
        databases_before = {row[0] for row in shared.execute("SELECT datname FROM pg_database")}
        server_before = shared.execute("SELECT pg_postmaster_start_time()").fetchone()
    with throwaway_cluster() as cluster:
        assert isinstance(cluster, PgCluster) and cluster.port != 5432
        url = cluster.create_database("jobsvc_throwaway")
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE t (x int)")
            conn.execute("INSERT INTO t VALUES (1)")
        first = cluster.pid
        cluster.restart()
        assert cluster.pid not in (None, first)
        assert _count(url) == 1
        cluster.crash()
        assert cluster.pid is None
        cluster.start()
        assert _count(url) == 1
        pids, root = cluster._pids | {cluster.pid}, cluster.root
    assert not root.exists()
    assert not [pid for pid in pids if pid is not None and _alive(pid)]
    with admin_connect() as shared:
        assert {row[0] for row in shared.execute("SELECT datname FROM pg_database")} == databases_before
        assert shared.execute("SELECT pg_postmaster_start_time()").fetchone() == server_before


