"""SQLite store: the embedded default.

* WAL journal with ``synchronous=FULL``: a commit survives a power loss, not only a crash.
* One writer connection, driven by one trio task (the *writer*). Every write is an
  operation sent to the writer; the writer takes all operations waiting at that moment and
  runs them in ONE transaction in ONE ``trio.to_thread.run_sync`` hop (group commit), each
  inside its own SAVEPOINT so one failing operation does not undo the others. Callers wait
  for the commit, so a submission is answered only once its job is on disk.
* Reads use a small pool of read connections, which WAL lets run beside the writer.
* An exclusive ``flock`` on ``<db>.lock`` keeps a second jobsvc process off the same file:
  the store is *exclusive*, so at start-up every ``running`` job is an orphan.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import attrs
import trio

from .. import models
from ..errors import ConfigError, JobNotFound, StoreUnavailable
from ..models import Job, JobState
from ._rows import COLUMNS, MUTABLE, from_row, to_row
from .base import InsertResult, Store, check_conflicts

__all__ = ["SQLiteStore", "open_sqlite_store"]

T = TypeVar("T")

SCHEMA_VERSION = 1
#: The most operations one group commit takes.
MAX_BATCH = 512
READERS = 2
BUSY_TIMEOUT_MS = 5000

_CLAIMABLE = tuple(sorted(s.value for s in models.sources(models.Event.CLAIM)))
_COLS = ", ".join(COLUMNS)
_SELECT = f"SELECT {_COLS} FROM jobs"  # noqa: S608 - constant identifiers only
_INSERT = f"INSERT OR IGNORE INTO jobs ({', '.join(c for c in COLUMNS if c != 'seq')}) VALUES ({', '.join('?' for c in COLUMNS if c != 'seq')})"  # noqa: S608
_UPDATE = f"UPDATE jobs SET {', '.join(f'{c} = ?' for c in MUTABLE)} WHERE id = ? AND state = ? AND lease_token = ?"  # noqa: S608
_IN_CLAIMABLE = f"state IN ({', '.join('?' for _ in _CLAIMABLE)})"

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    id               TEXT    NOT NULL UNIQUE,
    task             TEXT    NOT NULL,
    payload          TEXT    NOT NULL,
    state            TEXT    NOT NULL,
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
    fingerprint      TEXT    NOT NULL DEFAULT '',
    lease_owner      TEXT,
    lease_token      INTEGER NOT NULL DEFAULT 0,
    lease_expires_at REAL,
    cancel_requested INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_due ON jobs (priority DESC, run_at, seq)
    WHERE state IN ('pending', 'retrying');
CREATE INDEX IF NOT EXISTS jobs_state_seq ON jobs (state, seq);
CREATE INDEX IF NOT EXISTS jobs_task_seq ON jobs (task, seq);
CREATE INDEX IF NOT EXISTS jobs_running ON jobs (lease_owner) WHERE state = 'running';
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL;
"""


def _values(job: Job) -> tuple[Any, ...]:
    row = to_row(job)
    return tuple(int(row[c]) if c == "cancel_requested" else row[c] for c in COLUMNS if c != "seq")


def _update_args(new: Job, expected: Job) -> tuple[Any, ...]:
    row = to_row(new)
    return (
        *(int(row[c]) if c == "cancel_requested" else row[c] for c in MUTABLE),
        expected.id,
        expected.state.value,
        expected.lease_token,
    )


def _unavailable(exc: sqlite3.Error) -> StoreUnavailable:
    return StoreUnavailable(f"the SQLite database is unavailable ({exc}); retry later")


@attrs.define
class _Op:
    fn: Callable[[sqlite3.Connection], Any]
    done: trio.Event = attrs.field(factory=trio.Event)
    result: Any = None
    error: BaseException | None = None


def _connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA synchronous = FULL")
    return conn


