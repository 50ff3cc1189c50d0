"""Render times of the dashboard's pages over a SQLite store of many jobs.

    .venv/bin/python bench/dashboard_pages.py --jobs 1000000 --db /tmp/ui-1m.db

Seeds the store through the store API (``Store.insert``, 10,000 jobs per transaction) unless
the file already holds jobs, then opens the service on it and times each page in process
(httpx over ASGITransport: no network), the median and the worst of ``--runs`` renders.
The jobs: 90 % succeeded, 5 % dead (with an error), 3 % pending (due tomorrow: nothing
runs), 2 % cancelled, over five tasks, in submission order.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import httpx
import trio

from jobsvc.app import create_app
from jobsvc.config import Settings
from jobsvc.models import ErrorRecord, Job, JobState
from jobsvc.service import open_service
from jobsvc.store import open_store

TASKS = ["email", "resize", "report", "webhook", "sync"]
BATCH = 10_000


def make_job(i: int, now: float) -> Job:
    r = i % 100
    task = TASKS[i % len(TASKS)]
    created = now - 86400 + i * 0.05
    base = dict(id=f"job-{i:08d}", task=task, payload={"n": i, "to": f"user{i}@example.com"}, max_attempts=3, created_at=created)
    if r < 90:
        return Job(**base, state=JobState.SUCCEEDED, attempts=1, run_at=created, updated_at=created + 1, finished_at=created + 1, result={"ok": True})
    if r < 95:
        errors = tuple(ErrorRecord(attempt=a, at=created + a, type="TimeoutError", message=f"upstream timed out after 30s (attempt {a})") for a in (1, 2, 3))
        return Job(**base, state=JobState.DEAD, attempts=3, run_at=created, updated_at=created + 3, finished_at=created + 3, errors=errors)
    if r < 98:
        return Job(**base, state=JobState.PENDING, run_at=now + 86400, updated_at=created)
    return Job(**base, state=JobState.CANCELLED, run_at=created, updated_at=created + 1, finished_at=created + 1)


async def seed(url: str, n: int) -> None:
    async with open_store(url) as store:
        counts = await store.counts()
        have = sum(counts.by_state().values())
        if have >= n:
            print(f"the store already holds {have} jobs")
            return
        now = time.time()
        started = time.perf_counter()
        for start in range(have, n, BATCH):
            await store.insert([make_job(i, now) for i in range(start, min(n, start + BATCH))])
        print(f"seeded {n - have} jobs in {time.perf_counter() - started:.0f} s")


async def measure(url: str, runs: int) -> None:
    settings = Settings(db=url, workers=4)
    opened = time.perf_counter()
    async with open_service(settings) as service:
        print(f"service opened in {time.perf_counter() - opened:.1f} s (SQLite counts the jobs once at open)")
        app = create_app(service)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench") as client:
            dead = (await client.get("/jobs?state=dead&limit=1")).json()["jobs"][0]["id"]
            middle = 500_000
            pages = {
                "overview": "/ui/",
                "jobs, first page": "/ui/jobs",
                "jobs, a page half-way": f"/ui/jobs?after={middle}",
                "jobs of one task and state": "/ui/jobs?state=dead&task=report",
                "an empty task x state (worst)": "/ui/jobs?state=cancelled&task=email",
                "dead letters": "/ui/dead",
                "dead letters, half-way": f"/ui/dead?after={middle}",
                "job page (dead, 3 errors)": f"/ui/jobs/{dead}",
                "tasks": "/ui/tasks",
            }
            print(f"{'page':32} {'median ms':>10} {'max ms':>8}")
            for name, path in pages.items():
                times = []
                for _ in range(runs):
                    t = time.perf_counter()
                    r = await client.get(path)
                    times.append((time.perf_counter() - t) * 1000)
                    assert r.status_code == 200, (path, r.status_code)
                print(f"{name:32} {statistics.median(times):10.1f} {max(times):8.1f}")
        service.begin_shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--db", type=Path, default=Path("/tmp/jobsvc-ui-bench.db"))
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    url = f"sqlite:///{args.db.resolve()}"
    trio.run(seed, url, args.jobs)
    trio.run(measure, url, args.runs)


if __name__ == "__main__":
    main()
