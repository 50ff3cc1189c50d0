"""PostgreSQL store: several jobsvc instances share one queue and survive each other's crashes.

Theory of operation
-------------------
* **Driver.** psycopg 3's *sync* API with a :class:`psycopg_pool.ConnectionPool`; its async
  API needs asyncio and does not run under trio. Every store call is one transaction run in
  a worker thread through ``trio.to_thread.run_sync`` with the store's own
  :class:`trio.CapacityLimiter` (the pool size): one thread hop per transaction, never per row.
* **Operations.** The store is a dialect (:class:`_PgTx`) under the operations written once
  in :mod:`jobsvc.store.base`: every state change is computed by :mod:`jobsvc.models` and
  written fenced (``WHERE id = ? AND state = ? AND lease_token = ? AND cancel_requested = ?``)
  in ONE statement for a whole batch (``UPDATE ... FROM json_to_recordset(...)``).
* **Batches as one JSON parameter.** A batch of rows (an insert, fenced writes) goes to the
  server as one JSON array of row objects, read by ``json_to_recordset``, not as one array
  parameter per column: psycopg dumps arrays element by element in Python, which cost 0.21
  ms for a one-job insert (22 columns) and 0.65 ms for 32 outcomes, where ``json.dumps``
  takes 0.02 ms and 0.05 ms (``docs/postgres.md``).
* **Group commit.** Durable writes (a submission, a cancel, a redrive, a claim) that callers
  make at the same time share one transaction: the first caller to find a free slot runs
  whatever is queued (up to ``MAX_GROUP`` operations; at most ``group_slots`` such batches
  at once) and the others wait for its commit. PostgreSQL pays its per-transaction cost
  (BEGIN, COMMIT, a WAL flush, a pooled connection and a thread hop) once per batch instead
  of once per request. The operations run one after another without savepoints; if one
  raises (a Conflict, a failed statement), the whole transaction is rolled back and the
  batch runs again with a ``SAVEPOINT`` around each operation, so one caller's error never
  undoes another's write. A batch (like any transaction) that PostgreSQL aborts for a
  deadlock or a serialization failure is run again, up to ``TX_RETRIES`` times.
* **Claims.** Due jobs are picked one priority level at a time (``priority = p AND run_at <=
  now ORDER BY run_at, seq LIMIT n FOR UPDATE SKIP LOCKED`` on the partial index
  ``jobs_due``), so concurrent instances never claim the same job nor wait for each other,
  and the cost does not grow with the backlog or with jobs scheduled for later.
* **Rescue.** Expired leases are taken back with ``FOR UPDATE SKIP LOCKED`` (a row that a live
  worker is writing right now is skipped) and :func:`jobsvc.models.rescue`, written fenced.
* **Counts.** Jobs by tenant, task and state live in ``jobsvc_counts``, kept by statement-level
  triggers (transition tables: one upsert per statement, not per row) in the same
  transaction as the change. Every instance updating one counter row would serialize all
  writers on that row's lock, so each row is *sharded* by the writing backend
  (``pg_backend_pid() % 32``) and a read sums the shards: O(tenants x tasks x states x 32)
  whatever the size of the table (one tenant's: a range of the primary key).
* **Tenants.** ``tenant`` is ``''`` for a job without one, so that idempotency keys are unique
  per tenant with one plain unique index (NULLs would all be distinct). The tenant indexes are
  partial (``WHERE tenant <> ''``): a service without tenants does not pay for them.
* **Durability.** A client's write (a submission, a cancel, a redrive) and a claim (see
  :meth:`Store.claim`) commit with ``synchronous_commit = on``. The other worker-side writes
  (outcomes, heartbeats, rescues) use ``synchronous_commit = off`` unless
  ``fsync_interval`` is 0: the server flushes them
  within ``3 x wal_writer_delay`` (0.6 s by default); a crash of the *server* may forget
  them, and those attempts run again.
* **Wake-ups.** A transaction that makes a job claimable runs ``pg_notify('jobsvc_jobs',
  instance)`` (delivered on commit), where ``instance`` is a random id of the sending store.
  A store ignores its own notifications: the service wakes its own claim loop for the jobs
  it makes claimable, and waking it again for each of its own commits only started claims
  that found nothing, which kept its submissions from claiming at insert.
  One dedicated ``LISTEN`` connection per store is awaited with
  ``trio.lowlevel.wait_readable`` (no thread); bursts coalesce into one wake-up; the listener
  reconnects with capped exponential backoff and wakes its waiters after a reconnect, because
  notifications may have been missed meanwhile.
* **The metrics reporter.** The LISTEN connection also tries a session-level
  ``pg_try_advisory_lock(REPORTER_LOCK)``: the one instance holding it is the *reporter*
  (:attr:`PostgresStore.is_reporter`), which alone exports the store-wide metrics, so that
  summing them over instances counts each job once. The others try again every
  ``reporter_retry`` seconds, so one takes over when the holder's connection (or the holder)
  goes away; a listener that reconnects tries at once. Server-side TCP keepalives on that
  connection bound how long the server keeps the lock of a holder that vanished without
  closing its socket.
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

import functools
import json
import logging
import random
import secrets
import typing
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import attrs
import psycopg
import psycopg.conninfo
import trio
from psycopg import pq
from psycopg_pool import ConnectionPool

from ..codec import JOB_FIELDS, job_from_row
from ..errors import ConfigError, StoreUnavailable
from ..models import Job, JobState
from ._sql import (
    CLAIM_SET,
    CLAIMABLE_STATES,
    FINAL_STATES,
    INSERTED,
    WRITABLE,
    in_level_order,
    insert_values,
    writable_values,
)
from .base import AttemptKey, ClaimRequest, Counts, InsertResult, Store, Tx, insert_jobs

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
#: Key of the session-level advisory lock whose holder reports the store-wide metrics.
REPORTER_LOCK = 0x6A6F_6273_7663_0002
#: The migrations table.
SCHEMA_TABLE = "jobsvc_schema"

#: Counter rows per (task, state): one per shard, chosen by the writing backend.
COUNT_SHARDS = 32
#: Most operations one group-committed transaction carries.
MAX_GROUP = 64
#: Tries of a transaction that PostgreSQL aborted for a deadlock or a serialization failure.
TX_RETRIES = 3

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

_COUNT_FUNCTION = f"""
    CREATE FUNCTION jobsvc_count_jobs() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        -- one upsert per statement (not per row); rows sharded by the writing backend so
        -- concurrent writers do not queue on one counter row; sorted so they lock in order
        IF TG_OP = 'INSERT' THEN
            INSERT INTO jobsvc_counts AS c (task, state, shard, n)
                SELECT task, state, pg_backend_pid() % {COUNT_SHARDS}, count(*) FROM new_rows
                GROUP BY task, state ORDER BY task, state
                ON CONFLICT (task, state, shard) DO UPDATE SET n = c.n + excluded.n;
        ELSIF TG_OP = 'DELETE' THEN
            INSERT INTO jobsvc_counts AS c (task, state, shard, n)
                SELECT task, state, pg_backend_pid() % {COUNT_SHARDS}, -count(*) FROM old_rows
                GROUP BY task, state ORDER BY task, state
                ON CONFLICT (task, state, shard) DO UPDATE SET n = c.n + excluded.n;
        ELSE
            INSERT INTO jobsvc_counts AS c (task, state, shard, n)
                SELECT task, state, pg_backend_pid() % {COUNT_SHARDS}, sum(d) FROM (
                    SELECT task, state, 1 AS d FROM new_rows
                    UNION ALL SELECT task, state, -1 FROM old_rows) AS changes
                GROUP BY task, state HAVING sum(d) <> 0 ORDER BY task, state
                ON CONFLICT (task, state, shard) DO UPDATE SET n = c.n + excluded.n;
        END IF;
        RETURN NULL;
    END $$
