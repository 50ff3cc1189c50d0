"""PostgreSQL store: several jobsvc instances share one queue and survive each other's crashes.

Theory of operation
-------------------
* **Driver.** psycopg 3's *sync* API with a :class:`psycopg_pool.ConnectionPool`; its async
  API needs asyncio and does not run under trio. Every store call is one transaction run in
  a worker thread through ``trio.to_thread.run_sync`` with the store's own
  :class:`trio.CapacityLimiter` (the pool size): one thread hop per transaction, never per row.
* **Claims.** ``claim_due`` claims a batch in one statement
  (``WITH due AS (SELECT ... FOR UPDATE SKIP LOCKED) UPDATE ... RETURNING``), so concurrent
  instances never claim the same job and never wait for each other.
* **Fencing.** Every state change is written ``WHERE id = ? AND state = ? AND lease_token = ?``
  (:func:`jobsvc.models.claim` increments the token), so a stale writer changes nothing.
* **Rescue.** Expired leases are taken back with ``FOR UPDATE SKIP LOCKED`` (a row that a live
  worker is writing right now is skipped) and :func:`jobsvc.models.rescue`, written fenced.
* **Wake-ups.** A transaction that makes a job claimable runs ``pg_notify('jobsvc_jobs', '')``
  (delivered on commit). One dedicated ``LISTEN`` connection per store is awaited with
  ``trio.lowlevel.wait_readable`` (no thread); bursts coalesce into one wake-up; the listener
  reconnects with capped exponential backoff and wakes its waiters after a reconnect, because
  notifications may have been missed meanwhile.
* **Losing the database.** Connection errors, timeouts and server shutdowns become
  :class:`~jobsvc.errors.StoreUnavailable`. Nothing waits forever: ``connect_timeout``, the
  pool's ``timeout``, a server-side ``statement_timeout``, TCP keepalives and
  ``tcp_user_timeout`` bound every call. The pool checks each connection before lending it, so
  it recovers by itself when the server comes back.
* **Schema.** Versioned migrations recorded in ``jobsvc_schema``, applied in one transaction
  under ``pg_advisory_xact_lock`` (two instances starting together cannot both apply them).
  Opening a store whose schema is behind (or ahead of) the code raises ConfigError.

Timestamps are ``double precision`` epoch seconds (what :mod:`jobsvc.models` uses); payload,
result and errors are JSON *text*, so they round-trip byte for byte (jsonb would reorder keys
and reject ``\\u0000``).
"""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import psycopg
import psycopg.conninfo
import trio
from psycopg import pq
from psycopg_pool import ConnectionPool

from .. import models
from ..errors import ConfigError, JobNotFound, StoreUnavailable
from ..models import Job, JobState
from ._rows import COLUMNS, MUTABLE, from_row, to_row
from .base import InsertResult, Store, check_conflicts

