"""Task handlers for the PostgreSQL cluster tests (``jobsvc serve --tasks pg_cluster_tasks``,
with ``tests/`` on ``PYTHONPATH``).

``record`` writes one line when an execution starts and one when it ends into the ledger
file named in its payload, each with a single ``O_APPEND`` write (whole lines even when
several processes append, and even under SIGKILL)::

    S <job_id> <pid> <lease_token> <epoch seconds>
    E <job_id> <pid> <lease_token> <epoch seconds>

The lease token is read from PostgreSQL (``PG_CLUSTER_DB``) at the start of the execution:
the service does not hand it to handlers. It is -1 when the database could not be asked.
"""

from __future__ import annotations

import os
import threading
import time
from collections import defaultdict
from typing import Any

import attrs
import psycopg
import trio

from jobsvc.tasks import JobContext, task

__all__ = ["Execution", "RecordPayload", "read_executions", "record"]


@attrs.frozen
class RecordPayload:
    ledger: str
    seconds: float = attrs.field(default=0.0, validator=[attrs.validators.ge(0), attrs.validators.le(60)])


_conn: psycopg.Connection[Any] | None = None
_conn_lock = threading.Lock()


def _lease_token(job_id: str) -> int:
    """This job's current lease token, from the database (-1 if it cannot be read)."""
    global _conn
    url = os.environ.get("PG_CLUSTER_DB")
    if not url:
        return -1
    with _conn_lock:
        try:
            if _conn is None or _conn.closed:
                _conn = psycopg.connect(url, autocommit=True, connect_timeout=2)
            row = _conn.execute("SELECT lease_token FROM jobs WHERE id = %s", (job_id,)).fetchone()
            return -1 if row is None else int(row[0])
        except psycopg.Error:
            if _conn is not None:
                _conn.close()
            _conn = None
            return -1


def _append(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


@task("record", payload=RecordPayload, max_attempts=5)
async def record(payload: RecordPayload, ctx: JobContext) -> dict[str, int]:
    """Records its start, sleeps ``seconds``, records its end."""
    token = await trio.to_thread.run_sync(_lease_token, ctx.job_id)
    pid = os.getpid()
    _append(payload.ledger, f"S {ctx.job_id} {pid} {token} {time.time():.6f}\n")
    await trio.sleep(payload.seconds)
    _append(payload.ledger, f"E {ctx.job_id} {pid} {token} {time.time():.6f}\n")
    return {"pid": pid, "token": token}


@attrs.define
class Execution:
    job_id: str
    pid: int
    token: int
    start: float
    end: float | None = None


def read_executions(path: str | os.PathLike[str]) -> dict[str, list[Execution]]:
    """job id -> its executions in start order (``end`` None: never finished)."""
    runs: dict[str, list[Execution]] = defaultdict(list)
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return {}
    for line in lines:
        kind, job_id, pid, token, at = line.split()
        if kind == "S":
            runs[job_id].append(Execution(job_id, int(pid), int(token), float(at)))
        else:
            for run in reversed(runs[job_id]):
                if run.pid == int(pid) and run.token == int(token) and run.end is None:
                    run.end = float(at)
                    break
            else:  # pragma: no cover - a ledger bug
                raise AssertionError(f"end without a start: {line}")
    for job_runs in runs.values():
        job_runs.sort(key=lambda r: r.start)
    return dict(runs)