"""  # noqa: S608 - constant DDL

_V2 = (
    """
    CREATE TABLE jobsvc_counts (
        task text NOT NULL,
        state text NOT NULL,
        shard integer NOT NULL,
        n bigint NOT NULL,
        PRIMARY KEY (task, state, shard)
    )
    """,
    _COUNT_FUNCTION,
    # The triggers lock the jobs table until this migration commits: the backfill below
    # cannot miss or count twice a change made meanwhile.
    "CREATE TRIGGER jobs_count_insert AFTER INSERT ON jobs REFERENCING NEW TABLE AS new_rows "
    "FOR EACH STATEMENT EXECUTE FUNCTION jobsvc_count_jobs()",
    "CREATE TRIGGER jobs_count_update AFTER UPDATE ON jobs REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows "
    "FOR EACH STATEMENT EXECUTE FUNCTION jobsvc_count_jobs()",
    "CREATE TRIGGER jobs_count_delete AFTER DELETE ON jobs REFERENCING OLD TABLE AS old_rows "
    "FOR EACH STATEMENT EXECUTE FUNCTION jobsvc_count_jobs()",
    "INSERT INTO jobsvc_counts (task, state, shard, n) SELECT task, state, 0, count(*) FROM jobs GROUP BY task, state",
)

_COUNT_FUNCTION_V3 = f"""
    CREATE OR REPLACE FUNCTION jobsvc_count_jobs() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        -- as in migration 2, by tenant too
        IF TG_OP = 'INSERT' THEN
            INSERT INTO jobsvc_counts AS c (tenant, task, state, shard, n)
                SELECT tenant, task, state, pg_backend_pid() % {COUNT_SHARDS}, count(*) FROM new_rows
                GROUP BY tenant, task, state ORDER BY tenant, task, state
                ON CONFLICT (tenant, task, state, shard) DO UPDATE SET n = c.n + excluded.n;
        ELSIF TG_OP = 'DELETE' THEN
            INSERT INTO jobsvc_counts AS c (tenant, task, state, shard, n)
                SELECT tenant, task, state, pg_backend_pid() % {COUNT_SHARDS}, -count(*) FROM old_rows
                GROUP BY tenant, task, state ORDER BY tenant, task, state
                ON CONFLICT (tenant, task, state, shard) DO UPDATE SET n = c.n + excluded.n;
        ELSE
            INSERT INTO jobsvc_counts AS c (tenant, task, state, shard, n)
                SELECT tenant, task, state, pg_backend_pid() % {COUNT_SHARDS}, sum(d) FROM (
                    SELECT tenant, task, state, 1 AS d FROM new_rows
                    UNION ALL SELECT tenant, task, state, -1 FROM old_rows) AS changes
                GROUP BY tenant, task, state HAVING sum(d) <> 0 ORDER BY tenant, task, state
                ON CONFLICT (tenant, task, state, shard) DO UPDATE SET n = c.n + excluded.n;
        END IF;
        RETURN NULL;
    END $$
