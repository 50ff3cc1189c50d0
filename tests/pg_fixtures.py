"""PostgreSQL fixtures: one migrated template database per session, one clone per test.

Import them into a conftest or test module::

    from pg_fixtures import pg_empty_url, pg_template, pg_url  # noqa: F401

The server comes from ``PG_TEST_URL`` (default ``postgresql://root@127.0.0.1:5432/postgres``;
it names a maintenance database in which CREATE DATABASE may run). An unreachable server makes
the tests that need it FAIL with a message saying so: they are never skipped silently.

Cloning a template (``CREATE DATABASE ... TEMPLATE``) takes tens of milliseconds, much less
than migrating each test's database. Concurrent pytest sessions on one server are safe: the
template is rebuilt under an exclusive advisory lock and cloned under a shared one.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

from jobsvc.store.postgres import MIGRATIONS, apply_migrations

__all__ = [
    "TEMPLATE_DB",
    "admin_connect",
    "create_database",
    "drop_database",
    "pg_empty_url",
    "pg_server_url",
    "pg_template",
    "pg_url",
    "with_database",
]

DEFAULT_URL = "postgresql://root@127.0.0.1:5432/postgres"
#: Named after the migrations it holds: test sessions of branches with different schemas may
#: share one server, and each rebuilds its template once per session.
TEMPLATE_DB = "jobsvc_test_template_" + hashlib.sha256(repr(MIGRATIONS).encode()).hexdigest()[:12]
#: advisory lock key guarding the template: exclusive to rebuild it, shared to clone it
_TEMPLATE_LOCK = 0x6A6F_6273_7663_7401
_built_in_this_process: set[str] = set()


def pg_server_url() -> str:
    return os.environ.get("PG_TEST_URL", DEFAULT_URL)


def with_database(url: str, dbname: str) -> str:
    """``url`` with its database name replaced."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + dbname))


def admin_connect(url: str | None = None) -> psycopg.Connection:
    """An autocommit connection to the maintenance database; fails the test clearly if the
    server cannot be reached."""
    url = url or pg_server_url()
    try:
        return psycopg.connect(url, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(
            f"PostgreSQL tests need a server at {url} (set PG_TEST_URL, or start it with "
            f"`pg_ctlcluster --skip-systemctl-redirect 15 main start`): {exc}",
            pytrace=False,
        )


def create_database(name: str, *, template: str | None = None) -> str:
    """CREATE DATABASE ``name`` (optionally from a template); returns its URL."""
    with admin_connect() as conn:
        if template is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        else:
            conn.execute("SELECT pg_advisory_lock_shared(%s)", (_TEMPLATE_LOCK,))
            try:
                conn.execute(
                    sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(template))
                )
            finally:
                conn.execute("SELECT pg_advisory_unlock_shared(%s)", (_TEMPLATE_LOCK,))
    return with_database(pg_server_url(), name)


def drop_database(name: str) -> None:
    with admin_connect() as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _new_name() -> str:
    return f"jobsvc_test_{uuid.uuid4().hex[:16]}"


@pytest.fixture(scope="session")
def pg_template() -> str:
    """Name of a template database with the current schema, rebuilt once per session through
    the production migration code (:func:`jobsvc.store.postgres.apply_migrations`)."""
    if TEMPLATE_DB in _built_in_this_process:  # imported into several modules: build once
        return TEMPLATE_DB
    with admin_connect() as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_TEMPLATE_LOCK,))
        try:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(TEMPLATE_DB)))
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(TEMPLATE_DB)))
            apply_migrations(with_database(pg_server_url(), TEMPLATE_DB))
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_TEMPLATE_LOCK,))
    _built_in_this_process.add(TEMPLATE_DB)
    return TEMPLATE_DB


@pytest.fixture
def pg_url(pg_template: str) -> Iterator[str]:
    """URL of a fresh, migrated database of this test's own; dropped afterwards."""
    name = _new_name()
    url = create_database(name, template=pg_template)
    try:
        yield url
    finally:
        drop_database(name)


@pytest.fixture
def pg_empty_url() -> Iterator[str]:
    """URL of a fresh database with no jobsvc schema (migration tests); dropped afterwards."""
    name = _new_name()
    url = create_database(name)
    try:
        yield url
    finally:
        drop_database(name)
