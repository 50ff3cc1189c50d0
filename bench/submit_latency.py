"""Submission to handler start, in-process: paced single-job submissions, no HTTP.

    python bench/submit_latency.py [sqlite|postgres] [RATE] [SECONDS] [REPS]

``JobService.submit`` is called open-loop at RATE per second (each call at its scheduled
time, whatever the earlier ones are doing) on a fresh database; the handler notes when it
starts. Printed per run: submission to handler start (p50/p90/p99), the submission's own
durable transaction (submit -> commit), commit -> handler start, and how many submissions
claimed their job at insert (``submit`` returned it running). Without HTTP the service has
the CPU to itself, so what is left is the engine: its transactions and how jobs reach the
workers. ``bench/engine.py``'s latency scenario measures the same over HTTP.

PostgreSQL runs use a throwaway database (see ``bench/cpu_drain.py``).
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cpu_drain import database  # noqa: E402

from jobsvc.codec import JobRequest  # noqa: E402
from jobsvc.config import Settings  # noqa: E402
from jobsvc.service import open_service  # noqa: E402
from jobsvc.tasks import JobContext, Registry, task  # noqa: E402

STARTS: dict[str, float] = {}


@task("started")
async def started(payload: Any, ctx: JobContext) -> None:
    STARTS[ctx.job_id] = time.perf_counter()


def _p(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))]


async def run(url: str, rate: float, seconds: float) -> str:
    STARTS.clear()
    settings = Settings.from_sources({"db": url, "max_pending": 10**8, "log_level": "warning", "migrate": True}, {})
    sent: dict[str, float] = {}
    committed: dict[str, float] = {}
    states: Counter[str] = Counter()
    n = max(1, int(rate * seconds))
    async with open_service(settings, registry=Registry([started])) as service:

        async def one() -> None:
            t0 = time.perf_counter()
            [done] = await service.submit([JobRequest(task="started")])
            sent[done.job.id], committed[done.job.id] = t0, time.perf_counter()
            states[done.job.state.value] += 1

        begin = trio.current_time()
        async with trio.open_nursery() as nursery:
            for i in range(n):
                await trio.sleep_until(begin + i / rate)
                nursery.start_soon(one)
        with trio.fail_after(60):
            while len(STARTS) < n:  # noqa: ASYNC110 - polled
                await trio.sleep(0.05)
        service.begin_shutdown()
    total = sorted(1e3 * (STARTS[j] - sent[j]) for j in sent)
    commit = sorted(1e3 * (committed[j] - sent[j]) for j in sent)
    after = sorted(1e3 * (STARTS[j] - committed[j]) for j in sent)
    return (
        f"{rate:g}/s, {n} jobs: submission -> handler start p50 {_p(total, .5):.1f} p90 {_p(total, .9):.1f} "
        f"p99 {_p(total, .99):.1f} ms | submit -> commit p50 {_p(commit, .5):.1f} p99 {_p(commit, .99):.1f} | "
        f"commit -> start p50 {_p(after, .5):.1f} p99 {_p(after, .99):.1f} | claimed at insert {states['running']}/{n}"
    )


def main() -> None:
    kind = sys.argv[1] if len(sys.argv) > 1 else "sqlite"
    rate = float(sys.argv[2]) if len(sys.argv) > 2 else 150.0
    seconds = float(sys.argv[3]) if len(sys.argv) > 3 else 15.0
    reps = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    if kind not in ("sqlite", "postgres"):
        sys.exit(f"usage: {sys.argv[0]} [sqlite|postgres] [RATE] [SECONDS] [REPS]")
    for _ in range(reps):
        with database(kind) as url:
            print(f"{kind} {trio.run(run, url, rate, seconds)}", flush=True)


if __name__ == "__main__":
    main()
