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

SLOW_S = 0.008


def probe(path: Path, rate: float, seconds: float) -> str:
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
                slow.append((start - t0, took))
    finally:
        conn.close()
    durations.sort()
    ms = lambda s: f"{s * 1000:.2f}"  # noqa: E731
    listed = ", ".join(f"{at:.2f} s: {ms(took)} ms" for at, took in slow)
    return (
        f"{n} durable commits at {rate:g}/s in {path.parent.resolve()}: p50 {ms(durations[n // 2])} ms, "
        f"p99 {ms(durations[min(n - 1, int(n * 0.99))])} ms, max {ms(durations[-1])} ms; "
        f"{len(slow)} over {SLOW_S * 1000:g} ms{': ' + listed if slow else ''}"
    )


def main(argv: list[str]) -> int:
    rate = float(argv[1]) if len(argv) > 1 else 400.0
    seconds = float(argv[2]) if len(argv) > 2 else 30.0
    with tempfile.TemporaryDirectory(dir=(argv[0] or None) if argv else None) as directory:
        print(probe(Path(directory) / "probe.db", rate, seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