"""  # noqa: S608 - constant DDL

_V3 = (
    # a constant default: no table rewrite; every job so far has no tenant
    "ALTER TABLE jobs ADD COLUMN tenant text NOT NULL DEFAULT ''",
    # idempotency keys are unique per tenant
    "ALTER TABLE jobs DROP CONSTRAINT jobs_idempotency_key_key",
    "CREATE UNIQUE INDEX jobs_idempotency ON jobs (tenant, idempotency_key) WHERE idempotency_key IS NOT NULL",
    # list_jobs(tenant=...) keyset pagination, with and without a state filter
    "CREATE INDEX jobs_tenant_seq ON jobs (tenant, seq) WHERE tenant <> ''",
    "CREATE INDEX jobs_tenant_state_seq ON jobs (tenant, state, seq) WHERE tenant <> ''",
    # counts by tenant too; the rows so far count jobs without a tenant
    "ALTER TABLE jobsvc_counts ADD COLUMN tenant text NOT NULL DEFAULT ''",
    "ALTER TABLE jobsvc_counts DROP CONSTRAINT jobsvc_counts_pkey",
    "ALTER TABLE jobsvc_counts ADD PRIMARY KEY (tenant, task, state, shard)",
    _COUNT_FUNCTION_V3,
)

_V4 = (
    # The claim runs with sorts and bitmap scans off (see _SQL_CLAIM_PLAN) and, being one
    # UPDATE, fires the counts trigger under those settings: its aggregation then took
    # 178 ms instead of 0.3. The function sets its own (a CREATE OR REPLACE of it in a later
    # migration must say them again).
    "ALTER FUNCTION jobsvc_count_jobs() SET enable_sort = on SET enable_bitmapscan = on",
)

#: (version, name, statements), in order. Never edit an applied migration: append a new one.
MIGRATIONS: tuple[tuple[int, str, tuple[str, ...]], ...] = (
    (1, "create jobs table and indexes", _V1),
    (2, "counts by task and state, kept by triggers", _V2),
    (3, "tenants: a tenant per job, idempotency keys per tenant, counts by tenant", _V3),
    (4, "the counts trigger plans with the default planner settings", _V4),
)
CURRENT_VERSION = MIGRATIONS[-1][0]

_CREATE_SCHEMA_TABLE = f"""
    CREATE TABLE IF NOT EXISTS {SCHEMA_TABLE} (
        version integer PRIMARY KEY,
        name text NOT NULL,
        applied_at timestamptz NOT NULL DEFAULT now()
    )
"""

# --------------------------------------------------------------------------- SQL

_COLS = ", ".join(JOB_FIELDS)
_IN_CLAIMABLE = f"state IN ({', '.join(repr(v) for v in CLAIMABLE_STATES)})"  # as the partial indexes say it
_IN_FINAL = f"state IN ({', '.join(repr(v) for v in FINAL_STATES)})"

def _sql_type(name: str) -> str:
    """A column's PostgreSQL type, from its Job field's type (JSON values are text)."""
    hint = typing.get_type_hints(Job)[name]
    kinds = [t for t in typing.get_args(hint) if t is not type(None)] or [hint]
    return {int: "bigint", float: "double precision", bool: "boolean"}.get(kinds[0], "text")


#: Every row of a batch in one statement (one trigger run for the counts, not one per row),
#: in the batch's order; RETURNING names the rows inserted.
_SQL_INSERT = (
    f"INSERT INTO jobs ({', '.join(INSERTED)}) "  # noqa: S608 - constant identifiers only
    f"SELECT {', '.join(INSERTED)} FROM ROWS FROM (json_to_recordset(%s::json) "
    f"AS ({', '.join(f'{c} {_sql_type(c)}' for c in INSERTED)})) "
    f"WITH ORDINALITY AS u({', '.join(INSERTED)}, n) ORDER BY n "
    f"ON CONFLICT DO NOTHING RETURNING {_COLS}"
)
#: A batch of rows as the one JSON parameter ``json_to_recordset`` reads (floats as repr()
#: writes them, which PostgreSQL reads back exactly; a lone surrogate fails to encode here,
#: as it did in psycopg's dumpers).
_rows_json = json.JSONEncoder(ensure_ascii=False, allow_nan=False, check_circular=False, separators=(",", ":")).encode
#: Two index lookups (the primary key; the partial unique index on idempotency keys, whose
#: predicate is spelled out so the planner may use it). One WHERE with ``OR`` over both read
#: the whole table: 4 ms at 1,000 rows, 177 ms at 1,000,000, on every refused submission.
_SQL_EXISTING = (
    f"SELECT {_COLS} FROM jobs WHERE id = ANY(%(ids)s::text[]) "  # noqa: S608 - constant identifiers only
    f"UNION ALL SELECT {_COLS} FROM jobs WHERE idempotency_key IS NOT NULL AND (tenant, idempotency_key) IN "
    "(SELECT * FROM unnest(%(tenants)s::text[], %(keys)s::text[]))"
)
_SQL_NOTIFY = "SELECT pg_notify(%s, %s)"
_SQL_GET = f"SELECT {_COLS} FROM jobs WHERE id = %s"  # noqa: S608 - constant identifiers only
_SQL_GET_FOR_UPDATE = _SQL_GET + " FOR UPDATE"

_FENCE = (("fence_id", "text"), ("fence_state", "text"), ("fence_token", "bigint"), ("fence_cancel", "boolean"))
_ROW_TYPES = [*_FENCE, *((c, _sql_type(c)) for c in WRITABLE)]


@functools.cache
def _row_names(changed: tuple[int, ...]) -> tuple[str, ...]:
    """The keys of a fenced write's row objects: the fence, then the WRITABLE columns at ``changed``."""
    return (*(name for name, _ in _FENCE), *(WRITABLE[i] for i in changed))


