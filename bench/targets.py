"""The systems under test, behind one small interface that the scenarios drive.

A :class:`Target` is used as a context manager (its throwaway resources exist inside the block
and are removed after it, even on failure) and offers:

* ``reset()``      an empty queue and zeroed counters;
* ``serve()``      the HTTP front and the workers running; yields a :class:`Running`;
* ``workers()``    the workers alone (for jobsvc: the server, whose workers are inside it);
* ``prefill(n)``   ``n`` noop jobs enqueued while no worker runs;
* ``finished()`` / ``unfinished()``  jobs done / jobs accepted but not yet done.

Targets: :class:`JobsvcTarget` (SQLite or PostgreSQL, black-box through ``python -m jobsvc
serve`` and ``GET /stats``), :class:`DramatiqTarget`, :class:`ArqTarget` (Redis) and
:class:`ProcrastinateTarget` (PostgreSQL). The peers' code lives in ``peer_*.py``; their HTTP
fronts run under uvicorn (one process, its automatic choice of uvloop and httptools, no access
log).

Redis: one database (default 11 on 127.0.0.1:6379) that must hold nothing but this harness's
keys; they are deleted on reset and at the end. PostgreSQL: one throwaway database per target,
dropped at the end.
"""

from __future__ import annotations

import abc
import fnmatch
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self
from urllib.parse import urlsplit

from load import HOST, Proc, StartError, free_port, spawn

__all__ = [
    "ArqTarget",
    "DramatiqTarget",
    "Env",
    "JobsvcTarget",
    "ProcrastinateTarget",
    "Running",
    "Target",
    "throwaway_database",
    "uvicorn_front",
]

BENCH_DIR = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
#: Prefix of every Redis key the Redis peers use (arq's own ``arq:*`` keys aside).
NAMESPACE = "jobsvc-bench"
#: Every Redis key this harness may create (arq names its job and result keys ``arq:...``).
OUR_KEYS = (f"{NAMESPACE}:*", "arq:*")
UVICORN_FLAGS = ("--log-level", "warning", "--no-access-log")
UVICORN_NOTE = "uvicorn, 1 process, loop/http 'auto' (uvloop + httptools), --no-access-log"


