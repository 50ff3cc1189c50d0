"""What this machine's disk does to durable commits, without jobsvc.

    python bench/fsync_probe.py [DIRECTORY] [RATE] [SECONDS]

One SQLite connection in WAL mode with ``synchronous = FULL`` (what jobsvc's SQLite store uses
for a batch holding a submission) commits one small row at a time, RATE commits per second
(open loop: each at its scheduled time) for SECONDS, in a fresh database file in DIRECTORY
(default: a temporary directory under ``$TMPDIR``, so on the disk the benchmarks use). Printed:
the commit time's p50, p99 and max, and every commit over 8 ms with when it started.

A submission is answered, and its job can start, only once its insert committed: a commit
that stalls here delays every submission that arrives meanwhile. ``bench/engine.py``'s latency
scenario counts jobsvc's own slow inserts from ``GET /metrics``; this is the same commit with
nothing else running, the floor those counts stand on.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SLOW_S = 0.008


def probe(path: Path, rate: float, seconds: float) -> dict[str, Any]:
    """Commit times in ms: ``p50``, ``p99``, ``max``, and ``slow``: (seconds from the start,
    ms) of every commit over :data:`SLOW_S`."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, k TEXT UNIQUE, v BLOB)")
        n = max(1, int(rate * seconds))
        durations: list[float] = []
        slow: list[tuple[float, float]] = []
        t0 = time.perf_counter()
        for i in range(n):
            delay = t0 + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            start = time.perf_counter()
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO t (k, v) VALUES (?, randomblob(300))", (os.urandom(16).hex(),))
            conn.execute("COMMIT")
            took = time.perf_counter() - start
            durations.append(took)
            if took > SLOW_S:
                slow.append((round(start - t0, 2), round(took * 1000, 2)))
    finally:
        conn.close()
    durations.sort()
    ms = lambda s: round(s * 1000, 2)  # noqa: E731
    return {
        "commits": n, "rate": rate, "p50": ms(durations[n // 2]), "p99": ms(durations[min(n - 1, int(n * 0.99))]),
        "max": ms(durations[-1]), "slow": slow,
    }  # fmt: skip


def summary(result: dict[str, Any]) -> str:
    """One line: the percentiles and how many commits were slow."""
    return (
        f"{result['commits']} durable commits at {result['rate']:g}/s: p50 {result['p50']} ms, p99 {result['p99']} ms, "
        f"max {result['max']} ms, {len(result['slow'])} over {SLOW_S * 1000:g} ms"
    )


def main(argv: list[str]) -> int:
    rate = float(argv[1]) if len(argv) > 1 else 400.0
    seconds = float(argv[2]) if len(argv) > 2 else 30.0
    with tempfile.TemporaryDirectory(dir=(argv[0] or None) if argv else None) as directory:
        result = probe(Path(directory) / "probe.db", rate, seconds)
        listed = ", ".join(f"{at:.2f} s: {took} ms" for at, took in result["slow"])
        print(f"{summary(result)} (in {Path(directory).resolve()}){': ' + listed if listed else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