class SQLiteStore(Store):
    kind = "sqlite"
    exclusive = True

    def __init__(self, path: str, writer: sqlite3.Connection, readers: list[sqlite3.Connection]) -> None:
        self.path = path
        self._writer = writer
        self._readers = readers
        self._read_limiter = trio.CapacityLimiter(len(readers))
        self._write_limiter = trio.CapacityLimiter(1)
        self._send, self._receive = trio.open_memory_channel[_Op](float("inf"))
        #: Group-commit statistics: transactions and operations (for benchmarks and tests).
        self.commits = 0
        self.operations = 0

    # -- plumbing ---------------------------------------------------------------------

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        op = _Op(fn)
        try:
            self._send.send_nowait(op)
        except trio.ClosedResourceError:
            raise StoreUnavailable("the store is closed") from None
        await op.done.wait()
        if op.error is not None:
            raise op.error
        return op.result  # type: ignore[no-any-return]

    async def run_writer(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The writer task: group-commits whatever operations are waiting."""
        task_status.started()
        async with self._receive:
            async for op in self._receive:
                batch = [op]
                while len(batch) < MAX_BATCH:
                    try:
                        batch.append(self._receive.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                try:
                    await trio.to_thread.run_sync(self._run_batch, batch, limiter=self._write_limiter)
                except BaseException:  # pragma: no cover - a bug in _run_batch
                    for failed in batch:
                        failed.error = failed.error or StoreUnavailable("the store writer failed")
                    raise
                finally:
                    for done in batch:
                        done.done.set()

    def _run_batch(self, batch: list[_Op]) -> None:
        conn = self._writer
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            for op in batch:
                op.error = _unavailable(exc)
            return
        try:
            for op in batch:
                conn.execute("SAVEPOINT op")
                try:
                    op.result = op.fn(conn)
                except sqlite3.OperationalError as exc:
                    op.error = _unavailable(exc)
                    conn.execute("ROLLBACK TO op")
                except Exception as exc:  # noqa: BLE001 - handed to the caller
                    op.error = exc
                    conn.execute("ROLLBACK TO op")
                conn.execute("RELEASE op")
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            # SQLite may have rolled the whole transaction back itself (disk full, I/O
            # error): then nothing of this batch is committed, whatever each op returned.
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:  # pragma: no cover - nothing left to undo
                pass
            for op in batch:
                op.error = _unavailable(exc)
            return
        self.commits += 1
        self.operations += len(batch)

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        async with self._read_limiter:
            conn = self._readers.pop()
            try:
                return await trio.to_thread.run_sync(self._run_read, fn, conn)
            finally:
                self._readers.append(conn)

    @staticmethod
    def _run_read(fn: Callable[[sqlite3.Connection], T], conn: sqlite3.Connection) -> T:
        try:
            return fn(conn)
        except sqlite3.OperationalError as exc:
            raise _unavailable(exc) from None

    # -- the contract -----------------------------------------------------------------

    async def insert(self, jobs: Sequence[Job]) -> list[InsertResult]:
        def run(conn: sqlite3.Connection) -> list[InsertResult]:
            results = []
            for job in jobs:
                cur = conn.execute(_INSERT, _values(job))
                if cur.rowcount == 1:
                    results.append(InsertResult(attrs.evolve(job, seq=int(cur.lastrowid or 0)), created=True))
                    continue
                row = conn.execute(f"{_SELECT} WHERE id = ? OR idempotency_key = ? ORDER BY id = ? DESC LIMIT 1", (job.id, job.idempotency_key, job.id)).fetchone()  # noqa: S608
                results.append(InsertResult(from_row(row), created=False))
            check_conflicts(jobs, results)  # raising rolls this operation back
            return results

        return await self._write(run)

    async def get(self, job_id: str) -> Job | None:
        def run(conn: sqlite3.Connection) -> Job | None:
            row = conn.execute(f"{_SELECT} WHERE id = ?", (job_id,)).fetchone()  # noqa: S608
            return None if row is None else from_row(row)

        return await self._read(run)

    async def list_jobs(
        self,
        *,
        states: Collection[JobState] = (),
        task: str | None = None,
        after: int | None = None,
        limit: int = 100,
    ) -> list[Job]:
        where: list[str] = ["seq > ?"]
        args: list[object] = [after or 0]
        if states:
            where.append(f"state IN ({', '.join('?' for _ in states)})")
            args.extend(s.value for s in states)
        if task is not None:
            where.append("task = ?")
            args.append(task)
        sql = f"{_SELECT} WHERE {' AND '.join(where)} ORDER BY seq LIMIT ?"  # noqa: S608 - placeholders only

        def run(conn: sqlite3.Connection) -> list[Job]:
            return [from_row(r) for r in conn.execute(sql, (*args, limit))]

        return await self._read(run)

    @staticmethod
    def _task_filter(tasks: Collection[str] | None) -> tuple[str, tuple[str, ...]]:
        if tasks is None:
            return "", ()
        names = tuple(tasks)
        return f" AND task IN ({', '.join('?' for _ in names) or 'NULL'})", names

    async def claim_due(
        self,
        *,
        owner: str,
        now: float,
        lease: float,
        limit: int,
        tasks: Collection[str] | None = None,
    ) -> list[Job]:
        task_sql, task_args = self._task_filter(tasks)
        sql = (
            f"{_SELECT} WHERE {_IN_CLAIMABLE} AND run_at <= ?{task_sql} "  # noqa: S608
            "ORDER BY priority DESC, run_at, seq LIMIT ?"
        )

        def run(conn: sqlite3.Connection) -> list[Job]:
            claimed = []
            for row in conn.execute(sql, (*_CLAIMABLE, now, *task_args, limit)).fetchall():
                job = from_row(row)
                new = models.claim(job, owner=owner, now=now, lease=lease)
                conn.execute(_UPDATE, _update_args(new, job))
                claimed.append(new)
            return claimed

        return await self._write(run)

    async def claim(self, job_id: str, *, owner: str, now: float, lease: float) -> Job | None:
        def run(conn: sqlite3.Connection) -> Job | None:
            row = conn.execute(f"{_SELECT} WHERE id = ? AND {_IN_CLAIMABLE} AND run_at <= ?", (job_id, *_CLAIMABLE, now)).fetchone()  # noqa: S608
            if row is None:
                return None
            job = from_row(row)
            new = models.claim(job, owner=owner, now=now, lease=lease)
            conn.execute(_UPDATE, _update_args(new, job))
            return new

        return await self._write(run)

    async def save(self, new: Job, *, expected: Job) -> bool:
        def run(conn: sqlite3.Connection) -> bool:
            return conn.execute(_UPDATE, _update_args(new, expected)).rowcount == 1

        return await self._write(run)

    async def modify(self, job_id: str, change: Callable[[Job], Job]) -> Job:
        def run(conn: sqlite3.Connection) -> Job:
            row = conn.execute(f"{_SELECT} WHERE id = ?", (job_id,)).fetchone()  # noqa: S608
            if row is None:
                raise JobNotFound(f"no job has the id {job_id!r}")
            job = from_row(row)
            new = change(job)
            if new is not job:
                conn.execute(_UPDATE, _update_args(new, job))
            return new

        return await self._write(run)

    async def heartbeat(self, *, owner: str, now: float, lease: float, job_ids: Collection[str]) -> dict[str, bool]:
        ids = list(job_ids)
        if not ids:
            return {}

        def run(conn: sqlite3.Connection) -> dict[str, bool]:
            rows = conn.execute(
                "UPDATE jobs SET lease_expires_at = ? WHERE state = 'running' AND lease_owner = ? "
                "AND id IN (SELECT value FROM json_each(?)) RETURNING id, cancel_requested",
                (now + lease, owner, json.dumps(ids)),
            ).fetchall()
            return {job_id: bool(cancel) for job_id, cancel in rows}

        return await self._write(run)

    async def rescue(self, *, now: float, max_rescues: int, expired_only: bool = True) -> list[Job]:
        sql = f"{_SELECT} WHERE state = 'running'" + (" AND lease_expires_at <= ?" if expired_only else "")  # noqa: S608
        args = (now,) if expired_only else ()

        def run(conn: sqlite3.Connection) -> list[Job]:
            rescued = []
            for row in conn.execute(sql, args).fetchall():
                job = from_row(row)
                new = models.rescue(job, now=now, max_rescues=max_rescues)
                conn.execute(_UPDATE, _update_args(new, job))
                rescued.append(new)
            return rescued

        return await self._write(run)

    async def next_run_at(self, *, tasks: Collection[str] | None = None) -> float | None:
        task_sql, task_args = self._task_filter(tasks)
        sql = f"SELECT min(run_at) FROM jobs WHERE {_IN_CLAIMABLE}{task_sql}"  # noqa: S608

        def run(conn: sqlite3.Connection) -> float | None:
            value = conn.execute(sql, (*_CLAIMABLE, *task_args)).fetchone()[0]
            return None if value is None else float(value)

        return await self._read(run)

    async def count_by_state(self) -> dict[JobState, int]:
        def run(conn: sqlite3.Connection) -> dict[JobState, int]:
            counts = dict.fromkeys(JobState, 0)
            for state, n in conn.execute("SELECT state, count(*) FROM jobs GROUP BY state"):
                counts[JobState(state)] = n
            return counts

        return await self._read(run)

    async def prune(self, *, finished_before: float) -> int:
        finals = tuple(s.value for s in models.FINAL_STATES)
        sql = f"DELETE FROM jobs WHERE finished_at < ? AND state IN ({', '.join('?' for _ in finals)})"  # noqa: S608

        def run(conn: sqlite3.Connection) -> int:
            return conn.execute(sql, (finished_before, *finals)).rowcount

        return await self._write(run)

    async def aclose(self) -> None:
        self._send.close()


def _open_files(path: str) -> tuple[int, sqlite3.Connection, list[sqlite3.Connection]]:
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ConfigError(f"cannot open the SQLite database {path!r}: directory {directory!r} does not exist")
    lock_fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
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
        version = writer.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise ConfigError(f"{path!r} has schema version {version}, newer than this jobsvc ({SCHEMA_VERSION}); upgrade jobsvc")
        writer.executescript(SCHEMA)
        writer.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        readers = [_connect(path) for _ in range(READERS)]
    except sqlite3.Error as exc:
        os.close(lock_fd)
        raise ConfigError(f"cannot open the SQLite database {path!r}: {exc}") from None
    except BaseException:
        os.close(lock_fd)
        raise
    return lock_fd, writer, readers


@asynccontextmanager
async def open_sqlite_store(path: str) -> AsyncIterator[SQLiteStore]:
    lock_fd, writer, readers = await trio.to_thread.run_sync(_open_files, path)
    try:
        store = SQLiteStore(path, writer, readers)
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run_writer)
            try:
                yield store
            finally:
                await store.aclose()  # the writer drains what was sent, then ends
    finally:
        for conn in (writer, *readers):
            conn.close()
        os.close(lock_fd)
