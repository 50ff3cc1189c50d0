"""SQLite store: the embedded default.

Theory of operation
-------------------
* WAL journal. One writer connection, driven by one trio task (the *writer*). Every write
  is an operation sent to the writer; the writer takes all operations waiting at that moment
  and runs them in ONE transaction in ONE ``trio.to_thread.run_sync`` hop (group commit),
  each inside its own SAVEPOINT so one failing operation does not undo the others. Callers
  wait for the commit.
* Durability per transaction. A batch holding a *durable* operation (a submission, a
  client's cancel or redrive) commits with ``synchronous=FULL``: on disk, power loss
  included, before anyone is answered. Worker-side batches (claims, outcomes, heartbeats)
  commit with ``synchronous=NORMAL`` (no fsync), and the next batch after
  ``fsync_interval`` seconds (or a checkpoint when idle) makes them durable too: WAL frames
  are sequential, so a synced commit covers every commit before it. A crash of the process
  loses nothing either way; ``fsync_interval=0`` syncs every commit.
* Reads use a small pool of read connections, which WAL lets run beside the writer.
* Claims take due jobs one priority level at a time, each level a range scan of the partial
  index ``jobs_due (priority DESC, run_at, seq)`` that stops at the first job not yet due:
  the cost does not grow with the backlog, nor with jobs scheduled for later. The next due
  time is the first entry of each level. Every index is one more write per claim and per
  outcome, so there are only those the queries use.
* Counts by tenant, task and state: the store is exclusive, so they are counted once when it
  opens (one scan) and then kept in memory, updated with the state changes of every committed
  transaction (each primitive below reports its own): reading them costs nothing, at any
  table size, and no write pays for them.
* An exclusive ``flock`` on ``<db>.lock`` keeps a second jobsvc process off the same file:
  the store is *exclusive*, so at start-up every ``running`` job is an orphan.
* Faults. Before each write batch the writer checks that the database file is still the
  one it opened (same device and inode): a file removed or replaced under a running service
  makes every later write fail (503) with the reason, instead of acknowledging jobs into a
  file nobody will read again. A batch that fails for the database's own reasons (disk
  full, read-only file) marks the store as failing; ``ping`` (``/ready``) then tries a
  real write and stays unavailable until one succeeds. ``journal_size_limit`` keeps the WAL
  file from growing without bound, and a full disk triggers a truncating checkpoint, so the
  space the WAL held is given back once writes can go on.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import sqlite3
from collections import Counter
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import attrs
import trio

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
    update_values,
)
from .base import AttemptKey, ClaimRequest, Counts, Store, Tx

__all__ = ["SCHEMA_VERSION", "SQLiteStore", "open_sqlite_store"]

T = TypeVar("T")
log = logging.getLogger("jobsvc")

#: 1: the jobs table; 2: tenants (a ``tenant`` column, idempotency keys unique per tenant).
SCHEMA_VERSION = 2
#: The most operations one group commit takes.
MAX_BATCH = 512
READERS = 2
BUSY_TIMEOUT_MS = 5000
#: The WAL file is truncated back to this size after a checkpoint.
WAL_SIZE_LIMIT = 64 * 1024 * 1024

_COLS = ", ".join(JOB_FIELDS)
_SELECT = f"SELECT {_COLS} FROM jobs"  # noqa: S608 - constant identifiers only
_IN_CLAIMABLE = f"state IN ({', '.join(repr(s) for s in CLAIMABLE_STATES)})"
_INSERT = f"INSERT OR IGNORE INTO jobs ({', '.join(INSERTED)}) VALUES ({', '.join('?' for _ in INSERTED)})"  # noqa: S608
_UPDATE = (
    f"UPDATE jobs SET {', '.join(f'{c} = ?' for c in WRITABLE)} "  # noqa: S608 - constant identifiers only
    "WHERE id = ? AND state = ? AND lease_token = ? AND cancel_requested = ?"
)
_TOP_LEVEL = f"SELECT priority FROM jobs INDEXED BY jobs_due WHERE {_IN_CLAIMABLE} ORDER BY priority DESC LIMIT 1"  # noqa: S608
_NEXT_LEVEL = f"SELECT priority FROM jobs INDEXED BY jobs_due WHERE {_IN_CLAIMABLE} AND priority < ? ORDER BY priority DESC LIMIT 1"  # noqa: S608
#: A claim, one priority level at a time: the due jobs' seq and state (for the counts) in
#: claim order, then one UPDATE writing them as :func:`jobsvc.models.claim` would (its SQL
#: form, held to it by the store contract suite), RETURNING them in no particular order.
_CLAIM_FIND = f"SELECT seq, state FROM jobs INDEXED BY jobs_due WHERE {_IN_CLAIMABLE} AND priority = ? AND run_at <= ?"  # noqa: S608
_CLAIM_WRITE = (
    f"UPDATE jobs SET {CLAIM_SET}, "  # noqa: S608 - constant identifiers only
    "lease_owner = ?, lease_expires_at = ?, updated_at = ? WHERE seq IN (SELECT value FROM json_each(?)) "
    f"RETURNING {_COLS}"
)
_FIRST_AT_LEVEL = f"SELECT run_at FROM jobs INDEXED BY jobs_due WHERE {_IN_CLAIMABLE} AND priority = ?"  # noqa: S608
_RENEW = "UPDATE jobs SET lease_expires_at = ? WHERE id = ? AND state = 'running' AND lease_token = ? AND lease_owner = ? RETURNING cancel_requested"
_DELETE_FINISHED = (
    "DELETE FROM jobs WHERE seq IN (SELECT seq FROM jobs INDEXED BY jobs_finished "  # noqa: S608 - constant
    f"WHERE finished_at < ? AND state IN ({', '.join(repr(s) for s in FINAL_STATES)}) LIMIT ?) "
    "RETURNING tenant, task, state"
)
#: A job holding an id, or else an idempotency key in a tenant (the id first).
_EXISTING = f"{_SELECT} WHERE id = ? OR (idempotency_key = ? AND tenant = ?) ORDER BY id = ? DESC LIMIT 1"  # noqa: S608
#: The partial tenant indexes hold tenants' jobs only (a service without tenants pays nothing
#: for them); a query names their condition word for word, so SQLite knows it may use them.
_IS_TENANT = "tenant <> ''"

_TABLE = """
CREATE TABLE IF NOT EXISTS {name} (
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
    idempotency_key  TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    tenant           TEXT    NOT NULL DEFAULT '',
    fingerprint      TEXT    NOT NULL DEFAULT '',
    lease_owner      TEXT,
    lease_token      INTEGER NOT NULL DEFAULT 0,
    lease_expires_at REAL
);
"""
SCHEMA = (
    _TABLE.format(name="jobs")
    + """