#: Every fenced write of a batch in one statement; RETURNING names the rows written. Rows
#: are locked in id order first, as the heartbeat locks them: two statements of this kind
#: (an outcome batch and a heartbeat over the same attempts) can never deadlock. The rows
#: are found by ``id = ANY(ARRAY(...))``, which the planner always serves from the primary
#: key: it guesses 100 rows for ``json_to_recordset`` and, joining on it, scanned the
#: whole table (23 ms at 20,000 rows, instead of about 2).
@functools.cache
def _sql_update(changed: tuple[int, ...]) -> str:
    """The fenced batch UPDATE setting the WRITABLE columns at ``changed`` (a handful of
    shapes: claim, success, retry...; each prepared by psycopg once it repeats)."""
    columns = [*_FENCE, *(_ROW_TYPES[len(_FENCE) + i] for i in changed)]
    sets = ", ".join(f"{WRITABLE[i]} = v.{WRITABLE[i]}" for i in changed) or "id = j.id"
    return (
        "WITH v AS (SELECT * FROM json_to_recordset(%(rows)s::json) "  # noqa: S608 - constant identifiers only
        f"AS v({', '.join(f'{name} {type_}' for name, type_ in columns)})), "
        "locked AS (SELECT id FROM jobs WHERE id = ANY(ARRAY(SELECT fence_id FROM v)) ORDER BY id FOR UPDATE) "
        f"UPDATE jobs j SET {sets} FROM v "
        "WHERE j.id = v.fence_id AND j.id = ANY(ARRAY(SELECT id FROM locked)) AND j.state = v.fence_state "
        "AND j.lease_token = v.fence_token AND j.cancel_requested = v.fence_cancel RETURNING j.id"
    )


def _fenced_update(pairs: Sequence[tuple[Job, Job]]) -> tuple[str, dict[str, str]]:
    """The statement and parameters writing ``(new, expected)`` pairs of distinct jobs, each
    fenced on ``expected``. Only the columns some pair changes are sent (a field a
    transition leaves alone is the same object in both jobs): a claim or a success changes
    5-6 of the 12."""
    changed = tuple(
        i for i, name in enumerate(WRITABLE) if any(getattr(new, name) is not getattr(expected, name) for new, expected in pairs)
    )
    names = _row_names(changed)
    rows = []
    for new, expected in pairs:
        values = writable_values(new)
        fence = (expected.id, expected.state.value, expected.lease_token, expected.cancel_requested)
        rows.append(dict(zip(names, (*fence, *(values[i] for i in changed)), strict=True)))
    return _sql_update(changed), {"rows": _rows_json(rows)}


#: Sent before the claim queries, for this transaction only: the planner's row estimates for
#: a queue table swing wildly (an idle queue was analyzed with no pending rows, then a burst
#: arrives); without sorts and bitmap scans it walks the jobs_due index in claim order and
#: stops at n, whatever the statistics say.
_SQL_CLAIM_PLAN = "SELECT set_config('enable_sort', 'off', true), set_config('enable_bitmapscan', 'off', true)"
#: ... and undone right after them: the writes that follow in the same transaction need the
#: planner's full choice (the counts trigger sets its own: migration 4).
_SQL_CLAIM_PLAN_END = "SELECT set_config('enable_sort', 'on', true), set_config('enable_bitmapscan', 'on', true)"
_SQL_TOP_LEVEL = f"SELECT priority FROM jobs WHERE {_IN_CLAIMABLE} ORDER BY priority DESC LIMIT 1"  # noqa: S608 - constant
#: Both in one round trip (no parameters: the simple query protocol runs them in order, so
#: the second is planned with the settings of the first).
_SQL_PLAN_AND_TOP_LEVEL = f"{_SQL_CLAIM_PLAN}; {_SQL_TOP_LEVEL}"
_SQL_NEXT_LEVEL = f"SELECT priority FROM jobs WHERE {_IN_CLAIMABLE} AND priority < %s ORDER BY priority DESC LIMIT 1"  # noqa: S608 - constant
_DUE_AT_LEVEL = f"SELECT id FROM jobs WHERE {_IN_CLAIMABLE} AND priority = %(level)s AND run_at <= %(now)s"  # noqa: S608 - constant
_DUE_TAIL = " ORDER BY run_at, seq LIMIT %(limit)s FOR UPDATE SKIP LOCKED"
#: One priority level's claim in one statement (one round trip; the rows are not sent back
#: and forth): the SQL form of :func:`jobsvc.models.claim`, which the store contract suite
#: holds it to. The due jobs are locked in claim order by the sub-select; RETURNING gives
#: them in no particular order. A claim of 32 jobs through the store took 4.5-4.7 ms when it
#: read the rows and wrote them back, 2.6 ms this way (and half the CPU of this process).
_CLAIM_AT_LEVEL = (
    f"UPDATE jobs SET {CLAIM_SET}, "  # noqa: S608 - constant identifiers only
    "lease_owner = %(owner)s, lease_expires_at = %(expires)s, updated_at = %(now)s WHERE id = ANY(ARRAY("
)
_CLAIM_TAIL = f")) AND {_IN_CLAIMABLE} RETURNING {_COLS}"  # noqa: S608 - constant identifiers only
_SQL_CLAIM = _CLAIM_AT_LEVEL + _DUE_AT_LEVEL + _DUE_TAIL + _CLAIM_TAIL
_SQL_CLAIM_TASKS = _CLAIM_AT_LEVEL + _DUE_AT_LEVEL + " AND task = ANY(%(tasks)s::text[])" + _DUE_TAIL + _CLAIM_TAIL
_SQL_NEXT_RUN_AT = f"SELECT min(run_at) FROM jobs WHERE {_IN_CLAIMABLE}"  # noqa: S608 - constant
_SQL_NEXT_RUN_AT_TASKS = _SQL_NEXT_RUN_AT + " AND task = ANY(%(tasks)s::text[])"
_SQL_RENEW = (
    "WITH k AS (SELECT * FROM unnest(%(ids)s::text[], %(tokens)s::bigint[]) AS k(id, token)), "
    "locked AS (SELECT j.id FROM jobs j JOIN k ON j.id = k.id ORDER BY j.id FOR UPDATE OF j) "
    "UPDATE jobs j SET lease_expires_at = %(expires)s FROM k "
    "WHERE j.id = k.id AND j.id IN (SELECT id FROM locked) AND j.lease_token = k.token AND j.state = 'running' "
    "AND j.lease_owner = %(owner)s RETURNING j.id, j.lease_token, j.cancel_requested"
)
_SQL_EXPIRED = (
    f"SELECT {_COLS} FROM jobs WHERE state = 'running' AND lease_expires_at <= %(now)s "  # noqa: S608 - constant identifiers only
    "ORDER BY lease_expires_at FOR UPDATE SKIP LOCKED"
)
_SQL_ALL_RUNNING = f"SELECT {_COLS} FROM jobs WHERE state = 'running' ORDER BY seq FOR UPDATE SKIP LOCKED"  # noqa: S608 - constant identifiers only
_SQL_COUNTS = "SELECT task, state, sum(n) FROM jobsvc_counts GROUP BY task, state HAVING sum(n) <> 0"
_SQL_TENANT_COUNTS = "SELECT task, state, sum(n) FROM jobsvc_counts WHERE tenant = %s GROUP BY task, state HAVING sum(n) <> 0"
_SQL_PRUNE = (
    f"DELETE FROM jobs WHERE id IN (SELECT id FROM jobs WHERE {_IN_FINAL} "  # noqa: S608 - constant
    "AND finished_at < %(before)s LIMIT %(batch)s)"
)
# list_jobs: constant fragments joined by constant code; values are parameters
_LIST_BASE = f"SELECT {_COLS} FROM jobs WHERE true"  # noqa: S608 - constant identifiers only
_LIST_TENANT = " AND tenant = %(tenant)s AND tenant <> ''"  # names the partial indexes' condition
_LIST_STATES = " AND state = ANY(%(states)s::text[])"
_LIST_TASK = " AND task = %(task)s"
_LIST_AFTER = " AND seq > %(after)s"
_LIST_TAIL = " ORDER BY seq LIMIT %(limit)s"


