"""jobsvc benchmarks: HTTP submissions, batch submissions, SQLite group commit, kill -9 recovery.

Everything runs on 127.0.0.1 against a real ``python -m jobsvc serve`` (SQLite store, the
built-in tasks only) and is bounded in count and time. The load generator is httpx on trio
in this process, on the same machine: on a 2-core box it competes with the server for CPU,
so the HTTP numbers are a floor for what the server alone can do.

    python bench/bench_http.py            # prints the results as JSON
    python bench/run.py                   # all of them, and writes bench/RESULTS.md

Sections (each returns a dict):

a. ``http_single``  POST /jobs, noop, C concurrent requests over one pooled client:
   submissions/s, p50/p99 latency, time until every job has succeeded (end-to-end jobs/s).
b. ``http_batch``   the same with POST /jobs/batch of 100 jobs.
c. ``store_group_commit``  SQLiteStore.insert of one job per call, 1 vs 64 concurrent
   inserters (each call awaits its commit): durable jobs/s and operations per commit.
d. ``kill9_recovery``  ~2,000 jobs pending/running, kill -9, restart on the same file:
   time until it listens again and until every job is final.
e. ``worker_drain``  the worker side alone: 10,000 noop jobs already stored, 8 vs 32 workers.
"""

from __future__ import annotations

import json
import math
import os
import select
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import httpx
import trio

from jobsvc.client import KEEPALIVE_EXPIRY

__all__ = ["http_batch", "http_single", "kill9_recovery", "main", "run_all", "store_group_commit", "worker_drain"]

STARTUP_DEADLINE = 20.0
#: No section waits longer than this for jobs to finish.
DRAIN_DEADLINE = 60.0
SERVER_FLAGS = ("--workers", "8", "--max-pending", "1000000", "--log-level", "warning")


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("JOBSVC_")}