CREATE INDEX IF NOT EXISTS jobs_due ON jobs (priority DESC, run_at, seq)
    WHERE state IN ('pending', 'retrying');
CREATE INDEX IF NOT EXISTS jobs_state_seq ON jobs (state, seq);
CREATE INDEX IF NOT EXISTS jobs_task_seq ON jobs (task, seq);
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL;
CREATE UNIQUE INDEX IF NOT EXISTS jobs_idempotency ON jobs (tenant, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_tenant_seq ON jobs (tenant, seq) WHERE tenant <> '';
CREATE INDEX IF NOT EXISTS jobs_tenant_state_seq ON jobs (tenant, state, seq) WHERE tenant <> '';
DROP INDEX IF EXISTS jobs_running;
CREATE TABLE IF NOT EXISTS jobsvc_health (id INTEGER PRIMARY KEY CHECK (id = 1), probes INTEGER NOT NULL);
"""
)
#: Schema 1 -> 2. SQLite cannot drop the column constraint ``idempotency_key UNIQUE``, so the
#: table is rebuilt (SQLite's documented way to change a table): a copy in one transaction,
#: keeping every row's seq and the AUTOINCREMENT counter (seqs are cursors clients hold).
_COPY_V1_TO_V2 = """
INSERT INTO jobs_v2 (
    seq, id, task, state, payload, priority, attempts, max_attempts, rescues, timeout, run_at, created_at,
    updated_at, finished_at, result, errors, idempotency_key, cancel_requested, fingerprint, lease_owner,
    lease_token, lease_expires_at, tenant)
SELECT
    seq, id, task, state, payload, priority, attempts, max_attempts, rescues, timeout, run_at, created_at,
    updated_at, finished_at, result, errors, idempotency_key, cancel_requested, fingerprint, lease_owner,
    lease_token, lease_expires_at, ''
FROM jobs;
INSERT INTO sqlite_sequence (name, seq) SELECT 'jobs_v2', max(
    coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'jobs'), 0),
    coalesce((SELECT max(seq) FROM jobs_v2), 0));