@dataclass
class Env:
    """Where a run keeps its files and which services it talks to."""

    workdir: Path
    redis_url: str = "redis://127.0.0.1:6379/11"
    pg_admin_url: str = "postgresql://root@127.0.0.1:5432/postgres"
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    def export(self) -> None:
        """Put the peers' settings in this process's environment: the ``peer_*`` modules read
        them at import, here and in the children."""
        os.environ["BENCH_REDIS_URL"] = self.redis_url
        os.environ["BENCH_NAMESPACE"] = NAMESPACE
        if str(BENCH_DIR) not in sys.path:
            sys.path.insert(0, str(BENCH_DIR))

    def child_env(self) -> dict[str, str]:
        """The environment of a child: ours without ``JOBSVC_*``, with ``bench/`` importable."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("JOBSVC_")}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(BENCH_DIR), env.get("PYTHONPATH", "")) if p)
        return env


@dataclass
class Running:
    """A target while it serves: its base URL and its processes (front first)."""

    url: str
    procs: list[Proc]

    def ensure_alive(self) -> None:
        for proc in self.procs:
            proc.ensure_alive()


# -- PostgreSQL ------------------------------------------------------------------------------


def database_url(admin_url: str, name: str) -> str:
    return urlsplit(admin_url)._replace(path=f"/{name}").geturl()


def _admin(admin_url: str, sql: str) -> None:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True, connect_timeout=10) as conn:
        conn.execute(sql)


def _recreate(admin_url: str, name: str) -> None:
    _admin(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    _admin(admin_url, f'CREATE DATABASE "{name}"')


@contextmanager
def throwaway_database(admin_url: str, name: str) -> Iterator[str]:
    """A new, empty database ``name``; dropped (``WITH (FORCE)``) when the block ends."""
    try:
        _recreate(admin_url, name)
    except Exception as exc:
        raise StartError(f"cannot create PostgreSQL database {name!r} through {admin_url}: {exc}") from exc
    try:
        yield database_url(admin_url, name)
    finally:
        _admin(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _run(argv: list[str], env: dict[str, str], what: str) -> None:
    done = subprocess.run(argv, env=env, cwd=BENCH_DIR, capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        raise StartError(f"{what} failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")


# -- the interface ---------------------------------------------------------------------------


class Target(abc.ABC):
    """A system under test; see the module docstring."""

    name: str

    def __init__(self, env: Env) -> None:
        self.env = env
        self._stack = ExitStack()

    def __enter__(self) -> Self:
        try:
            self.open()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def open(self) -> None:  # noqa: B027 - optional hook: most targets need no resources
        """Create the throwaway resources; register their removal on ``self._stack``."""

    @abc.abstractmethod
    def settings(self) -> dict[str, Any]:
        """What runs, with which settings: goes into the report as is."""

    @abc.abstractmethod
    def reset(self) -> None: ...

    @abc.abstractmethod
    def serve(self) -> AbstractContextManager[Running]: ...

    @abc.abstractmethod
    def workers(self) -> AbstractContextManager[list[Proc]]: ...

    @abc.abstractmethod
    def prefill(self, n: int) -> None: ...

    @abc.abstractmethod
    def finished(self) -> int: ...

    @abc.abstractmethod
    def unfinished(self) -> int: ...


def uvicorn_front(env: Env, name: str, app: str) -> AbstractContextManager[Proc]:
    """``uvicorn app`` on a free port of 127.0.0.1; ready once the port answers."""
    port = free_port()
    argv = [sys.executable, "-m", "uvicorn", app, "--host", HOST, "--port", str(port), *UVICORN_FLAGS]
    return spawn(name, argv, log_dir=env.workdir, port=port, env=env.child_env(), cwd=BENCH_DIR)


# -- jobsvc ----------------------------------------------------------------------------------


class JobsvcTarget(Target):
    """``python -m jobsvc serve`` on SQLite (a fresh file per reset) or PostgreSQL (a throwaway
    database, recreated and migrated per reset), black-box: jobs go in through ``POST /jobs``
    (or the store API for :meth:`prefill`) and are counted from ``GET /stats``."""

    def __init__(self, env: Env, store: str, *, workers: int | None = None, max_pending: int = 10_000_000) -> None:
        super().__init__(env)
        if store not in ("sqlite", "postgres"):
            raise ValueError(f"store must be 'sqlite' or 'postgres', not {store!r}")
        self.store = store
        self.name = f"jobsvc-{store}" + ("" if workers is None else f"-w{workers}")
        self.worker_count = workers
        self.max_pending = max_pending
        self._resets = 0
        self._db_url = ""
        self._pg_name = f"jobsvc_bench_{env.run_id}_{store}_{workers or 0}"
        self._url: str | None = None

    @property
    def db_url(self) -> str:
        return self._db_url

    def open(self) -> None:
        if self.store == "postgres":
            self._stack.enter_context(throwaway_database(self.env.pg_admin_url, self._pg_name))

    def server_argv(self, port: int | str, db_url: str, *extra: str, max_pending: int | None = None) -> list[str]:
        pending = self.max_pending if max_pending is None else max_pending
        return [
            *("python", "-m", "jobsvc", "serve", "--bind", f"{HOST}:{port}", "--db", db_url),
            *(() if self.worker_count is None else ("--workers", str(self.worker_count))),
            *("--max-pending", str(pending), "--log-level", "warning", *extra),
        ]

    def settings(self) -> dict[str, Any]:
        db = "sqlite:///TMP/jobsvc-N.db" if self.store == "sqlite" else "postgresql://root@127.0.0.1:5432/THROWAWAY"
        return {
            "command": " ".join(self.server_argv("PORT", db)),
            "db": "SQLite file (WAL; submissions synced before the answer, worker writes within --fsync-interval: jobsvc's defaults)"
            if self.store == "sqlite"
            else "PostgreSQL throwaway database",
            "http": "hypercorn trio worker embedded in jobsvc, 1 process",
            "workers": "jobsvc's default" if self.worker_count is None else self.worker_count,
            "completions": "GET /stats: succeeded + dead + cancelled",
        }

    def reset(self) -> None:
        self._resets += 1
        if self.store == "sqlite":
            self._db_url = f"sqlite:///{self.env.workdir / f'{self.name}-{self._resets}.db'}"  # a file of its own
        else:
            _recreate(self.env.pg_admin_url, self._pg_name)
            self._db_url = database_url(self.env.pg_admin_url, self._pg_name)
            _run([sys.executable, "-m", "jobsvc", "migrate", "--db", self._db_url], self.env.child_env(), "jobsvc migrate")

    @contextmanager
    def server(self, *extra: str, max_pending: int | None = None, name: str | None = None) -> Iterator[Proc]:
        """A ``jobsvc serve`` on the current database; extra flags appended."""
        port = free_port()
        argv = [sys.executable, *self.server_argv(port, self._db_url, *extra, max_pending=max_pending)[1:]]
        with spawn(name or self.name, argv, log_dir=self.env.workdir, port=port, env=self.env.child_env(), cwd=self.env.workdir) as proc:
            self._url = proc.url
            try:
                yield proc
            finally:
                self._url = None

    @contextmanager
    def serve(self) -> Iterator[Running]:
        with self.server() as proc:
            yield Running(proc.url, [proc])

    @contextmanager
    def workers(self) -> Iterator[list[Proc]]:
        with self.server() as proc:
            yield [proc]

    def prefill(self, n: int, *, task: str = "noop", delay: float = 0.0, chunk: int = 5000) -> None:
        """Insert ``n`` jobs due in ``delay`` seconds straight into the store (no server may run)."""
        import trio

        trio.run(_insert_jobs, self._db_url, n, task, delay, chunk)

    def settle(self) -> None:
        """Leave the store as an operator's would be some time after a bulk load (no server may
        run): PostgreSQL checkpointed, vacuumed and analyzed (what autovacuum would do, without
        racing it); SQLite's WAL checkpointed into the database file. A measurement taken right
        after :meth:`prefill` otherwise pays for the load's write-back."""
        if self.store == "postgres":
            import psycopg

            with psycopg.connect(self._db_url, autocommit=True) as conn:
                conn.execute("VACUUM (ANALYZE) jobs")
                conn.execute("CHECKPOINT")
        else:
            import sqlite3

            conn = sqlite3.connect(self._db_url.removeprefix("sqlite:///"))
            try:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                conn.close()

    def stats(self) -> dict[str, Any]:
        import httpx

        if self._url is None:
            raise RuntimeError("jobsvc is not running")
        response = httpx.get(f"{self._url}/stats", timeout=10)
        response.raise_for_status()
        return dict(response.json()["jobs"])

    def store_stats(self) -> dict[str, Any]:
        """This instance's store counters from ``GET /stats`` (``commits``, ``operations``...)."""
        import httpx

        if self._url is None:
            raise RuntimeError("jobsvc is not running")
        response = httpx.get(f"{self._url}/stats", timeout=10)
        response.raise_for_status()
        return dict(response.json()["instance"]["store_stats"])

    def finished(self) -> int:
        jobs = self.stats()
        return int(jobs["succeeded"] + jobs["dead"] + jobs["cancelled"])

    def unfinished(self) -> int:
        jobs = self.stats()
        return int(jobs["pending"] + jobs["running"] + jobs["retrying"])


