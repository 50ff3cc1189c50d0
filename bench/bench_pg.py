"""PostgreSQL benchmarks: store claims, end-to-end no-op jobs with 1 and 3 instances, rescue
delay after kill -9, NOTIFY pickup latency between instances.

Loopback only; every section has fixed counts and deadlines. Each section works in its own
fresh database (created, migrated through jobsvc's migration code, dropped afterwards) on the
server named by ``PG_BENCH_URL`` (default ``postgresql://root@127.0.0.1:5432/postgres``).

    python bench/bench_pg.py                          # JSON on stdout
    python bench/bench_pg.py --json bench/results-postgres.json   # also the raw numbers (make bench)

Sections:

a. ``store_claims``   PostgresStore.claim_due on 20,000 stored jobs: batches of 32 and of 1,
   one store; and batches of 32 from two stores (two pools) at once. Claims/s.
   Also PostgresStore.insert of batches of 100 (jobs/s).
b. ``e2e_noop``       20,000 noop jobs stored up front, then N ``jobsvc serve`` instances
   (8 workers each) started on the database: jobs/s until all have succeeded, N = 1 and 3.
   And 6,000 noop jobs submitted over HTTP (POST /jobs/batch of 100, round-robin, 4 in
   flight) to N instances: submit-to-all-succeeded jobs/s.
c. ``rescue_kill9``   3 instances (--lease 2 --heartbeat 0.5, then the defaults scaled down:
   --lease 6 --heartbeat 2), each running 8 ``sleep`` jobs; kill -9 one: time until the
   survivors have taken back all of its running jobs, against lease + heartbeat.
d. ``notify_latency`` two stores (two pools, two LISTEN connections) in this process: store A
   inserts one job, store B's wait_for_work returns: latency of 300 samples (p50/p99/max),
   next to the latency of the insert's commit alone.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import select
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg
import trio
import trio.testing
from psycopg import sql

from jobsvc.models import Job
from jobsvc.store.postgres import apply_migrations, open_postgres_store

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import speed_probe  # noqa: E402

SERVER_URL = os.environ.get("PG_BENCH_URL", "postgresql://root@127.0.0.1:5432/postgres")
STARTUP_DEADLINE = 30.0
DRAIN_DEADLINE = 120.0


# ----------------------------------------------------------------------------- helpers


def _with_db(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + name))


@contextmanager
def fresh_database() -> Iterator[str]:
    """A new, migrated database; dropped (WITH FORCE) afterwards."""
    name = f"jobsvc_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(SERVER_URL, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = _with_db(SERVER_URL, name)
    try:
        apply_migrations(url)
        yield url
    finally:
        with psycopg.connect(SERVER_URL, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _q(url: str, query: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(query, params).fetchall()  # type: ignore[arg-type]


def _jobs(n: int, *, task: str = "noop", payload: Any = None, now: float | None = None) -> list[Job]:
    now = time.time() if now is None else now
    return [
        Job(id=uuid.uuid4().hex, task=task, payload=payload, max_attempts=3, run_at=now, created_at=now, updated_at=now)
        for _ in range(n)
    ]


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Server:
    """A ``jobsvc serve`` child on 127.0.0.1:0; killed by its PID at the end."""

    def __init__(self, url: str, log_path: Path, *flags: str) -> None:
        argv = [sys.executable, "-m", "jobsvc", "serve", "--bind", "127.0.0.1:0", "--db", url, "--log-level", "warning", *flags]
        env = {k: v for k, v in os.environ.items() if not k.startswith("JOBSVC_")}
        self.log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self.log, env=env)
        self.url = ""

    def wait_listening(self) -> str:
        assert self.proc.stdout is not None
        fd, buffer = self.proc.stdout.fileno(), b""
        deadline = time.monotonic() + STARTUP_DEADLINE
        while b"\n" not in buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.proc.poll() is not None:
                raise RuntimeError(f"jobsvc did not start (exit {self.proc.returncode})")
            if select.select([fd], [], [], remaining)[0]:
                buffer += os.read(fd, 4096)
        self.url = buffer.split(b"\n", 1)[0].decode().removeprefix("listening on ").strip()
        return self.url

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        self.kill()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.log.close()


@contextmanager
def servers(url: str, n: int, *flags: str) -> Iterator[list[Server]]:
    started = [Server(url, Path(f"/tmp/jobsvc-bench-pg-{i}.log"), *flags) for i in range(n)]
    try:
        for s in started:
            s.wait_listening()
        yield started
    finally:
        for s in started:
            s.stop()


async def _wait_succeeded(url: str, total: int, deadline: float = DRAIN_DEADLINE) -> float:
    """Seconds until ``total`` jobs have succeeded (polled every 20 ms, bounded)."""
    t0 = time.perf_counter()
    while True:
        [(done,)] = _q(url, "SELECT count(*) FROM jobs WHERE state = 'succeeded'")
        if done >= total:
            return time.perf_counter() - t0
        if time.perf_counter() - t0 > deadline:
            raise RuntimeError(f"only {done}/{total} jobs succeeded within {deadline}s")
        await trio.sleep(0.02)


# ----------------------------------------------------------------------------- a. claims


async def store_claims() -> dict[str, Any]:
    out: dict[str, Any] = {}
    with fresh_database() as url:
        async with open_postgres_store(url) as store:
            jobs = _jobs(20_000)
            t0 = time.perf_counter()
            for i in range(0, len(jobs), 100):
                await store.insert(jobs[i : i + 100])
            out["insert_batch100_jobs_per_s"] = round(len(jobs) / (time.perf_counter() - t0))

            now = time.time() + 1
            claimed, t0 = 0, time.perf_counter()
            while claimed < 10_000:
                claimed += len((await store.claim(owner="a", now=now, lease=30, limit=32)).jobs)
            out["claim_due_batch32_claims_per_s"] = round(claimed / (time.perf_counter() - t0))

            claimed, calls, t0 = 0, 0, time.perf_counter()
            while calls < 2_000:
                claimed += len((await store.claim(owner="a", now=now, lease=30, limit=1)).jobs)
                calls += 1
            out["claim_due_batch1_claims_per_s"] = round(claimed / (time.perf_counter() - t0))
    with fresh_database() as url:
        async with open_postgres_store(url) as a, open_postgres_store(url) as b:
            jobs = _jobs(20_000)
            for i in range(0, len(jobs), 500):
                await a.insert(jobs[i : i + 500])
            now = time.time() + 1
            got = {"a": 0, "b": 0}

            async def claimer(store: Any, name: str) -> None:
                while True:
                    batch = (await store.claim(owner=name, now=now, lease=30, limit=32)).jobs
                    if not batch:
                        return
                    got[name] += len(batch)

            t0 = time.perf_counter()
            with trio.fail_after(DRAIN_DEADLINE):
                async with trio.open_nursery() as nursery:
                    for _ in range(2):  # two dispatchers per store
                        nursery.start_soon(claimer, a, "a")
                        nursery.start_soon(claimer, b, "b")
            elapsed = time.perf_counter() - t0
            assert got["a"] + got["b"] == 20_000, got
            [(distinct,)] = _q(url, "SELECT count(DISTINCT id) FROM jobs WHERE state = 'running' AND lease_token = 1")
            assert distinct == 20_000
            out["claim_due_batch32_two_stores_claims_per_s"] = round(20_000 / elapsed)
            out["two_stores_split"] = got
    return out


# ----------------------------------------------------------------------------- b. end to end


async def e2e_noop() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for n in (1, 3):
        with fresh_database() as url:
            async with open_postgres_store(url) as store:
                jobs = _jobs(20_000)
                for i in range(0, len(jobs), 500):
                    await store.insert(jobs[i : i + 500])
            with servers(url, n, "--workers", "8"):
                elapsed = await _wait_succeeded(url, len(jobs))  # from "listening" to all done
            out[f"drain_{n}_instance_jobs_per_s"] = round(len(jobs) / elapsed)
        with fresh_database() as url, servers(url, n, "--workers", "8", "--max-pending", "1000000") as started:
            urls = [s.url for s in started]
            total, batch = 6_000, 100
            body = {"jobs": [{"task": "noop", "payload": None} for _ in range(batch)]}
            batches = iter(range(total // batch))

            async def submitter(client: httpx.AsyncClient, urls: list[str], body: dict[str, Any], batches: Iterator[int]) -> None:
                for i in batches:  # shared iterator: each batch is posted once
                    response = await client.post(f"{urls[i % len(urls)]}/jobs/batch", json=body)
                    assert response.status_code == 202, response.text

            t0 = time.perf_counter()
            async with httpx.AsyncClient(timeout=30) as client:
                with trio.fail_after(DRAIN_DEADLINE):
                    async with trio.open_nursery() as nursery:
                        for _ in range(4):
                            nursery.start_soon(submitter, client, urls, body, batches)
            submitted = time.perf_counter() - t0
            await _wait_succeeded(url, total)
            elapsed = time.perf_counter() - t0
            out[f"http_batch_{n}_instance_submitted_per_s"] = round(total / submitted)
            out[f"http_batch_{n}_instance_end_to_end_jobs_per_s"] = round(total / elapsed)
    return out


# ----------------------------------------------------------------------------- c. rescue


async def rescue_kill9() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for lease, heartbeat in ((2.0, 0.5), (6.0, 2.0)):
        with fresh_database() as url, servers(
            url, 3, "--workers", "8", "--lease", str(lease), "--heartbeat", str(heartbeat), "--timeout", "600"
        ) as started:
            async with httpx.AsyncClient(timeout=10) as client:
                body = {"jobs": [{"task": "sleep", "payload": {"seconds": 120}} for _ in range(24)]}
                response = await client.post(f"{started[0].url}/jobs/batch", json=body)
                assert response.status_code == 202, response.text
            owned = "SELECT count(*) FROM jobs WHERE state = 'running' AND split_part(lease_owner, ':', 2) = %s"
            victim = started[1]
            with trio.fail_after(30):  # every instance busy with its 8 jobs
                while _q(url, "SELECT count(*) FROM jobs WHERE state = 'running'")[0][0] < 24:  # noqa: ASYNC110 - polling the database, bounded
                    await trio.sleep(0.02)
            held = _q(url, owned, (str(victim.proc.pid),))[0][0]
            t0 = time.perf_counter()
            victim.kill()
            with trio.fail_after(lease + heartbeat + 30):
                while _q(url, owned, (str(victim.proc.pid),))[0][0]:  # noqa: ASYNC110 - polling the database, bounded
                    await trio.sleep(0.01)
            delay = time.perf_counter() - t0
            out[f"lease_{lease:g}_heartbeat_{heartbeat:g}"] = {
                "running_jobs_of_killed_instance": held,
                "all_rescued_after_s": round(delay, 2),
                "bound_lease_plus_heartbeat_s": lease + heartbeat,
            }
    return out


# ----------------------------------------------------------------------------- d. notify


async def notify_latency() -> dict[str, Any]:
    with fresh_database() as url:
        async with open_postgres_store(url) as a, open_postgres_store(url) as b:
            latencies, commits = [], []
            for _ in range(300):
                woke = trio.Event()
                t_wake = 0.0

                async def waiter(woke: trio.Event) -> None:
                    nonlocal t_wake
                    await b.wait_for_work()
                    t_wake = time.perf_counter()
                    woke.set()

                with trio.fail_after(5):
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(waiter, woke)
                        await trio.testing.wait_all_tasks_blocked()
                        t0 = time.perf_counter()
                        await a.insert(_jobs(1))
                        commits.append(time.perf_counter() - t0)
                        await woke.wait()
                latencies.append(t_wake - t0)
            ms = [x * 1000 for x in latencies]
            cms = [x * 1000 for x in commits]
            return {
                "samples": len(ms),
                "insert_to_wake_ms_p50": round(statistics.median(ms), 2),
                "insert_to_wake_ms_p99": round(_pct(ms, 0.99), 2),
                "insert_to_wake_ms_max": round(max(ms), 2),
                "insert_commit_alone_ms_p50": round(statistics.median(cms), 2),
            }


# ----------------------------------------------------------------------------- report


def machine() -> dict[str, Any]:
    from importlib.metadata import version

    import hypercorn  # noqa: F401
    import psycopg_pool

    cpu = "unknown"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    [(pg_version,)] = _q(SERVER_URL, "SHOW server_version")
    [(sync_commit,)] = _q(SERVER_URL, "SHOW synchronous_commit")
    [(fsync,)] = _q(SERVER_URL, "SHOW fsync")
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "postgresql": pg_version,
        "postgresql_fsync": fsync,
        "postgresql_synchronous_commit": sync_commit,
        "psycopg": psycopg.__version__,
        "psycopg_pool": psycopg_pool.__version__,
        "libpq": psycopg.pq.version(),
        "trio": trio.__version__,
        "hypercorn": version("hypercorn"),
        "httpx": httpx.__version__,
        "speed_probe_ms_at_start": speed_probe(),
    }


SECTIONS = {"store_claims": store_claims, "e2e_noop": e2e_noop, "rescue_kill9": rescue_kill9, "notify_latency": notify_latency}


async def run_all(only: list[str] | None = None) -> dict[str, Any]:
    results: dict[str, Any] = {"machine": machine()}
    for name, fn in SECTIONS.items():
        if only and name not in only:
            continue
        t0 = time.perf_counter()
        results[name] = await fn()
        results[name]["section_seconds"] = round(time.perf_counter() - t0, 1)
        print(f"{name}: {json.dumps(results[name])}", file=sys.stderr, flush=True)
    results["machine"]["speed_probe_ms_at_end"] = speed_probe()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--only", action="append", choices=sorted(SECTIONS), help="run only this section (repeatable)")
    parser.add_argument("--json", type=Path, help="also write the raw results to this file")
    args = parser.parse_args()
    results = trio.run(run_all, args.only)
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