def _storable(text: str | None) -> bool:
    """PostgreSQL text cannot hold a NUL character: such a string matches no row (looking it
    up would be an error, a 500, instead of "not found")."""
    return text is None or "\x00" not in text


class _PgTx:
    """The dialect: each primitive is one statement (or one pipelined round trip). Every
    string a lookup sends is checked with :func:`_storable` first."""

    def __init__(self, conn: psycopg.Connection[Any], sender: str) -> None:
        self._conn = conn
        self._sender = sender  #: the NOTIFY payload: the store instance that writes
        self._notified = False

    def insert(self, jobs: Sequence[Job]) -> list[Job | None]:
        rows = _rows_json([dict(zip(INSERTED, insert_values(job), strict=True)) for job in jobs])
        inserted = {row[0]: job_from_row(row) for row in self._conn.execute(_SQL_INSERT, (rows,))}
        # The first job of the batch with a given id is the one inserted (if any was).
        return [inserted.pop(job.id, None) for job in jobs]

    def existing(self, jobs: Sequence[Job]) -> list[Job | None]:
        ids = [job.id for job in jobs if _storable(job.id)]
        keyed = [j for j in jobs if j.idempotency_key is not None and _storable(j.idempotency_key) and _storable(j.tenant)]
        params = {"ids": ids, "tenants": [j.tenant or "" for j in keyed], "keys": [j.idempotency_key for j in keyed]}
        rows = [job_from_row(r) for r in self._conn.execute(_SQL_EXISTING, params)]
        by_id = {j.id: j for j in rows}
        by_key = {(j.tenant, j.idempotency_key): j for j in rows if j.idempotency_key is not None}
        return [by_id.get(job.id) or (by_key.get((job.tenant, job.idempotency_key)) if job.idempotency_key else None) for job in jobs]

    def get(self, job_id: str, *, lock: bool = False) -> Job | None:
        if not _storable(job_id):
            return None
        row = self._conn.execute(_SQL_GET_FOR_UPDATE if lock else _SQL_GET, (job_id,)).fetchone()
        return None if row is None else job_from_row(row)

    def update(self, pairs: Sequence[tuple[Job, Job]]) -> list[bool]:
        if not pairs:
            return []
        if len({expected.id for _, expected in pairs}) < len(pairs):
            # Several pairs for one job: in order, each fenced on what came before (one
            # UPDATE ... FROM would write the row once, from any one of them).
            return [ok for pair in pairs for ok in self.update([pair])]
        written = {r[0] for r in self._conn.execute(*_fenced_update(pairs))}
        return [expected.id in written for _, expected in pairs]

    def claim(self, request: ClaimRequest) -> list[Job]:
        tasks = None if request.tasks is None else [t for t in request.tasks if _storable(t)]
        if tasks is not None and not tasks:
            return []
        params: dict[str, Any] = {"now": request.now, "owner": request.owner, "expires": request.now + request.lease}
        query = _SQL_CLAIM
        if tasks is not None:
            query = _SQL_CLAIM_TASKS
            params["tasks"] = tasks
        claimed: list[Job] = []
        try:
            cursor = self._conn.execute(_SQL_PLAN_AND_TOP_LEVEL)
            cursor.nextset()
            level = cursor.fetchone()
            while level is not None:
                params.update(level=level[0], limit=request.limit - len(claimed))
                found = sorted((job_from_row(r) for r in self._conn.execute(query, params)), key=in_level_order)
                claimed.extend(found)
                if len(claimed) >= request.limit:
                    break
                level = self._conn.execute(_SQL_NEXT_LEVEL, (level[0],)).fetchone()
        finally:
            self._conn.execute(_SQL_CLAIM_PLAN_END)
        return claimed

    def next_run_at(self, *, tasks: Collection[str] | None) -> float | None:
        if tasks is None:
            row = self._conn.execute(_SQL_NEXT_RUN_AT).fetchone()
        else:
            row = self._conn.execute(_SQL_NEXT_RUN_AT_TASKS, {"tasks": list(tasks)}).fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def running(self, *, expired_at: float | None) -> list[Job]:
        if expired_at is None:
            rows = self._conn.execute(_SQL_ALL_RUNNING).fetchall()
        else:
            rows = self._conn.execute(_SQL_EXPIRED, {"now": expired_at}).fetchall()
        return [job_from_row(r) for r in rows]

    def renew(self, *, owner: str, keys: Collection[AttemptKey], expires: float) -> dict[AttemptKey, bool]:
        keys = [k for k in keys if _storable(k[0])]
        params = {"owner": owner, "expires": expires, "ids": [k[0] for k in keys], "tokens": [k[1] for k in keys]}
        return {(job_id, int(token)): bool(cancel) for job_id, token, cancel in self._conn.execute(_SQL_RENEW, params)}

    def select(
        self, *, states: Collection[JobState], task: str | None, after: int | None, limit: int, tenant: str | None
    ) -> list[Job]:
        if not (_storable(task) and _storable(tenant)):
            return []
        query = _LIST_BASE
        params: dict[str, Any] = {"limit": limit}
        if tenant is not None:
            query += _LIST_TENANT
            params["tenant"] = tenant
        if states:
            query += _LIST_STATES
            params["states"] = [s.value for s in states]
        if task is not None:
            query += _LIST_TASK
            params["task"] = task
        if after is not None:
            query += _LIST_AFTER
            params["after"] = after
        return [job_from_row(r) for r in self._conn.execute(query + _LIST_TAIL, params)]

    def counts(self, *, tenant: str | None) -> Counts:
        if tenant is None:
            return Counts.from_rows(self._conn.execute(_SQL_COUNTS).fetchall())
        if not _storable(tenant):
            return Counts()
        return Counts.from_rows(self._conn.execute(_SQL_TENANT_COUNTS, (tenant,)).fetchall())

    def delete_finished(self, *, before: float, limit: int) -> int:
        return self._conn.execute(_SQL_PRUNE, {"before": before, "batch": limit}).rowcount

    def notify(self) -> None:
        if not self._notified:  # delivered on commit; once per transaction is enough
            self._conn.execute(_SQL_NOTIFY, (CHANNEL, self._sender))
            self._notified = True

    def forget_notify(self) -> None:
        """The NOTIFY sent (if any) was rolled back with a savepoint."""
        self._notified = False