async def _insert_jobs(db_url: str, n: int, task: str, delay: float, chunk: int) -> None:
    import time

    from jobsvc.models import Job
    from jobsvc.store import open_store

    async with open_store(db_url, migrate=True) as store:
        for start in range(0, n, chunk):
            now = time.time()
            jobs = [
                Job(id=str(uuid.uuid4()), task=task, payload=None, max_attempts=5, run_at=now + delay, created_at=now, updated_at=now)
                for _ in range(min(chunk, n - start))
            ]
            await store.insert(jobs)


# -- Redis peers -----------------------------------------------------------------------------


class _RedisPeer(Target):
    """A peer whose queue is in Redis; its keys match :attr:`key_patterns`."""

    key_patterns: tuple[str, ...] = ()

    def open(self) -> None:
        import redis

        self.env.export()
        self.redis = redis.Redis.from_url(self.env.redis_url, socket_timeout=10)
        self._stack.callback(self.redis.close)
        try:
            self.redis.ping()
        except redis.RedisError as exc:
            raise StartError(f"{self.name}: Redis at {self.env.redis_url} does not answer: {exc}") from exc
        foreign = [k for k in self.redis.scan_iter(count=1000) if not self._ours(k)][:5]
        if foreign:
            raise StartError(f"{self.name}: Redis database {self.env.redis_url} holds keys that are not this harness's {foreign}; pass --redis-url with an empty database")
        self._stack.callback(self.reset)

    @staticmethod
    def _ours(key: bytes) -> bool:
        return any(fnmatch.fnmatchcase(key.decode(errors="replace"), p) for p in OUR_KEYS)

    def reset(self) -> None:
        for pattern in (f"{NAMESPACE}:{self.name}*", *self.key_patterns):
            keys = list(self.redis.scan_iter(match=pattern, count=1000))
            for i in range(0, len(keys), 1000):
                self.redis.delete(*keys[i : i + 1000])

    @abc.abstractmethod
    def front(self) -> AbstractContextManager[Proc]: ...

    @contextmanager
    def serve(self) -> Iterator[Running]:
        with self.workers() as workers, self.front() as front:
            yield Running(front.url, [front, *workers])