DELETE FROM sqlite_sequence WHERE name = 'jobs_v2' AND rowid NOT IN (SELECT max(rowid) FROM sqlite_sequence WHERE name = 'jobs_v2');
DROP TABLE jobs;
ALTER TABLE jobs_v2 RENAME TO jobs;
"""
_UPGRADE_1_TO_2 = _TABLE.format(name="jobs_v2") + _COPY_V1_TO_V2  # noqa: S608 - constant identifiers only


def _counts_of(counts: Deltas, tenant: str | None) -> Counts:
    return Counts.from_rows([(task, state.value, n) for (owner, task, state), n in counts.items() if tenant is None or owner == tenant])


def _unavailable(exc: Exception) -> StoreUnavailable:
    return StoreUnavailable(f"the SQLite database is unavailable ({exc}); retry later")


#: (tenant, task, state) -> change in the number of jobs
Deltas = Counter[tuple[str | None, str, JobState]]


class _SQLiteTx:
    """The dialect: each primitive is a few statements on one connection, and notes the
    change it made to the counts in ``deltas``."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self.deltas: Deltas = Counter()

    def take_deltas(self) -> Deltas:
        deltas, self.deltas = self.deltas, Counter()
        return deltas

    def insert(self, jobs: Sequence[Job]) -> list[Job | None]:
        stored: list[Job | None] = []
        for job in jobs:
            cur = self._conn.execute(_INSERT, insert_values(job))
            if cur.rowcount == 1:
                stored.append(attrs.evolve(job, seq=int(cur.lastrowid or 0)))
                self.deltas[(job.tenant, job.task, job.state)] += 1
            else:
                stored.append(None)
        return stored

    def existing(self, jobs: Sequence[Job]) -> list[Job | None]:
        found: list[Job | None] = []
        for job in jobs:
            row = self._conn.execute(_EXISTING, (job.id, job.idempotency_key, job.tenant or "", job.id)).fetchone()
            found.append(None if row is None else job_from_row(row))
        return found

    def get(self, job_id: str, *, lock: bool = False) -> Job | None:
        row = self._conn.execute(f"{_SELECT} WHERE id = ?", (job_id,)).fetchone()  # noqa: S608
        return None if row is None else job_from_row(row)

    def update(self, pairs: Sequence[tuple[Job, Job]]) -> list[bool]:
        written = []
        for new, expected in pairs:
            ok = self._conn.execute(_UPDATE, update_values(new, expected)).rowcount == 1
            if ok and new.state is not expected.state:
                self.deltas[(expected.tenant, expected.task, expected.state)] -= 1
                self.deltas[(new.tenant, new.task, new.state)] += 1
            written.append(ok)
        return written

    @staticmethod
    def _task_filter(tasks: Collection[str]) -> str:
        return f" AND task IN ({', '.join('?' for _ in tasks)})"

    def claim(self, request: ClaimRequest) -> list[Job]:
        if request.tasks is not None and not request.tasks:
            return []
        names = tuple(request.tasks or ())
        find = _CLAIM_FIND + (self._task_filter(names) if request.tasks is not None else "") + " ORDER BY run_at, seq LIMIT ?"
        write = (request.owner, request.now + request.lease, request.now)
        claimed: list[Job] = []
        level = self._conn.execute(_TOP_LEVEL).fetchone()
        while level is not None and len(claimed) < request.limit:
            was = dict(self._conn.execute(find, (level[0], request.now, *names, request.limit - len(claimed))).fetchall())
            if was:
                rows = self._conn.execute(_CLAIM_WRITE, (*write, json.dumps(list(was)))).fetchall()
                found = sorted(map(job_from_row, rows), key=in_level_order)
                for job in found:
                    self.deltas[(job.tenant, job.task, JobState(was[job.seq]))] -= 1
                    self.deltas[(job.tenant, job.task, job.state)] += 1
                claimed.extend(found)
            if len(claimed) < request.limit:
                level = self._conn.execute(_NEXT_LEVEL, level).fetchone()
        return claimed

    def next_run_at(self, *, tasks: Collection[str] | None) -> float | None:
        """The smallest of each priority level's first run_at (jobs_due is ordered by run_at
        within a level): a probe per level, whatever the number of jobs."""
        if tasks is not None and not tasks:
            return None
        names = tuple(tasks or ())
        sql = _FIRST_AT_LEVEL + (self._task_filter(names) if tasks is not None else "") + " ORDER BY run_at LIMIT 1"
        earliest: float | None = None
        level = self._conn.execute(_TOP_LEVEL).fetchone()
        while level is not None:
            row = self._conn.execute(sql, (level[0], *names)).fetchone()
            if row is not None and (earliest is None or row[0] < earliest):
                earliest = float(row[0])
            level = self._conn.execute(_NEXT_LEVEL, level).fetchone()
        return earliest

    def running(self, *, expired_at: float | None) -> list[Job]:
        if expired_at is None:
            rows = self._conn.execute(f"{_SELECT} WHERE state = 'running' ORDER BY seq").fetchall()  # noqa: S608
        else:
            rows = self._conn.execute(f"{_SELECT} WHERE state = 'running' AND lease_expires_at <= ? ORDER BY seq", (expired_at,)).fetchall()  # noqa: S608
        return [job_from_row(r) for r in rows]

    def renew(self, *, owner: str, keys: Collection[AttemptKey], expires: float) -> dict[AttemptKey, bool]:
        renewed = {}
        for job_id, token in keys:
            row = self._conn.execute(_RENEW, (expires, job_id, token, owner)).fetchone()
            if row is not None:
                renewed[(job_id, token)] = bool(row[0])
        return renewed

    def select(
        self, *, states: Collection[JobState], task: str | None, after: int | None, limit: int, tenant: str | None
    ) -> list[Job]:
        where: list[str] = ["seq > ?"]
        args: list[object] = [after or 0]
        if tenant is not None:
            where.append(f"tenant = ? AND {_IS_TENANT}")
            args.append(tenant)
        if states:
            where.append(f"state IN ({', '.join('?' for _ in states)})")
            args.extend(s.value for s in states)
        if task is not None:
            where.append("task = ?")
            args.append(task)
        sql = f"{_SELECT} WHERE {' AND '.join(where)} ORDER BY seq LIMIT ?"  # noqa: S608 - placeholders only
        return [job_from_row(r) for r in self._conn.execute(sql, (*args, limit))]

    def count_rows(self) -> Deltas:
        """A count of every row (one scan: the store opening); the store keeps them after."""
        rows = self._conn.execute("SELECT tenant, task, state, count(*) FROM jobs GROUP BY tenant, task, state")
        return Counter({(tenant or None, task, JobState(state)): n for tenant, task, state, n in rows})

    def counts(self, *, tenant: str | None) -> Counts:
        return _counts_of(self.count_rows(), tenant)

    def delete_finished(self, *, before: float, limit: int) -> int:
        deleted = self._conn.execute(_DELETE_FINISHED, (before, limit)).fetchall()
        for tenant, task, state in deleted:
            self.deltas[(tenant or None, task, JobState(state))] -= 1
        return len(deleted)

    def notify(self) -> None:
        pass

    def probe(self) -> None:
        """A real (tiny) write, for readiness while writes are failing."""
        self._conn.execute("INSERT INTO jobsvc_health (id, probes) VALUES (1, 1) ON CONFLICT (id) DO UPDATE SET probes = probes + 1")


