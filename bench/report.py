"""What a benchmark report says besides its numbers: the machine, the versions, the tables.

:func:`machine` collects the date, nproc, CPU model, RAM, kernel, Python, the versions of
every package involved, wrk's, Redis's and PostgreSQL's server versions and the load average
when the run started, and :func:`speed_probe`'s time for a fixed piece of work (this VM's
speed drifts by up to 3x within an hour: two runs' figures compare only when their probes
are close). :func:`table` renders rows as a markdown table, and :func:`section` a
titled table whose columns (:func:`col`) read the nested result dicts.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = [
    "PACKAGES", "SHARED_CORES_NOTE", "Column", "col", "fmt", "get", "machine", "machine_section",
    "one_line", "percent", "ratio", "section", "speed_probe", "table", "times",
]

#: The Python distributions whose versions every report lists.
PACKAGES = (
    "jobsvc",
    "trio",
    "hypercorn",
    "starlette",
    "attrs",
    "cattrs",
    "psycopg",
    "psycopg-pool",
    "httpx",
    "uvicorn",
    "uvloop",
    "httptools",
    "dramatiq",
    "arq",
    "redis",
    "hiredis",
    "procrastinate",
)

SHARED_CORES_NOTE = (
    "The load generator (wrk, or the harness's own client), the servers, the workers, Redis and "
    "PostgreSQL all run on the same machine and share its cores: every number is what this box "
    "does with all of them competing for CPU, not what a server alone could do."
)


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def _first_line(path: str, prefix: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.startswith(prefix):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def _command(*argv: str) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return (done.stdout or done.stderr).strip().splitlines()[0] if (done.stdout or done.stderr).strip() else "unknown"


def _redis_version(url: str) -> str:
    try:
        import redis

        client = redis.Redis.from_url(url, socket_timeout=5)
        try:
            return str(client.info("server")["redis_version"])
        finally:
            client.close()
    except Exception as exc:  # noqa: BLE001 - the report says why
        return f"unknown ({exc})"


def _postgres_version(url: str) -> str:
    try:
        import psycopg

        with psycopg.connect(url, connect_timeout=5) as conn:
            row = conn.execute("SHOW server_version").fetchone()
            return str(row[0]) if row else "unknown"
    except Exception as exc:  # noqa: BLE001 - the report says why
        return f"unknown ({exc})"


#: The probe's unit of work: this many rounds of integer arithmetic in the interpreter.
PROBE_ROUNDS = 1_000_000


def speed_probe(repeat: int = 5) -> float:
    """Milliseconds for :data:`PROBE_ROUNDS` rounds of pure-Python arithmetic, the best of
    ``repeat`` runs (wall time, so a VM's stolen time counts). Lower is faster; a run made
    while the probe read twice as long ran on half the machine."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        total = 0
        for i in range(PROBE_ROUNDS):
            total += i * i % 7
        best = min(best, time.perf_counter() - start)
    return round(best * 1000, 1)


def machine(*, redis_url: str | None = None, pg_url: str | None = None) -> dict[str, Any]:
    """The facts a reader needs to judge the numbers, read when the run starts."""
    ram_kib = _first_line("/proc/meminfo", "MemTotal")
    ram = f"{int(ram_kib.split()[0]) / 1024 / 1024:.1f} GiB" if ram_kib != "unknown" else ram_kib
    here = Path(__file__).resolve().parent
    info: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "nproc": os.cpu_count(),
        "cpu": _first_line("/proc/cpuinfo", "model name"),
        "ram": ram,
        "kernel": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "load average at start (1/5/15 min)": " / ".join(f"{x:.2f}" for x in os.getloadavg()),
        "speed probe at start (ms, lower is faster)": speed_probe(),
        "commit": _command("git", "-C", str(here), "rev-parse", "--short", "HEAD"),
        "wrk": _command("wrk", "-v"),
        "sqlite": __import__("sqlite3").sqlite_version,
        "packages": {name: _version(name) for name in PACKAGES},
    }
    if redis_url:
        info["redis server"] = _redis_version(redis_url)
    if pg_url:
        info["postgresql server"] = _postgres_version(pg_url)
    return info


def machine_section(info: dict[str, Any]) -> list[str]:
    """Markdown lines listing :func:`machine`'s facts."""
    lines = [f"- {key}: {value}" for key, value in info.items() if key != "packages"]
    packages = ", ".join(f"{name} {version}" for name, version in info.get("packages", {}).items())
    lines.append(f"- packages: {packages}")
    return lines


def fmt(value: Any, digits: int = 1) -> str:
    """A number for a table: thousands separators, ``digits`` decimals for floats, '-' for None."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def ratio(a: float | None, b: float | None) -> float | None:
    """``a / b``, or None when either is missing or ``b`` is zero."""
    if a is None or b is None or b == 0:
        return None
    return a / b


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    """A markdown table; cells go through :func:`fmt`."""
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        out.append("| " + " | ".join(fmt(cell) for cell in row) + " |")
    return out


def get(entry: Any, *path: str) -> Any:
    """``entry[path[0]][path[1]]...``, or None where a part is missing (a failed scenario)."""
    for key in path:
        if not isinstance(entry, dict) or key not in entry:
            return None
        entry = entry[key]
    return entry


def percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def times(value: float | None) -> str:
    """A ratio as ``1.23x``."""
    return "-" if value is None else f"{value:.2f}x"


def one_line(error: str) -> str:
    """An error message for a table or a list: its first line, and its last one (where a log
    tail ends with the actual exception) when there are several."""
    lines = [line.strip() for line in error.splitlines() if line.strip()]
    return lines[0] if len(lines) < 2 else f"{lines[0]} ... {lines[-1]}"


#: A table column: its header and how to get its cell from one entry of the results.
Column = tuple[str, Callable[[dict[str, Any]], Any]]


def col(header: str, *path: str, show: Callable[[Any], Any] = lambda v: v) -> Column:
    """The column ``header`` showing ``get(entry, *path)`` through ``show``."""
    return header, lambda entry: show(get(entry, *path))


def section(title: str, first: str, entries: dict[str, Any], columns: Sequence[Column]) -> list[str]:
    """``title`` and a table with one row per entry: its name under ``first``, then ``columns``."""
    rows = [(name, *(cell(entry) for _, cell in columns)) for name, entry in entries.items()]
    return ["", title, "", *table([first, *(header for header, _ in columns)], rows)]