class DramatiqTarget(_RedisPeer):
    """dramatiq (``peer_dramatiq``): Redis broker, ``processes`` x ``threads`` worker."""

    name = "dramatiq"

    def __init__(self, env: Env, *, processes: int = 2, threads: int = 8) -> None:
        super().__init__(env)
        self.processes = processes
        self.threads = threads

    def settings(self) -> dict[str, Any]:
        return {
            "front": f"peer_dramatiq:app under {UVICORN_NOTE}; noop.send() called from the async handler",
            "worker": f"dramatiq peer_dramatiq --processes {self.processes} --threads {self.threads} (dramatiq's defaults are 2 and 8)",
            "broker": "RedisBroker, one queue, default middleware and actor options",
            "completions": "the actor INCRs a Redis counter (one extra round trip per job)",
        }

    def front(self) -> AbstractContextManager[Proc]:
        return uvicorn_front(self.env, "dramatiq-front", "peer_dramatiq:app")

    @contextmanager
    def workers(self) -> Iterator[list[Proc]]:
        argv = [sys.executable, "-m", "dramatiq", "peer_dramatiq", "--processes", str(self.processes), "--threads", str(self.threads)]
        with spawn("dramatiq-worker", argv, log_dir=self.env.workdir, env=self.env.child_env(), cwd=BENCH_DIR) as proc:
            yield [proc]

    def prefill(self, n: int) -> None:
        import peer_dramatiq

        peer_dramatiq.prefill(n)

    def finished(self) -> int:
        import peer_dramatiq

        return int(self.redis.get(peer_dramatiq.DONE_KEY) or 0)

    def unfinished(self) -> int:
        import peer_dramatiq

        return int(self.redis.hlen(peer_dramatiq.MESSAGES_KEY))


