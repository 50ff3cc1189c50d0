"""CPU per job of the engine alone: an in-process drain of N prefilled no-op jobs.

    python bench/cpu_drain.py [N] [REPS] [sqlite|postgres]

No HTTP and no start-up: ``open_service`` with the server's observers (metrics and the
dashboard's activity counters) on a fresh SQLite file holding N due no-op jobs, timed from
the service's start until every job has succeeded (polled every 50 ms, as the benchmarks
poll ``/stats``). Prints wall seconds, jobs/s and the process's CPU time per job.

On PostgreSQL each run gets a throwaway database, created from ``PG_BENCH_URL``
(default ``postgresql://root@127.0.0.1:5432/postgres``) and dropped afterwards; the CPU
shown is this process's only (the server's is not in it).

This VM's speed drifts by up to 3x within an hour, so two versions are best compared by
instruction counts, which do not drift::

    valgrind --tool=callgrind --callgrind-out-file=/dev/null python bench/cpu_drain.py 2000 1

("Collected" is the total; subtract a run with N=1 for the start-up.)
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))

from targets import _insert_jobs  # noqa: E402

from jobsvc.clock import SystemClock  # noqa: E402
from jobsvc.config import Settings  # noqa: E402
from jobsvc.dashboard.activity import attach_activity  # noqa: E402
from jobsvc.metrics import PrometheusObserver  # noqa: E402
from jobsvc.models import JobState  # noqa: E402
from jobsvc.service import open_service  # noqa: E402

POLL = 0.05


async def drain(url: str, n: int) -> tuple[float, float]:
    """Seconds of wall clock and of CPU until ``n`` prefilled jobs have succeeded."""
    await _insert_jobs(url, n, "noop", 0.0, 5000)
    settings = Settings.from_sources({"db": url, "max_pending": 10**8, "log_level": "warning"}, {})
    wall, cpu = time.perf_counter(), time.process_time()
    async with open_service(settings, observer=PrometheusObserver()) as service:
        attach_activity(service.observer, SystemClock())
        while (await service.counts()).by_state()[JobState.SUCCEEDED] < n:  # noqa: ASYNC110 - polled, as /stats is
            await trio.sleep(POLL)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        service.begin_shutdown()
    return wall, cpu


@contextmanager
def database(kind: str) -> Iterator[str]:
    """A fresh, empty database of ``kind``; its URL."""
    if kind == "sqlite":
        with tempfile.TemporaryDirectory(prefix="jobsvc-cpu-drain-") as tmp:
            yield f"sqlite:///{tmp}/jobs.db"
        return
    import psycopg

    admin = os.environ.get("PG_BENCH_URL", "postgresql://root@127.0.0.1:5432/postgres")
    name = f"jobsvc_cpu_drain_{os.getpid()}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield admin.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    reps = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    kind = sys.argv[3] if len(sys.argv) > 3 else "sqlite"
    if kind not in ("sqlite", "postgres"):
        sys.exit(f"usage: {sys.argv[0]} [N] [REPS] [sqlite|postgres]")
    for _ in range(reps):
        with database(kind) as url:
            wall, cpu = trio.run(drain, url, n)
        print(f"{n} jobs: {wall:.3f} s, {n / wall:,.0f} jobs/s, CPU {cpu:.3f} s = {1e6 * cpu / n:.1f} us/job", flush=True)


if __name__ == "__main__":
    main()