# --------------------------------------------------------------------------- connections

#: Defaults for bounding every wait (seconds).
CONNECT_TIMEOUT = 5
POOL_TIMEOUT = 5.0
STATEMENT_TIMEOUT = 10.0
LISTEN_BACKOFF_MIN = 0.05
LISTEN_BACKOFF_MAX = 5.0
#: How often an instance that is not the metrics reporter tries to become it.
REPORTER_RETRY = 5.0
#: Server-side keepalives of the LISTEN connection: a vanished holder's lock is freed soon.
_SERVER_KEEPALIVES = "-c tcp_keepalives_idle=10 -c tcp_keepalives_interval=5 -c tcp_keepalives_count=3"


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


def _translate(exc: Exception, url: str) -> Exception:
    """The exception a caller sees for ``exc``: StoreUnavailable for connection-level
    psycopg errors, ``exc`` itself for the others."""
    if isinstance(exc, psycopg.errors.UndefinedTable):
        return StoreUnavailable(f"PostgreSQL at {_display(url)} has no jobsvc tables ({exc}); run `jobsvc migrate --db URL`")
    # OperationalError covers lost connections, timeouts (PoolTimeout, QueryCanceled), server
    # shutdown (AdminShutdown), serialization failures and deadlocks; ReadOnlySqlTransaction:
    # connected to a standby after a failover.
    if isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError, psycopg.errors.ReadOnlySqlTransaction)):
        return _unavailable(exc, url)
    return exc


def _guard(url: str, fn: Callable[[], T]) -> T:
    """Run ``fn``; turn connection-level psycopg errors into StoreUnavailable."""
    try:
        return fn()
    except psycopg.Error as exc:
        translated = _translate(exc, url)
        if translated is exc:
            raise
        raise translated from exc


#: A transaction PostgreSQL aborted so that another could go on: running it again is safe.
_RETRYABLE = (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure)


def _retrying(fn: Callable[[], T]) -> T:
    """Run the transaction ``fn`` again (up to TX_RETRIES times in all) while PostgreSQL aborts
    it for a deadlock or a serialization failure: nothing of it was committed."""
    for attempt in range(1, TX_RETRIES + 1):
        try:
            return fn()
        except _RETRYABLE as exc:
            if attempt == TX_RETRIES:
                raise
            log.info("PostgreSQL aborted a transaction (%s); running it again", type(exc).__name__)
    raise AssertionError("unreachable")  # pragma: no cover


#: The errors after which a connection (and so the whole transaction) is gone.
_CONNECTION_ERRORS = (psycopg.OperationalError, psycopg.InterfaceError)