class ArqTarget(_RedisPeer):
    """arq (``peer_arq``): one worker process, ``max_jobs`` concurrent jobs."""

    name = "arq"
    key_patterns = ("arq:*",)

    def __init__(self, env: Env, *, max_jobs: int | None = None, poll_delay: float | None = None) -> None:
        super().__init__(env)
        self.max_jobs = max_jobs
        self.poll_delay = poll_delay

    def settings(self) -> dict[str, Any]:
        max_jobs = "10 (arq's default)" if self.max_jobs is None else str(self.max_jobs)
        poll = "0.5 s (arq's default)" if self.poll_delay is None else f"{self.poll_delay:g} s (arq's default is 0.5 s)"
        return {
            "front": f"peer_arq:app under {UVICORN_NOTE}; await pool.enqueue_job('noop')",
            "worker": f"arq peer_arq.WorkerSettings, 1 process, max_jobs {max_jobs}, poll_delay {poll}, "
            "queue_read_limit max(5 * max_jobs, 100), keep_result 3600 s (arq's defaults otherwise). arq polls its queue: "
            "at most queue_read_limit jobs start per poll_delay, so the defaults cap it near 200 jobs/s",
            "completions": "the function INCRs a Redis counter (one extra round trip per job)",
        }

    def _child_env(self) -> dict[str, str]:
        env = self.env.child_env()
        if self.max_jobs is not None:
            env["BENCH_ARQ_MAX_JOBS"] = str(self.max_jobs)
        if self.poll_delay is not None:
            env["BENCH_ARQ_POLL_DELAY"] = str(self.poll_delay)
        return env

    def front(self) -> AbstractContextManager[Proc]:
        return uvicorn_front(self.env, "arq-front", "peer_arq:app")

    @contextmanager
    def workers(self) -> Iterator[list[Proc]]:
        argv = [str(BIN / "arq"), "peer_arq.WorkerSettings"]
        with spawn("arq-worker", argv, log_dir=self.env.workdir, env=self._child_env(), cwd=BENCH_DIR) as proc:
            yield [proc]

    def prefill(self, n: int) -> None:
        import peer_arq

        peer_arq.prefill(n)

    def finished(self) -> int:
        import peer_arq

        return int(self.redis.get(peer_arq.DONE_KEY) or 0)

    def unfinished(self) -> int:
        import peer_arq

        return int(self.redis.zcard(peer_arq.QUEUE))


# -- procrastinate ---------------------------------------------------------------------------


class ProcrastinateTarget(Target):
    """procrastinate (``peer_procrastinate``) on a throwaway PostgreSQL database."""

    name = "procrastinate"

    def __init__(self, env: Env, *, concurrency: int = 1) -> None:
        super().__init__(env)
        self.concurrency = concurrency
        self._pg_name = f"procrastinate_bench_{env.run_id}"

    def open(self) -> None:
        import psycopg

        self.env.export()
        url = self._stack.enter_context(throwaway_database(self.env.pg_admin_url, self._pg_name))
        os.environ["BENCH_PG_URL"] = url
        _run([str(BIN / "procrastinate"), "--app=peer_procrastinate.app", "schema", "--apply"], self.env.child_env(), "procrastinate schema --apply")
        self.conn = psycopg.connect(url, autocommit=True)
        self._stack.callback(self.conn.close)

    def settings(self) -> dict[str, Any]:
        default = " (procrastinate's default)" if self.concurrency == 1 else " (procrastinate's default is 1)"
        return {
            "front": f"peer_procrastinate:web under {UVICORN_NOTE}; await noop.defer_async() (PsycopgConnector pool)",
            "worker": f"procrastinate worker, 1 process, --concurrency {self.concurrency}{default}, LISTEN/NOTIFY on, jobs kept",
            "completions": "SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'",
        }

    def reset(self) -> None:
        self.conn.execute("TRUNCATE procrastinate_jobs RESTART IDENTITY CASCADE")

    @contextmanager
    def serve(self) -> Iterator[Running]:
        with self.workers() as workers, uvicorn_front(self.env, "procrastinate-front", "peer_procrastinate:web") as front:
            yield Running(front.url, [front, *workers])

    @contextmanager
    def workers(self) -> Iterator[list[Proc]]:
        argv = [str(BIN / "procrastinate"), "--app=peer_procrastinate.app", "worker", "--concurrency", str(self.concurrency)]
        with spawn("procrastinate-worker", argv, log_dir=self.env.workdir, env=self.env.child_env(), cwd=BENCH_DIR) as proc:
            yield [proc]

    def prefill(self, n: int) -> None:
        import peer_procrastinate

        peer_procrastinate.prefill(n)

    def _count(self, statuses: tuple[str, ...]) -> int:
        row = self.conn.execute("SELECT count(*) FROM procrastinate_jobs WHERE status = ANY(%s)", [list(statuses)]).fetchone()
        return int(row[0]) if row else 0

    def finished(self) -> int:
        return self._count(("succeeded",))

    def unfinished(self) -> int:
        return self._count(("todo", "doing"))