__all__ = [
    "CHANNEL",
    "MIGRATIONS",
    "PostgresStore",
    "apply_migrations",
    "migrate",
    "open_postgres_store",
    "schema_version",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

#: The NOTIFY channel on which "jobs may be claimable" is announced.
CHANNEL = "jobsvc_jobs"
#: Key of the transaction-level advisory lock held while migrating ("jobsvc" + 1).
MIGRATION_LOCK = 0x6A6F_6273_7663_0001
#: The migrations table.
SCHEMA_TABLE = "jobsvc_schema"

_CLAIMABLE = sorted(s.value for s in models.sources(models.Event.CLAIM))  # pending, retrying
_FINAL = sorted(s.value for s in models.FINAL_STATES)
assert _CLAIMABLE == ["pending", "retrying"], _CLAIMABLE  # the partial indexes below name them

# --------------------------------------------------------------------------- migrations

_V1 = (
    """
    CREATE TABLE jobs (
        id text PRIMARY KEY,
        seq bigserial NOT NULL UNIQUE,
        task text NOT NULL,
        payload text NOT NULL,
        state text NOT NULL CHECK (state IN
            ('pending', 'running', 'retrying', 'succeeded', 'dead', 'cancelled')),
        priority integer NOT NULL DEFAULT 0,
        attempts integer NOT NULL DEFAULT 0,
        max_attempts integer NOT NULL,
        rescues integer NOT NULL DEFAULT 0,
        timeout double precision,
        run_at double precision NOT NULL,
        created_at double precision NOT NULL,
        updated_at double precision NOT NULL,
        finished_at double precision,
        result text,
        errors text NOT NULL DEFAULT '[]',
        idempotency_key text UNIQUE,
        fingerprint text NOT NULL DEFAULT '',
        lease_owner text,
        lease_token bigint NOT NULL DEFAULT 0,
        lease_expires_at double precision,
        cancel_requested boolean NOT NULL DEFAULT false
    )
    """,
    # claim_due: due jobs in claim order
    "CREATE INDEX jobs_due ON jobs (priority DESC, run_at, seq) WHERE state IN ('pending', 'retrying')",
    # next_run_at
    "CREATE INDEX jobs_due_run_at ON jobs (run_at) WHERE state IN ('pending', 'retrying')",
    # heartbeat
    "CREATE INDEX jobs_running_owner ON jobs (lease_owner) WHERE state = 'running'",
    # rescue
    "CREATE INDEX jobs_running_expiry ON jobs (lease_expires_at) WHERE state = 'running'",
    # list_jobs(states=...) keyset pagination, the dead-letter queue
    "CREATE INDEX jobs_state_seq ON jobs (state, seq)",
    # prune
    "CREATE INDEX jobs_finished ON jobs (finished_at) WHERE state IN ('succeeded', 'dead', 'cancelled')",
    # a queue table churns: vacuum and analyze it after 2% changes, not the default 10-20%
    "ALTER TABLE jobs SET (autovacuum_vacuum_scale_factor = 0.02, autovacuum_analyze_scale_factor = 0.02)",
)

#: (version, name, statements), in order. Never edit an applied migration: append a new one.
MIGRATIONS: tuple[tuple[int, str, tuple[str, ...]], ...] = ((1, "create jobs table and indexes", _V1),)
CURRENT_VERSION = MIGRATIONS[-1][0]

_CREATE_SCHEMA_TABLE = f"""
    CREATE TABLE IF NOT EXISTS {SCHEMA_TABLE} (
        version integer PRIMARY KEY,
        name text NOT NULL,
        applied_at timestamptz NOT NULL DEFAULT now()
    )
"""

# --------------------------------------------------------------------------- SQL

_COLS = ", ".join(COLUMNS)
_INSERT_COLS = tuple(c for c in COLUMNS if c != "seq")
_J_COLS = ", ".join(f"j.{c}" for c in COLUMNS)

_SQL_INSERT = (
    f"INSERT INTO jobs ({', '.join(_INSERT_COLS)}) "  # noqa: S608 - constant identifiers only
    f"VALUES ({', '.join(f'%({c})s' for c in _INSERT_COLS)}) "
    f"ON CONFLICT DO NOTHING RETURNING {_COLS}"
)
_SQL_EXISTING = (
    f"SELECT {_COLS} FROM jobs WHERE id = ANY(%(ids)s::text[]) OR idempotency_key = ANY(%(keys)s::text[])"  # noqa: S608 - constant identifiers only
)
_SQL_NOTIFY = "SELECT pg_notify(%s, '')"
_SQL_GET = f"SELECT {_COLS} FROM jobs WHERE id = %s"  # noqa: S608 - constant identifiers only
_SQL_GET_FOR_UPDATE = f"SELECT {_COLS} FROM jobs WHERE id = %s FOR UPDATE"  # noqa: S608 - constant identifiers only

_CLAIM_SET = (
    "state = 'running', attempts = j.attempts + 1, lease_token = j.lease_token + 1, "
    "lease_owner = %(owner)s, lease_expires_at = %(expires)s, updated_at = %(now)s"
)
_DUE = "state IN ('pending', 'retrying') AND run_at <= %(now)s"


def _claim_due_sql(with_tasks: bool) -> str:
    task_filter = " AND task = ANY(%(tasks)s::text[])" if with_tasks else ""
    return (
        f"WITH due AS (SELECT id FROM jobs WHERE {_DUE}{task_filter} "  # noqa: S608 - constant identifiers only
        "ORDER BY priority DESC, run_at, seq LIMIT %(limit)s FOR UPDATE SKIP LOCKED) "
        f"UPDATE jobs j SET {_CLAIM_SET} FROM due "
        "WHERE j.id = due.id AND j.state IN ('pending', 'retrying') "
        f"RETURNING {_J_COLS}"
    )


#: Sent with each claim_due (same round trip, pipelined), for this transaction only: the
#: planner's row estimates for a queue table swing wildly (an idle queue was analyzed with
#: no pending rows, then a burst arrives), and with a low estimate it sorts every due job
#: to pick the first n: O(backlog) per claim, 20 ms at 20,000 due jobs. Without sorts,
#: bitmap scans and hash joins it walks the jobs_due index in claim order and stops at n
#: (0.5 ms), whatever the statistics say.
_SQL_CLAIM_PLAN = (
    "SELECT set_config('enable_sort', 'off', true), set_config('enable_bitmapscan', 'off', true), "
    "set_config('enable_hashjoin', 'off', true)"
)
_SQL_CLAIM_DUE = _claim_due_sql(False)
_SQL_CLAIM_DUE_TASKS = _claim_due_sql(True)
_SQL_CLAIM_ONE = f"UPDATE jobs j SET {_CLAIM_SET} WHERE j.id = %(id)s AND j.{_DUE} RETURNING {_J_COLS}"  # noqa: S608 - constant identifiers only

_SET_MUTABLE = ", ".join(f"{c} = %({c})s" for c in MUTABLE)
_SQL_SAVE_FENCED = (
    f"UPDATE jobs SET {_SET_MUTABLE} "  # noqa: S608 - constant identifiers only
    "WHERE id = %(fence_id)s AND state = %(fence_state)s AND lease_token = %(fence_token)s"
)
_SQL_HEARTBEAT = (
    "UPDATE jobs SET lease_expires_at = %(expires)s "
    "WHERE state = 'running' AND lease_owner = %(owner)s AND id = ANY(%(ids)s) "
    "RETURNING id, cancel_requested"
)
_SQL_EXPIRED = (
    f"SELECT {_COLS} FROM jobs WHERE state = 'running' AND lease_expires_at <= %(now)s "  # noqa: S608 - constant identifiers only
    "ORDER BY lease_expires_at FOR UPDATE SKIP LOCKED"
)
_SQL_ALL_RUNNING = f"SELECT {_COLS} FROM jobs WHERE state = 'running' ORDER BY seq FOR UPDATE SKIP LOCKED"  # noqa: S608 - constant identifiers only
_SQL_NEXT_RUN_AT = "SELECT min(run_at) FROM jobs WHERE state IN ('pending', 'retrying')"
_SQL_NEXT_RUN_AT_TASKS = _SQL_NEXT_RUN_AT + " AND task = ANY(%(tasks)s::text[])"
_SQL_COUNT = "SELECT state, count(*) FROM jobs GROUP BY state"
_PRUNE_BATCH = 5000
_SQL_PRUNE = (
    "DELETE FROM jobs WHERE id IN (SELECT id FROM jobs "
    "WHERE state IN ('succeeded', 'dead', 'cancelled') AND finished_at < %(before)s LIMIT %(batch)s)"
)
# list_jobs: constant fragments joined by constant code; values are parameters
_LIST_BASE = f"SELECT {_COLS} FROM jobs WHERE true"  # noqa: S608 - constant identifiers only
_LIST_STATES = " AND state = ANY(%(states)s::text[])"
_LIST_TASK = " AND task = %(task)s"
_LIST_AFTER = " AND seq > %(after)s"
_LIST_TAIL = " ORDER BY seq LIMIT %(limit)s"

# --------------------------------------------------------------------------- connections

#: Defaults for bounding every wait (seconds).
CONNECT_TIMEOUT = 5
POOL_TIMEOUT = 5.0
STATEMENT_TIMEOUT = 10.0
LISTEN_BACKOFF_MIN = 0.05
LISTEN_BACKOFF_MAX = 5.0


def _conn_kwargs(url: str, *, connect_timeout: int, statement_timeout: float | None) -> dict[str, Any]:
    """libpq settings that keep a dead or black-holed server from hanging a call forever."""
    try:
        given = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        raise ConfigError(f"invalid PostgreSQL URL {_display(url)!r}; expected postgresql://user@host:5432/dbname") from None
    options = str(given.get("options") or "")
    if statement_timeout is not None and "statement_timeout" not in options:
        options = f"{options} -c statement_timeout={int(statement_timeout * 1000)}".strip()
    if "idle_in_transaction_session_timeout" not in options:
        options = f"{options} -c idle_in_transaction_session_timeout=60000".strip()
    kwargs: dict[str, Any] = {
        "connect_timeout": given.get("connect_timeout") or connect_timeout,
        "keepalives": 1,
        "keepalives_idle": 10,
        "keepalives_interval": 5,
        "keepalives_count": 3,
        "tcp_user_timeout": 15000,  # ms: unacknowledged data on a dead link
        "application_name": given.get("application_name") or "jobsvc",
        "options": options,
    }
    return kwargs


def _display(url: str) -> str:
    """``postgresql://user@host:port/dbname`` for messages: no password, wherever the URL put
    it (``user:pw@``, ``?password=``), and no other options."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.Error:
        return "postgresql://(unparseable URL)"
    user = f"{info['user']}@" if info.get("user") else ""
    port = f":{info['port']}" if info.get("port") else ""
    return f"postgresql://{user}{info.get('host') or 'localhost'}{port}/{info.get('dbname') or ''}"


def _unavailable(exc: BaseException, url: str) -> StoreUnavailable:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return StoreUnavailable(f"PostgreSQL at {_display(url)} is unavailable: {first}")


def _guard(url: str, fn: Callable[[], T]) -> T:
    """Run ``fn``; turn connection-level psycopg errors into StoreUnavailable."""
    try:
        return fn()
    except psycopg.errors.UndefinedTable as exc:
        raise StoreUnavailable(
            f"PostgreSQL at {_display(url)} has no jobsvc tables ({exc}); run `jobsvc migrate --db URL`"
        ) from exc
    except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
        # OperationalError covers lost connections, timeouts (PoolTimeout, QueryCanceled),
        # server shutdown (AdminShutdown), serialization failures and deadlocks.
        raise _unavailable(exc, url) from exc
    except psycopg.errors.ReadOnlySqlTransaction as exc:  # connected to a standby after failover
        raise _unavailable(exc, url) from exc


# --------------------------------------------------------------------------- migrations API


def schema_version(conn: psycopg.Connection[Any]) -> int:
    """The applied schema version (0: no jobsvc schema)."""
    row = conn.execute("SELECT to_regclass(%s)", (SCHEMA_TABLE,)).fetchone()
    if row is None or row[0] is None:
        return 0
    row = conn.execute(f"SELECT coalesce(max(version), 0) FROM {SCHEMA_TABLE}").fetchone()  # noqa: S608 - constant
    return int(row[0]) if row else 0


def _ahead_error(url: str, version: int) -> ConfigError:
    return ConfigError(
        f"the jobsvc schema in {_display(url)} is at version {version}, newer than this jobsvc "
        f"(which knows versions up to {CURRENT_VERSION}); upgrade jobsvc"
    )


def apply_migrations(url: str) -> list[str]:
    """Apply pending migrations in one transaction under an advisory lock; returns the names
    applied (empty when up to date). Blocking: call it from a thread."""

    def run() -> list[str]:
        kwargs = _conn_kwargs(url, connect_timeout=CONNECT_TIMEOUT, statement_timeout=None)
        kwargs["options"] += " -c statement_timeout=0 -c lock_timeout=60000"
        with psycopg.connect(url, **kwargs) as conn:  # commits on a clean exit
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            conn.execute(_CREATE_SCHEMA_TABLE)
            version = schema_version(conn)
            if version > CURRENT_VERSION:
                raise _ahead_error(url, version)
            applied = []
            for number, name, statements in MIGRATIONS:
                if number <= version:
                    continue
                for statement in statements:
                    conn.execute(statement)
                conn.execute(
                    f"INSERT INTO {SCHEMA_TABLE} (version, name) VALUES (%s, %s)",  # noqa: S608 - constant
                    (number, name),
                )
                applied.append(name)
            return applied

    return _guard(url, run)


async def migrate(url: str) -> list[str]:
    """Apply pending schema migrations to the database at ``url``; returns their names."""
    return await trio.to_thread.run_sync(apply_migrations, url)


# --------------------------------------------------------------------------- the store


class PostgresStore(Store):
    """The store contract on PostgreSQL. Open it with :func:`open_postgres_store`."""

    kind = "postgresql"
    exclusive = False

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 8,
        connect_timeout: int = CONNECT_TIMEOUT,
        pool_timeout: float = POOL_TIMEOUT,
        statement_timeout: float = STATEMENT_TIMEOUT,
    ) -> None:
        self._url = url
        self._kwargs = _conn_kwargs(url, connect_timeout=connect_timeout, statement_timeout=statement_timeout)
        self._listen_kwargs = _conn_kwargs(url, connect_timeout=connect_timeout, statement_timeout=None)
        self._pool = ConnectionPool(
            url,
            kwargs=self._kwargs,
            min_size=min(2, pool_size),
            max_size=pool_size,
            open=False,
            check=ConnectionPool.check_connection,
            timeout=pool_timeout,
            name="jobsvc",
        )
        self._pool_open_timeout = connect_timeout + pool_timeout
        self._limiter = trio.CapacityLimiter(pool_size)
        self._listen_limiter = trio.CapacityLimiter(1)
        self._listen_conn: psycopg.Connection[Any] | None = None
        self._wake = trio.Event()
        self._pending_wake = False
        self._closed = False
        #: times the listener connected again after losing its connection (for tests/metrics)
        self.listener_reconnects = 0
        #: notifications received, and the payload of the last one (for tests/metrics)
        self.notifications_received = 0
        self.last_notification_payload: str | None = None

    # ------------------------------------------------------------------ plumbing

    async def _run(self, fn: Callable[[psycopg.Connection[Any]], T]) -> T:
        """Run ``fn(conn)`` as one transaction in a worker thread (one hop)."""
        if self._closed:
            raise StoreUnavailable("the PostgreSQL store is closed")

        def call() -> T:
            def tx() -> T:
                with self._pool.connection() as conn:  # commits, or rolls back on error
                    return fn(conn)

            return _guard(self._url, tx)

        return await trio.to_thread.run_sync(call, limiter=self._limiter)

    def _connect_listener(self) -> psycopg.Connection[Any]:
        """Blocking: a new autocommit connection that LISTENs on CHANNEL."""

        def connect() -> psycopg.Connection[Any]:
            conn = psycopg.connect(self._url, autocommit=True, **self._listen_kwargs)
            try:
                conn.execute(f"LISTEN {CHANNEL}")
            except BaseException:
                conn.close()
                raise
            return conn

        return _guard(self._url, connect)

    async def _open(self, *, migrate: bool) -> None:
        """Migrate if asked, check the schema version, connect the listener, fill the pool."""

        def open_() -> psycopg.Connection[Any]:
            if migrate:
                applied = apply_migrations(self._url)
                if applied:
                    log.info("applied migrations to %s: %s", _display(self._url), ", ".join(applied))
            conn = self._connect_listener()
            try:
                version = _guard(self._url, lambda: schema_version(conn))
                if version < CURRENT_VERSION:
                    raise ConfigError(
                        f"the jobsvc schema in {_display(self._url)} is at version {version}, "
                        f"this jobsvc needs version {CURRENT_VERSION}: run `jobsvc migrate --db URL` "
                        "(or start jobsvc serve with --migrate)"
                    )
                if version > CURRENT_VERSION:
                    raise _ahead_error(self._url, version)
                _guard(self._url, lambda: self._pool.open(wait=True, timeout=self._pool_open_timeout))
            except BaseException:
                conn.close()
                raise
            return conn

        self._listen_conn = await trio.to_thread.run_sync(open_, limiter=self._limiter)

    # ------------------------------------------------------------------ wake-ups

    def _wake_waiters(self) -> None:
        self._pending_wake = True
        self._wake.set()
        self._wake = trio.Event()

    @property
    def listener_pid(self) -> int | None:
        """Backend pid of the LISTEN connection (None while reconnecting)."""
        conn = self._listen_conn
        return None if conn is None or conn.closed else conn.info.backend_pid

    def _close_listener(self) -> None:
        conn, self._listen_conn = self._listen_conn, None
        if conn is not None and not conn.closed:
            try:
                trio.lowlevel.notify_closing(conn.fileno())
            except Exception:  # noqa: BLE001 - the socket may already be gone
                pass
            conn.close()

    def _drain(self, conn: psycopg.Connection[Any]) -> int:
        """Read what the socket holds without blocking; count notifications. Raises
        OperationalError when the connection is broken."""
        pgconn = conn.pgconn
        pgconn.consume_input()
        if pgconn.status != pq.ConnStatus.OK:
            raise psycopg.OperationalError("the LISTEN connection is broken")
        count = 0
        while (notify := pgconn.notifies()) is not None:
            count += 1
            self.last_notification_payload = notify.extra.decode("utf-8", "replace")
        self.notifications_received += count
        return count

    async def _listen_loop(self) -> None:
        """Forever: wait for notifications on the LISTEN connection; reconnect when it drops."""
        backoff = LISTEN_BACKOFF_MIN
        while True:
            conn = self._listen_conn
            if conn is None:
                try:
                    conn = await trio.to_thread.run_sync(self._connect_listener, limiter=self._listen_limiter)
                except StoreUnavailable as exc:
                    log.warning("LISTEN connection failed, retrying in %.2fs: %s", backoff, exc)
                    await trio.sleep(backoff * random.uniform(0.5, 1.0))
                    backoff = min(backoff * 2, LISTEN_BACKOFF_MAX)
                    continue
                backoff = LISTEN_BACKOFF_MIN
                self._listen_conn = conn
                self.listener_reconnects += 1
                log.info("LISTEN connection re-established")
                self._wake_waiters()  # notifications may have been missed while disconnected
            try:
                await trio.lowlevel.wait_readable(conn.fileno())
                received = self._drain(conn)
            except (psycopg.Error, OSError) as exc:
                log.warning("LISTEN connection lost: %s", str(exc).strip().splitlines()[0] if str(exc) else exc)
                self._close_listener()
                continue
            if received:
                self._wake_waiters()

    async def wait_for_work(self) -> None:
        """Return when another instance may have made jobs claimable: a NOTIFY arrived (or
        several: they coalesce into one return), or the listener reconnected."""
        if self._closed:
            raise StoreUnavailable("the PostgreSQL store is closed")
        if not self._pending_wake:
            await self._wake.wait()
        self._pending_wake = False

    # ------------------------------------------------------------------ the contract

    async def insert(self, jobs: Sequence[Job]) -> list[InsertResult]:
        if not jobs:
            return []
        params = [{c: v for c, v in to_row(job).items() if c != "seq"} for job in jobs]

        def tx(conn: psycopg.Connection[Any]) -> list[InsertResult]:
            with conn.cursor() as cur:
                cur.executemany(_SQL_INSERT, params, returning=True)  # pipelined: one round trip
                inserted: list[Job | None] = []
                while True:
                    row = cur.fetchone()
                    inserted.append(None if row is None else from_row(row))
                    if not cur.nextset():
                        break
            if len(inserted) != len(jobs):  # pragma: no cover - psycopg contract
                raise RuntimeError("executemany returned an unexpected number of results")
            clashes = [job for job, new in zip(jobs, inserted, strict=True) if new is None]
            existing: list[Job] = []
            if clashes:
                ids = [job.id for job in clashes]
                keys = [job.idempotency_key for job in clashes if job.idempotency_key is not None]
                existing = [from_row(r) for r in conn.execute(_SQL_EXISTING, {"ids": ids, "keys": keys})]
            by_id = {j.id: j for j in existing}
            by_key = {j.idempotency_key: j for j in existing if j.idempotency_key is not None}
            results = []
            for job, new in zip(jobs, inserted, strict=True):
                if new is not None:
                    results.append(InsertResult(new, created=True))
                    continue
                found = by_id.get(job.id) or (by_key.get(job.idempotency_key) if job.idempotency_key else None)
                if found is None:  # the clashing row vanished (pruned) between the two statements
                    raise StoreUnavailable("a concurrent change got in the way of this insert; retry")
                results.append(InsertResult(found, created=False))
            check_conflicts(jobs, results)  # raising rolls the transaction back
            if len(clashes) < len(jobs):
                conn.execute(_SQL_NOTIFY, (CHANNEL,))
            return results

        return await self._run(tx)

    async def get(self, job_id: str) -> Job | None:
        def tx(conn: psycopg.Connection[Any]) -> Job | None:
            row = conn.execute(_SQL_GET, (job_id,)).fetchone()
            return None if row is None else from_row(row)

        return await self._run(tx)

    async def list_jobs(
        self,
        *,
        states: Collection[JobState] = (),
        task: str | None = None,
        after: int | None = None,
        limit: int = 100,
    ) -> list[Job]:
        query = _LIST_BASE
        params: dict[str, Any] = {"limit": limit}
        if states:
            query += _LIST_STATES
            params["states"] = [s.value for s in states]
        if task is not None:
            query += _LIST_TASK
            params["task"] = task
        if after is not None:
            query += _LIST_AFTER
            params["after"] = after
        query += _LIST_TAIL

        def tx(conn: psycopg.Connection[Any]) -> list[Job]:
            return [from_row(r) for r in conn.execute(query, params)]

        return await self._run(tx)

    async def claim_due(
        self,
        *,
        owner: str,
        now: float,
        lease: float,
        limit: int,
        tasks: Collection[str] | None = None,
    ) -> list[Job]:
        if limit <= 0:
            return []
        params: dict[str, Any] = {"owner": owner, "now": now, "expires": now + lease, "limit": limit}
        query = _SQL_CLAIM_DUE
        if tasks is not None:
            query = _SQL_CLAIM_DUE_TASKS
            params["tasks"] = list(tasks)

        def tx(conn: psycopg.Connection[Any]) -> list[Job]:
            with conn.pipeline():  # one round trip for both statements
                conn.execute(_SQL_CLAIM_PLAN)
                rows = conn.execute(query, params).fetchall()
            claimed = [from_row(r) for r in rows]
            claimed.sort(key=lambda j: (-j.priority, j.run_at, j.seq))  # RETURNING has no order
            return claimed

        return await self._run(tx)

    async def claim(self, job_id: str, *, owner: str, now: float, lease: float) -> Job | None:
        params = {"id": job_id, "owner": owner, "now": now, "expires": now + lease}

        def tx(conn: psycopg.Connection[Any]) -> Job | None:
            row = conn.execute(_SQL_CLAIM_ONE, params).fetchone()
            return None if row is None else from_row(row)

        return await self._run(tx)

    @staticmethod
    def _save_params(new: Job, expected: Job) -> dict[str, Any]:
        row = to_row(new)
        params = {c: row[c] for c in MUTABLE}
        params.update(fence_id=expected.id, fence_state=expected.state.value, fence_token=expected.lease_token)
        return params

    async def save(self, new: Job, *, expected: Job) -> bool:
        params = self._save_params(new, expected)
        notify = new.state.value in _CLAIMABLE

        def tx(conn: psycopg.Connection[Any]) -> bool:
            written = conn.execute(_SQL_SAVE_FENCED, params).rowcount == 1
            if written and notify:
                conn.execute(_SQL_NOTIFY, (CHANNEL,))
            return written

        return await self._run(tx)

    async def modify(self, job_id: str, change: Callable[[Job], Job]) -> Job:
        def tx(conn: psycopg.Connection[Any]) -> Job:
            row = conn.execute(_SQL_GET_FOR_UPDATE, (job_id,)).fetchone()
            if row is None:
                raise JobNotFound(f"no job has the id {job_id!r}")
            old = from_row(row)
            new = change(old)  # may raise (IllegalTransition): the pool rolls back
            if new == old:
                return old
            written = conn.execute(_SQL_SAVE_FENCED, self._save_params(new, old)).rowcount
            if written != 1:  # pragma: no cover - we hold the row lock
                raise RuntimeError(f"job {job_id} changed under its row lock")
            if new.state.value in _CLAIMABLE:
                conn.execute(_SQL_NOTIFY, (CHANNEL,))
            return new

        return await self._run(tx)

    async def heartbeat(self, *, owner: str, now: float, lease: float, job_ids: Collection[str]) -> dict[str, bool]:
        ids = list(job_ids)
        if not ids:
            return {}
        params = {"owner": owner, "expires": now + lease, "ids": ids}

        def tx(conn: psycopg.Connection[Any]) -> dict[str, bool]:
            return {job_id: bool(cancel) for job_id, cancel in conn.execute(_SQL_HEARTBEAT, params)}

        return await self._run(tx)

    async def rescue(self, *, now: float, max_rescues: int, expired_only: bool = True) -> list[Job]:
        def tx(conn: psycopg.Connection[Any]) -> list[Job]:
            if expired_only:
                rows = conn.execute(_SQL_EXPIRED, {"now": now}).fetchall()
            else:
                rows = conn.execute(_SQL_ALL_RUNNING).fetchall()
            if not rows:
                return []
            old = [from_row(r) for r in rows]
            new = [models.rescue(job, now=now, max_rescues=max_rescues) for job in old]
            with conn.cursor() as cur:
                # fenced like every other write (River#1302), although we hold the row locks
                cur.executemany(_SQL_SAVE_FENCED, [self._save_params(n, o) for n, o in zip(new, old, strict=True)])
                if cur.rowcount != len(new):  # pragma: no cover - we hold the row locks
                    raise RuntimeError("rescue: a locked row changed")
            if any(job.state.value in _CLAIMABLE for job in new):
                conn.execute(_SQL_NOTIFY, (CHANNEL,))
            return new

        return await self._run(tx)

    async def next_run_at(self, *, tasks: Collection[str] | None = None) -> float | None:
        def tx(conn: psycopg.Connection[Any]) -> float | None:
            if tasks is None:
                row = conn.execute(_SQL_NEXT_RUN_AT).fetchone()
            else:
                row = conn.execute(_SQL_NEXT_RUN_AT_TASKS, {"tasks": list(tasks)}).fetchone()
            return None if row is None else row[0]

        return await self._run(tx)

    async def count_by_state(self) -> dict[JobState, int]:
        def tx(conn: psycopg.Connection[Any]) -> dict[JobState, int]:
            counts = dict.fromkeys(JobState, 0)
            for state, n in conn.execute(_SQL_COUNT):
                counts[JobState(state)] = int(n)
            return counts

        return await self._run(tx)

    async def prune(self, *, finished_before: float) -> int:
        def tx(conn: psycopg.Connection[Any]) -> int:
            total = 0
            while True:  # batches, each committed, so no statement runs long
                n = conn.execute(_SQL_PRUNE, {"before": finished_before, "batch": _PRUNE_BATCH}).rowcount
                conn.commit()
                total += n
                if n < _PRUNE_BATCH:
                    return total

        return await self._run(tx)

    async def ping(self) -> None:
        """Raise StoreUnavailable unless a pooled connection answers."""

        def tx(conn: psycopg.Connection[Any]) -> None:
            conn.execute("SELECT 1")

        await self._run(tx)

    async def aclose(self) -> None:
        """Close the pool and the LISTEN connection; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._close_listener()
        self._wake.set()  # nobody should be waiting; do not leave them hanging if they are
        await trio.to_thread.run_sync(lambda: self._pool.close(timeout=5.0))


@asynccontextmanager
async def open_postgres_store(
    url: str,
    *,
    migrate: bool = False,
    pool_size: int = 8,
    connect_timeout: int = CONNECT_TIMEOUT,
    pool_timeout: float = POOL_TIMEOUT,
    statement_timeout: float = STATEMENT_TIMEOUT,
) -> AsyncIterator[PostgresStore]:
    """Open a :class:`PostgresStore` (and its LISTEN task); close both on exit.

    Raises ConfigError when the schema is behind (without ``migrate=True``) or ahead of this
    code, StoreUnavailable when the server cannot be reached.
    """
    store = PostgresStore(
        url,
        pool_size=pool_size,
        connect_timeout=connect_timeout,
        pool_timeout=pool_timeout,
        statement_timeout=statement_timeout,
    )
    try:
        await store._open(migrate=migrate)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(store._listen_loop, name="jobsvc-pg-listen")
            try:
                yield store
            finally:
                nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await store.aclose()