@attrs.define(eq=False)
class _GroupOp:
    """One durable write waiting for (or part of) a group-committed transaction."""

    fn: Callable[[Tx], Any]
    #: set for a plain insert: the inserts of one batch are written by one statement
    jobs: Sequence[Job] | None = None
    done: trio.Event = attrs.field(factory=trio.Event)
    taken: bool = False  #: a batch holds it: it will end committed or failed, not queued
    result: Any = None
    error: BaseException | None = None


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
        fsync_interval: float = 1.0,
    ) -> None:
        self._url = url
        self.fsync_interval = fsync_interval
        self._kwargs = _conn_kwargs(url, connect_timeout=connect_timeout, statement_timeout=statement_timeout)
        self._listen_kwargs = _conn_kwargs(url, connect_timeout=connect_timeout, statement_timeout=None)
        self._listen_kwargs["options"] = f"{self._listen_kwargs['options']} {_SERVER_KEEPALIVES}".strip()
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
        #: this store's NOTIFY payload: its own notifications do not wake its waiters (the
        #: service wakes its claim loop itself for the jobs it makes claimable)
        self.instance = secrets.token_hex(8)
        self.write_transactions = 0  #: see statistics()
        self.synced_write_transactions = 0
        self.write_operations = 0
        #: durable writes waiting for a group commit, and the batches being committed
        self._group: list[_GroupOp] = []
        self._groups_running = 0
        self._group_done = trio.Event()
        #: how many group-committed transactions may run at once (the rest of the pool
        #: serves claims, outcomes and reads)
        self.group_slots = max(1, pool_size // 4)
        self._listen_limiter = trio.CapacityLimiter(1)
        self._listen_conn: psycopg.Connection[Any] | None = None
        self._wake = trio.Event()
        self._pending_wake = False
        self._closed = False
        #: times the listener connected again after losing its connection (for tests/metrics)
        self.listener_reconnects = 0
        #: other instances' notifications received, and the payload of the last one (for
        #: tests/metrics); this store's own come back too and are only counted
        self.notifications_received = 0
        self.own_notifications = 0
        self.last_notification_payload: str | None = None
        #: this instance holds REPORTER_LOCK on its LISTEN connection (see is_reporter)
        self._reporter = False
        #: seconds between two tries to become the reporter while another instance is
        self.reporter_retry = REPORTER_RETRY
        #: a notification was consumed by a query on the LISTEN connection (not by _drain)
        self._notified_meanwhile = False

    # ------------------------------------------------------------------ plumbing

    async def _run(
        self, fn: Callable[[psycopg.Connection[Any]], T], *, durable: bool = True, abandonable: bool = False
    ) -> T:
        """Run ``fn(conn)`` as one transaction in a worker thread (one hop).

        ``abandonable`` lets a cancelled caller return at once while the thread finishes on
        its own (it keeps its limiter token and its connection until then): only for reads
        whose answer nobody needs once the caller has gone, like :meth:`ping`.
        """
        if self._closed:
            raise StoreUnavailable("the PostgreSQL store is closed")
        relaxed = not durable and self.fsync_interval > 0

        def call() -> T:
            def tx() -> T:
                with self._pool.connection() as conn:  # commits, or rolls back on error
                    if relaxed:
                        conn.execute("SET LOCAL synchronous_commit = off")
                    return fn(conn)

            return _guard(self._url, lambda: _retrying(tx))

        return await trio.to_thread.run_sync(call, limiter=self._limiter, abandon_on_cancel=abandonable)

    async def _write(self, fn: Callable[[Tx], T], *, durable: bool = False) -> T:
        if durable:
            return await self._group_write(fn)  # type: ignore[no-any-return]
        self.write_transactions += 1
        self.write_operations += 1
        return await self._run(lambda conn: fn(_PgTx(conn, self.instance)), durable=False)

    # -- group commit (see "Group commit" above)

    async def insert(self, jobs: Sequence[Job]) -> list[InsertResult]:
        if not jobs:
            return []
        return await self._group_write(lambda tx: insert_jobs(tx, jobs), jobs=jobs)  # type: ignore[no-any-return]

    async def _group_write(self, fn: Callable[[Tx], Any], *, jobs: Sequence[Job] | None = None) -> Any:
        if self._closed:
            raise StoreUnavailable("the PostgreSQL store is closed")
        op = _GroupOp(fn, jobs)
        self._group.append(op)
        try:
            while not op.taken:
                if self._groups_running < self.group_slots:
                    await self._commit_group()  # this caller leads the next batch
                else:
                    await self._group_done.wait()
        except BaseException:
            if not op.taken:  # cancelled while queued: nothing of it was written
                self._group.remove(op)
            raise
        with trio.CancelScope(shield=True):  # another caller runs our write: wait for its end
            await op.done.wait()
        if op.error is not None:
            raise op.error
        return op.result

    async def _commit_group(self) -> None:
        batch, self._group[:MAX_GROUP] = self._group[:MAX_GROUP], []
        for op in batch:
            op.taken = True
        self._groups_running += 1
        self.write_transactions += 1
        self.synced_write_transactions += 1
        self.write_operations += len(batch)
        try:
            # not abandonable: a caller that is cancelled meanwhile still gets its answer
            await trio.to_thread.run_sync(self._run_group, batch, limiter=self._limiter)
        finally:
            self._groups_running -= 1
            for op in batch:
                op.done.set()
            self._group_done.set()
            self._group_done = trio.Event()

    def _run_group(self, batch: list[_GroupOp]) -> None:
        """In a worker thread: commit the batch in one transaction. Never raises: each
        operation ends with its result or its error."""
        try:
            _guard(self._url, lambda: _retrying(lambda: self._group_tx(batch)))
        except Exception as exc:  # the transaction failed as a whole: nothing was written
            for op in batch:
                op.result = None
                op.error = StoreUnavailable(str(exc)) if isinstance(exc, StoreUnavailable) else exc

    def _group_tx(self, batch: list[_GroupOp]) -> None:
        try:  # the common case: nothing fails, no savepoints needed
            with self._pool.connection() as conn:
                results = self._run_merged(_PgTx(conn, self.instance), batch)
        except _CONNECTION_ERRORS:
            raise
        except Exception as exc:  # rolled back: run the batch again, each op isolated
            if len(batch) == 1:
                batch[0].result, batch[0].error = None, _translate(exc, self._url)
                return
        else:
            for op, result in zip(batch, results, strict=True):
                op.result, op.error = result, None
            return
        with self._pool.connection() as conn:
            tx = _PgTx(conn, self.instance)
            for op in batch:
                conn.execute("SAVEPOINT op")
                try:
                    op.result, op.error = op.fn(tx), None
                except _CONNECTION_ERRORS:
                    raise
                except Exception as exc:  # noqa: BLE001 - handed to the caller
                    conn.execute("ROLLBACK TO SAVEPOINT op")
                    tx.forget_notify()  # a NOTIFY it sent was rolled back with it
                    op.result, op.error = None, _translate(exc, self._url)
                else:
                    conn.execute("RELEASE SAVEPOINT op")

    @staticmethod
    def _run_merged(tx: _PgTx, batch: list[_GroupOp]) -> list[Any]:
        """Run the batch's operations, the plain inserts first and as one :func:`insert_jobs`
        call (one statement for all their jobs; a job that clashes with one inserted by
        another operation of the batch finds it, as if the operations ran one by one)."""
        inserts = [op.jobs for op in batch if op.jobs is not None]
        merged = iter(insert_jobs(tx, [job for jobs in inserts for job in jobs]) if inserts else [])
        return [[next(merged) for _ in op.jobs] if op.jobs is not None else op.fn(tx) for op in batch]

    def statistics(self) -> dict[str, int]:
        """Write transactions started by this instance (each commits once, unless it fails),
        those of them run with ``synchronous_commit = on`` (group-committed: a client's
        write, and claims, see :meth:`Store.claim`), and the operations they carried."""
        return {"commits": self.write_transactions, "synced_commits": self.synced_write_transactions, "operations": self.write_operations}

    async def _read(self, fn: Callable[[Tx], T]) -> T:
        return await self._run(lambda conn: fn(_PgTx(conn, self.instance)))

    def _connect_listener(self) -> psycopg.Connection[Any]:
        """Blocking: a new autocommit connection that LISTENs on CHANNEL."""

        def connect() -> psycopg.Connection[Any]:
            conn = psycopg.connect(self._url, autocommit=True, **self._listen_kwargs)
            try:
                conn.execute(f"LISTEN {CHANNEL}")
                conn.add_notify_handler(self._on_notify_in_query)
                self._reporter = self._take_reporter_lock(conn)
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

    # ------------------------------------------------------------------ the metrics reporter

    @property
    def is_reporter(self) -> bool:
        """This instance holds the reporter lock (on its LISTEN connection, now open: the
        lock lives and dies with that session; a new connection tries to take it again)."""
        return self._reporter and self._listen_conn is not None and not self._closed

    @staticmethod
    def _take_reporter_lock(conn: psycopg.Connection[Any]) -> bool:
        """Blocking: try to take the session-level reporter lock; True if held."""
        row = conn.execute("SELECT pg_try_advisory_lock(%s)", (REPORTER_LOCK,)).fetchone()
        return bool(row and row[0])

    def _on_notify_in_query(self, notify: psycopg.Notify) -> None:
        """Called (in the query's thread) for a notification read by a query of ours on
        the LISTEN connection: unless it is this store's own, it must still wake the waiters."""
        if notify.payload != self.instance:
            self._notified_meanwhile = True

    async def _try_reporter(self, conn: psycopg.Connection[Any]) -> None:
        """Try to become the reporter on the LISTEN connection (the listen loop is not
        waiting on it meanwhile). Raises psycopg.Error if the connection is broken."""
        self._reporter = await trio.to_thread.run_sync(self._take_reporter_lock, conn, limiter=self._listen_limiter)
        if self._reporter:
            log.info("this instance now reports the store-wide metrics")
        if self._notified_meanwhile:
            self._notified_meanwhile = False
            self._wake_waiters()

    @property
    def listener_pid(self) -> int | None:
        """Backend pid of the LISTEN connection (None while reconnecting)."""
        conn = self._listen_conn
        return None if conn is None or conn.closed else conn.info.backend_pid

    def _close_listener(self) -> None:
        conn, self._listen_conn = self._listen_conn, None  # the reporter lock goes with it
        if conn is not None and not conn.closed:
            try:
                trio.lowlevel.notify_closing(conn.fileno())
            except Exception:  # noqa: BLE001 - the socket may already be gone
                pass
            conn.close()

    def _drain(self, conn: psycopg.Connection[Any]) -> int:
        """Read what the socket holds without blocking; count the other instances'
        notifications. Raises OperationalError when the connection is broken."""
        pgconn = conn.pgconn
        pgconn.consume_input()
        if pgconn.status != pq.ConnStatus.OK:
            raise psycopg.OperationalError("the LISTEN connection is broken")
        count = 0
        while (notify := pgconn.notifies()) is not None:
            payload = notify.extra.decode("utf-8", "replace")
            if payload == self.instance:
                self.own_notifications += 1
                continue
            count += 1
            self.last_notification_payload = payload
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
                if self._reporter:
                    await trio.lowlevel.wait_readable(conn.fileno())
                else:
                    with trio.move_on_after(self.reporter_retry) as timer:
                        await trio.lowlevel.wait_readable(conn.fileno())
                    if timer.cancelled_caught:
                        await self._try_reporter(conn)
                        continue
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

    async def ping(self) -> None:
        """Raise StoreUnavailable unless a pooled connection answers. A caller's deadline
        (``/ready`` gives it 2 s) holds even while the server does not answer at all."""

        def tx(conn: psycopg.Connection[Any]) -> None:
            conn.execute("SELECT 1")

        await self._run(tx, abandonable=True)

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
    fsync_interval: float = 1.0,
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
        fsync_interval=fsync_interval,
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