class _BatchLost(Exception):
    """SQLite ended the batch's transaction itself, for this reason."""

    def __init__(self, cause: Exception) -> None:
        super().__init__(str(cause))
        self.cause = cause


def _probe(tx: Tx) -> None:
    assert isinstance(tx, _SQLiteTx)
    tx.probe()


@attrs.define
class _Op:
    fn: Callable[[Tx], Any]
    durable: bool
    done: trio.Event = attrs.field(factory=trio.Event)
    result: Any = None
    error: BaseException | None = None
    deltas: Deltas | None = None  #: its change to the counts, once committed


def _connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
    return conn


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


class SQLiteStore(Store):
    kind = "sqlite"
    exclusive = True

    def __init__(
        self,
        path: str,
        writer: sqlite3.Connection,
        readers: list[sqlite3.Connection],
        *,
        counts: Deltas | None = None,
        fsync_interval: float = 1.0,
    ) -> None:
        self.path = path
        self._identity = _identity(path)
        #: why writes can never succeed again in this process (the file was removed or replaced)
        self.broken: str | None = None
        #: the last write batch failed for the database's own reasons (disk full, read-only...)
        self.write_error: str | None = None
        self._failed_batches = 0  #: batches failed since writes last worked
        self._counts: Deltas = Counter(counts or {})
        self.fsync_interval = fsync_interval
        self._writer = writer
        self._readers = readers
        self._read_limiter = trio.CapacityLimiter(len(readers))
        self._write_limiter = trio.CapacityLimiter(1)
        self._send, self._receive = trio.open_memory_channel[_Op](float("inf"))
        self._synchronous = "FULL"
        #: trio time of the first commit not yet synced to disk (None: everything is synced)
        self._unsynced_since: float | None = None
        #: Group-commit statistics (benchmarks and tests): transactions, operations, syncs.
        self.commits = 0
        self.operations = 0
        self.synced_commits = 0

    # -- plumbing ---------------------------------------------------------------------

    async def _write(self, fn: Callable[[Tx], T], *, durable: bool = False) -> T:
        op = _Op(fn, durable)
        try:
            self._send.send_nowait(op)
        except trio.ClosedResourceError:
            raise StoreUnavailable("the store is closed") from None
        await op.done.wait()
        if op.error is not None:
            raise op.error
        return op.result  # type: ignore[no-any-return]

    def _sync_due(self) -> bool:
        return self._unsynced_since is not None and trio.current_time() - self._unsynced_since >= self.fsync_interval

    async def run_writer(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The writer task: group-commits whatever operations are waiting; makes worker-side
        commits durable within ``fsync_interval`` (a checkpoint when nothing else comes)."""
        task_status.started()
        async with self._receive:
            while True:
                op: _Op | None = None
                try:
                    if self._unsynced_since is None:
                        op = await self._receive.receive()
                    else:
                        with trio.move_on_at(self._unsynced_since + self.fsync_interval):
                            op = await self._receive.receive()
                except trio.EndOfChannel:
                    return  # closed and drained (closing the connection syncs the rest)
                if op is None:  # idle past the interval: sync what is committed
                    synced = await trio.to_thread.run_sync(self._checkpoint, limiter=self._write_limiter)
                    self._unsynced_since = None if synced else trio.current_time()  # else: try again later
                    continue
                batch = [op]
                while len(batch) < MAX_BATCH:
                    try:
                        batch.append(self._receive.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                durable = self.fsync_interval <= 0 or any(o.durable for o in batch) or self._sync_due()
                try:
                    committed = await trio.to_thread.run_sync(self._run_batch, batch, durable, limiter=self._write_limiter)
                except BaseException:  # pragma: no cover - a bug in _run_batch
                    for failed in batch:
                        failed.error = failed.error or StoreUnavailable("the store writer failed")
                    raise
                finally:
                    for done in batch:
                        done.done.set()
                if committed:
                    for done in batch:
                        if done.deltas:
                            self._counts.update(done.deltas)
                    if durable:
                        self._unsynced_since = None
                    elif self._unsynced_since is None:
                        self._unsynced_since = trio.current_time()

    def _checkpoint(self) -> bool:
        """With synchronous=NORMAL, SQLite syncs the WAL before a checkpoint: every commit
        is durable afterwards (and the WAL is copied back into the database)."""
        try:
            self._writer.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error:
            return False
        return True

    def _run_batch(self, batch: list[_Op], durable: bool) -> bool:
        """Run the batch in one transaction; True when it committed."""
        conn = self._writer
        mode = "FULL" if durable else "NORMAL"
        if self.broken is None and _identity(self.path) != self._identity:
            self.broken = (
                f"the database file {self.path!r} was removed or replaced while jobsvc was running; "
                "jobs written now would be lost: restart jobsvc"
            )
            log.error("%s", self.broken)
        if self.broken is not None:
            for op in batch:
                op.error = StoreUnavailable(self.broken)
            return False
        try:
            if mode != self._synchronous:
                conn.execute(f"PRAGMA synchronous = {mode}")
                self._synchronous = mode
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            self._failed(exc)
            for op in batch:
                op.error = _unavailable(exc)
            return False
        tx = _SQLiteTx(conn)
        try:
            for op in batch:
                conn.execute("SAVEPOINT op")
                try:
                    op.result = op.fn(tx)
                    op.deltas = tx.take_deltas()
                except Exception as exc:  # noqa: BLE001 - handed to the caller
                    op.error = _unavailable(exc) if isinstance(exc, sqlite3.OperationalError) else exc
                    tx.take_deltas()
                    if not conn.in_transaction:  # SQLite rolled the whole batch back (disk full...)
                        raise _BatchLost(exc) from exc
                    conn.execute("ROLLBACK TO op")
                conn.execute("RELEASE op")
            conn.execute("COMMIT")
        except (sqlite3.Error, _BatchLost) as caught:
            # SQLite may have rolled the whole transaction back itself (disk full, I/O
            # error): then nothing of this batch is committed, whatever each op returned.
            cause = caught.cause if isinstance(caught, _BatchLost) else caught
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:  # pragma: no cover - nothing left to undo
                pass
            self._failed(cause)
            for op in batch:
                op.error = _unavailable(cause)
                op.deltas = None
            return False
        if self.write_error is not None:
            log.warning("SQLite writes work again (%d failed batch(es) since: %s)", self._failed_batches, self.write_error)
        self.write_error = None
        self._failed_batches = 0
        self.commits += 1
        self.operations += len(batch)
        self.synced_commits += durable
        return True

    def _failed(self, exc: Exception) -> None:
        """A batch failed for the database's own reasons: remember it (readiness), and on a
        full disk give back the space the WAL holds, so writes can go on once there is room."""
        # Logged when writes start failing (or fail differently), not at every batch: a
        # full disk under load would write a line per request. /ready and
        # jobsvc_store_errors_total say it goes on; the line above says when it ends.
        if self.write_error != str(exc):
            log.warning("SQLite writes are failing: %s", exc)
        self.write_error = str(exc)
        self._failed_batches += 1
        if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "full" in str(exc):
            try:
                self._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:
                pass

    async def _read(self, fn: Callable[[Tx], T]) -> T:
        async with self._read_limiter:
            conn = self._readers.pop()
            try:
                return await trio.to_thread.run_sync(self._run_read, fn, conn)
            finally:
                self._readers.append(conn)

    @staticmethod
    def _run_read(fn: Callable[[Tx], T], conn: sqlite3.Connection) -> T:
        try:
            conn.execute("BEGIN")  # one snapshot for the whole read
            try:
                return fn(_SQLiteTx(conn))
            finally:
                conn.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            raise _unavailable(exc) from None

    def statistics(self) -> dict[str, int]:
        return {"commits": self.commits, "synced_commits": self.synced_commits, "operations": self.operations}

    async def counts(self, *, tenant: str | None = None) -> Counts:
        """Kept in memory (see the module docstring): no I/O."""
        await trio.lowlevel.checkpoint()
        return _counts_of(self._counts, tenant)

    async def ping(self) -> None:
        """Unavailable when the file was removed or replaced, or when writes are failing (a
        real write is tried then, so readiness comes back as soon as writes do)."""
        if self.broken is not None:
            raise StoreUnavailable(self.broken)
        if self.write_error is not None:
            await self._write(_probe, durable=True)
        await self._read(lambda tx: None)

    async def aclose(self) -> None:
        self._send.close()


def _open_files(path: str) -> tuple[int, sqlite3.Connection, list[sqlite3.Connection], Deltas]:
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ConfigError(f"cannot open the SQLite database {path!r}: directory {directory!r} does not exist")
    try:
        lock_fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise ConfigError(f"cannot open the SQLite database {path!r}: cannot create its lock file {path + '.lock'!r}: {exc.strerror}") from None
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(lock_fd)
        raise ConfigError(
            f"another jobsvc process is using {path!r} (it holds {path + '.lock'}); "
            "SQLite serves one process: use PostgreSQL to run several instances"
        ) from None
    try:
        writer = _connect(path)
        mode = writer.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":  # pragma: no cover - only on filesystems without shared memory
            raise ConfigError(f"SQLite refused WAL mode for {path!r} (got {mode!r})")
        _migrate(writer, path)
        counts = _SQLiteTx(writer).count_rows()
        readers = [_connect(path) for _ in range(READERS)]
    except sqlite3.Error as exc:
        os.close(lock_fd)
        raise ConfigError(f"cannot open the SQLite database {path!r}: {exc}") from None
    except BaseException:
        os.close(lock_fd)
        raise
    return lock_fd, writer, readers, counts


def _migrate(conn: sqlite3.Connection, path: str) -> None:
    """Create the schema, or bring an older one up to SCHEMA_VERSION, in one transaction."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise ConfigError(f"{path!r} has schema version {version}, newer than this jobsvc ({SCHEMA_VERSION}); upgrade jobsvc")
    has_jobs = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'jobs'").fetchone() is not None
    upgrade = _UPGRADE_1_TO_2 if has_jobs and version < 2 else ""
    if upgrade:
        log.info("upgrading the SQLite schema of %s from version %d to %d (tenants)", path, version, SCHEMA_VERSION)
    conn.executescript(f"BEGIN IMMEDIATE;\n{upgrade}\n{SCHEMA}\nPRAGMA user_version = {SCHEMA_VERSION};\nCOMMIT;")


@asynccontextmanager
async def open_sqlite_store(path: str, *, fsync_interval: float = 1.0) -> AsyncIterator[SQLiteStore]:
    lock_fd, writer, readers, counts = await trio.to_thread.run_sync(_open_files, path)
    try:
        store = SQLiteStore(path, writer, readers, counts=counts, fsync_interval=fsync_interval)
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run_writer)
            try:
                yield store
            finally:
                await store.aclose()  # the writer drains what was sent, syncs, then ends
    finally:
        for conn in (writer, *readers):
            conn.close()
        os.close(lock_fd)
