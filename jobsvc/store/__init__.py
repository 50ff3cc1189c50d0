"""Job stores: one contract (:class:`Store`), three implementations.

``open_store(url)`` picks one from a database URL:

* ``memory:``                         :class:`MemoryStore`, keeps nothing (tests, demos)
* ``sqlite:///relative/path.db``,
  ``sqlite:////absolute/path.db``     :class:`SQLiteStore`, the embedded default
* ``postgresql://user@host:port/db``  :class:`PostgresStore` (``pip install jobsvc[postgres]``)

SQL lives in this package and nowhere else.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from ..config import DatabaseURL
from .base import AttemptKey, ClaimRequest, ClaimResult, Counts, Finished, InsertResult, Store, Tx
from .memory import MemoryStore

__all__ = [
    "AttemptKey",
    "ClaimRequest",
    "ClaimResult",
    "Counts",
    "Finished",
    "InsertResult",
    "MemoryStore",
    "Store",
    "Tx",
    "migrate",
    "open_store",
]


@asynccontextmanager
async def open_store(url: str | DatabaseURL, *, migrate: bool = False, fsync_interval: float = 1.0) -> AsyncIterator[Store]:
    """Open the store that ``url`` names; close it on exit.

    ``migrate=True`` applies pending schema migrations first (PostgreSQL; the SQLite
    schema is created and upgraded on open). Without it a PostgreSQL schema that is behind
    raises ConfigError telling the operator to run ``jobsvc migrate``. ``fsync_interval``:
    how long worker-side writes may wait to reach the disk (0: every commit is synced).
    """
    db = url if isinstance(url, DatabaseURL) else DatabaseURL.parse(url)
    if db.scheme == "memory":
        store = MemoryStore()
        try:
            yield store
        finally:
            await store.aclose()
    elif db.scheme == "sqlite":
        from .sqlite import open_sqlite_store

        async with open_sqlite_store(db.path, fsync_interval=fsync_interval) as sqlite_store:
            yield sqlite_store
    else:
        from .postgres import open_postgres_store

        async with open_postgres_store(db.url, migrate=migrate, fsync_interval=fsync_interval) as pg_store:
            yield pg_store


async def migrate(url: str | DatabaseURL) -> list[str]:
    """Apply pending schema migrations; returns the names of those applied."""
    db = url if isinstance(url, DatabaseURL) else DatabaseURL.parse(url)
    if db.scheme == "postgresql":
        from .postgres import migrate as pg_migrate

        return await pg_migrate(db.url)
    async with open_store(db):
        return []