class Server:
    """A ``jobsvc serve`` child on 127.0.0.1:0; killed by its PID when the block ends."""

    def __init__(self, db_path: Path, log_path: Path, *flags: str) -> None:
        self.db_path = db_path
        argv = [sys.executable, "-m", "jobsvc", "serve", "--bind", "127.0.0.1:0", "--db", f"sqlite:///{db_path}", *SERVER_FLAGS, *flags]
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, env=_clean_env())
        self.log_path = log_path
        self.url = self._wait_listening()

    def _wait_listening(self) -> str:
        assert self.proc.stdout is not None
        fd, buffer = self.proc.stdout.fileno(), b""
        deadline = time.monotonic() + STARTUP_DEADLINE
        while b"\n" not in buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                self.stop()
                raise RuntimeError(f"jobsvc did not listen within {STARTUP_DEADLINE:g}s: {self.log_path.read_text()}")
            chunk = os.read(fd, 4096)
            if not chunk:
                self.stop()
                raise RuntimeError(f"jobsvc exited before listening: {self.log_path.read_text()}")
            buffer += chunk
        return buffer.split(b"\n", 1)[0].decode().removeprefix("listening on ").strip()

    def kill9(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def terminate(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self.stop()

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@contextmanager
def _server(workdir: Path, name: str, *flags: str) -> Iterator[Server]:
    server = Server(workdir / f"{name}.db", workdir / f"{name}.log", *flags)
    try:
        yield server
    finally:
        server.stop()


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def _count_states(db_path: Path) -> dict[str, int]:
    with closing(sqlite3.connect(db_path, timeout=10)) as conn:
        return dict(conn.execute("SELECT state, count(*) FROM jobs GROUP BY state").fetchall())


async def _until_all_final(client: httpx.AsyncClient, *, deadline: float = DRAIN_DEADLINE) -> float:
    """Poll (every 20 ms) until no job is pending, retrying or running; returns trio time then."""
    with trio.fail_after(deadline):
        while True:
            body = (await client.get("/jobs", params={"state": "pending,retrying,running", "limit": "1"})).json()
            if not body["jobs"]:
                return trio.current_time()
            await trio.sleep(0.02)


async def _fan_out(total: int, concurrency: int, request: Callable[[int], Awaitable[None]]) -> None:
    """Run request(0..total-1) with at most ``concurrency`` in flight."""
    counter = iter(range(total))

    async def lane() -> None:
        for i in counter:
            await request(i)

    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(lane)


async def _submit_load(url: str, *, jobs: int, batch: int, concurrency: int) -> dict[str, Any]:
    latencies: list[float] = []
    requests = math.ceil(jobs / batch)
    # keepalive_expiry below jobsvc's 5 s keep-alive (httpx's default is 5 s too: a connection
    # reused as the server closed it failed about every second run; see jobsvc.client).
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency, keepalive_expiry=KEEPALIVE_EXPIRY)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        await client.get("/health")  # warm one connection

        async def one(i: int) -> None:
            started = trio.current_time()
            if batch == 1:
                response = await client.post("/jobs", json={"task": "noop"})
            else:
                size = min(batch, jobs - i * batch)
                response = await client.post("/jobs/batch", json={"jobs": [{"task": "noop"}] * size})
            if response.status_code != 202:
                raise RuntimeError(f"submission failed: {response.status_code} {response.text[:300]}")
            latencies.append(trio.current_time() - started)

        t0 = trio.current_time()
        await _fan_out(requests, concurrency, one)
        submitted = trio.current_time() - t0
        done = await _until_all_final(client) - t0
    return {
        "jobs": jobs,
        "requests": requests,
        "jobs_per_request": batch,
        "concurrency": concurrency,
        "submit_seconds": round(submitted, 3),
        "requests_per_s": round(requests / submitted, 1),
        "jobs_accepted_per_s": round(jobs / submitted, 1),
        "latency_p50_ms": round(_percentile(latencies, 0.50) * 1000, 2),
        "latency_p99_ms": round(_percentile(latencies, 0.99) * 1000, 2),
        "all_succeeded_seconds": round(done, 3),
        "end_to_end_jobs_per_s": round(jobs / done, 1),
    }


def http_single(workdir: Path, *, jobs: int = 3000, concurrency: int = 32) -> dict[str, Any]:
    """(a) POST /jobs of a noop job, ``concurrency`` requests in flight."""
    with _server(workdir, "single") as server:
        result = trio.run(lambda: _submit_load(server.url, jobs=jobs, batch=1, concurrency=concurrency))
        counts = _count_states(server.db_path)
    if counts != {"succeeded": jobs}:
        raise RuntimeError(f"http_single: expected {jobs} succeeded jobs, found {counts}")
    return result


def http_batch(workdir: Path, *, jobs: int = 20000, batch: int = 100, concurrency: int = 8) -> dict[str, Any]:
    """(b) POST /jobs/batch of ``batch`` noop jobs, ``concurrency`` requests in flight."""
    with _server(workdir, "batch") as server:
        result = trio.run(lambda: _submit_load(server.url, jobs=jobs, batch=batch, concurrency=concurrency))
        counts = _count_states(server.db_path)
    if counts != {"succeeded": jobs}:
        raise RuntimeError(f"http_batch: expected {jobs} succeeded jobs, found {counts}")
    return result


async def _store_inserts(path: Path, *, jobs: int, concurrency: int) -> dict[str, Any]:
    from jobsvc.models import Job
    from jobsvc.store import open_store

    now = time.time()

    def make() -> Job:
        return Job(id=str(uuid.uuid4()), task="noop", payload=None, max_attempts=5, run_at=now, created_at=now, updated_at=now)

    async with open_store(f"sqlite:///{path}") as store:
        commits0, ops0 = store.commits, store.operations  # type: ignore[attr-defined]

        async def one(_: int) -> None:
            [result] = await store.insert([make()])
            assert result.created

        t0 = trio.current_time()
        await _fan_out(jobs, concurrency, one)
        elapsed = trio.current_time() - t0
        commits = store.commits - commits0  # type: ignore[attr-defined]
        ops = store.operations - ops0  # type: ignore[attr-defined]
        counts = (await store.counts()).by_state()
    if sum(counts.values()) != jobs:
        raise RuntimeError(f"store_group_commit: {sum(counts.values())} rows, expected {jobs}")
    return {
        "inserters": concurrency,
        "jobs": jobs,
        "seconds": round(elapsed, 3),
        "jobs_per_s": round(jobs / elapsed, 1),
        "commits": commits,
        "jobs_per_commit": round(ops / commits, 1),
        "ms_per_commit": round(elapsed / commits * 1000, 3),
    }


def store_group_commit(workdir: Path, *, single_jobs: int = 2000, concurrent_jobs: int = 30000, concurrency: int = 64) -> dict[str, Any]:
    """(c) SQLiteStore inserts, one job per call: 1 inserter vs ``concurrency`` inserters."""
    return {
        "one": trio.run(lambda: _store_inserts(workdir / "store-1.db", jobs=single_jobs, concurrency=1)),
        "many": trio.run(lambda: _store_inserts(workdir / "store-64.db", jobs=concurrent_jobs, concurrency=concurrency)),
    }


async def _submit_batches(url: str, jobs: list[dict[str, Any]], batch: int) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        for start in range(0, len(jobs), batch):
            response = await client.post("/jobs/batch", json={"jobs": jobs[start : start + batch]})
            if response.status_code != 202:
                raise RuntimeError(f"submission failed: {response.status_code} {response.text[:300]}")


async def _wait_final(url: str) -> float:
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        return await _until_all_final(client)


def kill9_recovery(workdir: Path, *, jobs: int = 2000, sleep: float = 0.01) -> dict[str, Any]:
    """(d) kill -9 with ``jobs`` sleep jobs pending/running, then restart on the same file."""
    payloads = [{"task": "sleep", "payload": {"seconds": sleep}} for _ in range(jobs)]
    with _server(workdir, "kill9") as first:
        trio.run(_submit_batches, first.url, payloads, 100)
        # Kill while jobs are running (committed claims), not in a gap between two of them.
        deadline = time.monotonic() + 10
        while _count_states(first.db_path).get("running", 0) < 4 and time.monotonic() < deadline:
            time.sleep(0.002)
        first.kill9()
    at_kill = _count_states(first.db_path)
    killed_at = time.monotonic()
    with _server(workdir, "kill9", "--log-level", "info") as second:
        listening = time.monotonic() - killed_at
        trio.run(_wait_final, second.url)
        all_final = time.monotonic() - killed_at
        exit_code = second.terminate()
    after = _count_states(second.db_path)
    if after != {"succeeded": jobs}:
        raise RuntimeError(f"kill9_recovery: expected {jobs} succeeded, found {after}")
    with open(second.log_path, encoding="utf-8") as log:
        recovered = [line.strip() for line in log if "recovered" in line]
    left = at_kill.get("pending", 0) + at_kill.get("running", 0) + at_kill.get("retrying", 0)
    return {
        "jobs": jobs,
        "task": f"sleep {sleep:g}s, 8 workers",
        "at_kill": at_kill,
        "kill_to_listening_seconds": round(listening, 3),
        "kill_to_all_final_seconds": round(all_final, 3),
        "jobs_left_at_kill": left,
        "ideal_drain_seconds": round(left * sleep / 8, 3),
        "restart_exit_code": exit_code,
        "recovery_log": recovered,
    }


async def _preload(path: Path, jobs: int) -> None:
    from jobsvc.models import Job
    from jobsvc.store import open_store

    now = time.time()
    async with open_store(f"sqlite:///{path}") as store:
        for start in range(0, jobs, 1000):
            await store.insert([Job(id=str(uuid.uuid4()), task="noop", payload=None, max_attempts=5, run_at=now, created_at=now, updated_at=now) for _ in range(start, min(jobs, start + 1000))])


def worker_drain(workdir: Path, *, jobs: int = 10000, workers: tuple[int, ...] = (8, 32)) -> dict[str, Any]:
    """(e) The worker side alone: ``jobs`` noop jobs already in the file, then start the
    server with W workers and time until every job is final (no HTTP load)."""
    results = {}
    for w in workers:
        path = workdir / f"drain-{w}.db"
        trio.run(_preload, path, jobs)
        started = time.monotonic()
        with _server(workdir, f"drain-{w}", "--workers", str(w)) as server:
            listening = time.monotonic() - started
            trio.run(_wait_final, server.url)
            elapsed = time.monotonic() - started
        counts = _count_states(path)
        if counts != {"succeeded": jobs}:
            raise RuntimeError(f"worker_drain: expected {jobs} succeeded, found {counts}")
        results[f"workers_{w}"] = {
            "workers": w,
            "jobs": jobs,
            "seconds_from_start": round(elapsed, 3),
            "seconds_after_listening": round(elapsed - listening, 3),
            "jobs_per_s": round(jobs / (elapsed - listening), 1),
        }
    return results


def run_all(workdir: Path | None = None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="jobsvc-bench-") as tmp:
        where = workdir or Path(tmp)
        results: dict[str, Any] = {}
        for name, fn in [("http_single", http_single), ("http_batch", http_batch), ("store_group_commit", store_group_commit), ("kill9_recovery", kill9_recovery), ("worker_drain", worker_drain)]:
            t0 = time.monotonic()
            results[name] = fn(where)
            results[name]["_wall_seconds"] = round(time.monotonic() - t0, 1)
            print(f"{name}: {json.dumps(results[name])}", file=sys.stderr, flush=True)
        return results


def main() -> int:
    print(json.dumps(run_all(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
