"""The load driver shared by ``bench/peers.py`` and ``bench/engine.py``.

* :class:`Proc` / :func:`spawn`: a server or worker in its own process group, on a port picked
  here; ready once the port accepts a TCP connection; stopped by its PID's group (SIGTERM, then
  SIGKILL after a deadline), never by name.
* :func:`wrk`: runs ``wrk --latency`` with a generated Lua script that ``POST``s a JSON body, and
  parses what wrk prints: requests, duration, requests/s, p50/p75/p90/p99 latency, non-2xx/3xx
  responses and socket errors.
* :func:`cpu_seconds` / :class:`CpuMeter` / :func:`cpu_percent`: CPU time (utime + stime from
  ``/proc/PID/stat``) of a process group, as % of one core over a window.
* :func:`wait_until`: polls a predicate until it holds or a deadline passes;
  :func:`time_to_count`: when a polled counter reached a value, interpolated between polls.

Everything is on 127.0.0.1 and bounded in time.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "CpuMeter",
    "Proc",
    "StartError",
    "WrkResult",
    "cpu_percent",
    "cpu_seconds",
    "free_port",
    "group_pids",
    "parse_wrk",
    "spawn",
    "time_to_count",
    "wait_until",
    "wrk",
]

HOST = "127.0.0.1"
#: How long a server gets to answer on its port.
START_DEADLINE = 30.0
#: How long a process group gets after SIGTERM before SIGKILL.
STOP_DEADLINE = 15.0
_CLK_TCK = os.sysconf("SC_CLK_TCK")


class StartError(RuntimeError):
    """A server or worker did not start; the message carries the end of its log."""


# -- waiting ---------------------------------------------------------------------------------


def wait_until(predicate: Callable[[], bool], *, timeout: float, interval: float = 0.05, what: str = "condition") -> float:
    """Poll ``predicate`` every ``interval`` seconds until it is true; return the
    ``time.monotonic()`` at which it was seen true. Raises :class:`TimeoutError` naming
    ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return time.monotonic()
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what}: still not true after {timeout:g}s")
        time.sleep(interval)


def time_to_count(
    count: Callable[[], int],
    k: int,
    *,
    since: float,
    timeout: float,
    start_count: int = 0,
    what: str = "count",
    interval: float = 0.05,
    cost_factor: float = 10.0,
) -> dict[str, Any]:
    """Seconds from ``since`` (a ``time.monotonic()``, when the count was ``start_count``)
    until ``count() >= k``.

    ``count`` is polled every ``interval`` seconds, or every ``cost_factor`` times its last
    call's duration when that is longer (so that polling a slow counter, such as an HTTP
    endpoint of a busy server, costs the system measured little); the moment ``k`` was crossed
    is interpolated linearly between the two polls around it. Also returns the first nonzero
    count seen and when (a poll, not interpolated), and the longest call in ms."""
    prev_t, prev_n, longest = since, start_count, 0.0
    first_nonzero: float | None = None
    first_count = 0
    while True:
        c0 = time.monotonic()
        n = count()
        c1 = time.monotonic()
        longest = max(longest, c1 - c0)
        now = (c0 + c1) / 2
        if n > 0 and first_nonzero is None:
            first_nonzero, first_count = now - since, n
        if n >= k:
            crossed = prev_t + (now - prev_t) * (k - prev_n) / (n - prev_n) if n > prev_n else now
            return {
                "seconds": max(crossed, since) - since,
                "first_nonzero_s": first_nonzero,
                "first_nonzero_count": first_count,
                "longest_call_ms": longest * 1000,
            }
        if now - since > timeout:
            raise TimeoutError(f"{what}: {n} of {k} after {timeout:g}s")
        prev_t, prev_n = now, n
        time.sleep(max(interval, cost_factor * (c1 - c0)))


# -- processes -------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _port_answers(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclass
class Proc:
    """A child process that leads its own process group (``start_new_session``)."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    port: int | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def url(self) -> str:
        if self.port is None:
            raise ValueError(f"{self.name} has no port")
        return f"http://{HOST}:{self.port}"

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(empty log)"

    def wait_port(self, timeout: float = START_DEADLINE) -> None:
        """Return once the port accepts a connection; raise :class:`StartError` (with the log)
        if the process exits first or the deadline passes."""
        assert self.port is not None
        deadline = time.monotonic() + timeout
        while not _port_answers(self.port):
            if not self.alive():
                raise StartError(f"{self.name} exited with code {self.popen.returncode} before listening on {self.port}:\n{self.log_tail()}")
            if time.monotonic() >= deadline:
                raise StartError(f"{self.name} did not listen on {self.port} within {timeout:g}s:\n{self.log_tail()}")
            time.sleep(0.05)

    def ensure_alive(self) -> None:
        if not self.alive():
            raise StartError(f"{self.name} exited with code {self.popen.returncode}:\n{self.log_tail()}")

    def stop(self, timeout: float = STOP_DEADLINE) -> int | None:
        """SIGTERM the process group, SIGKILL it after ``timeout``; return the leader's exit code."""
        self._signal_group(signal.SIGTERM)
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._signal_group(signal.SIGKILL)
            self.popen.wait(timeout=10)
        # Children of the leader (dramatiq's worker processes) may outlive it: end them too.
        if group_pids(self.pid):
            wait_group_gone = time.monotonic() + timeout
            while group_pids(self.pid) and time.monotonic() < wait_group_gone:
                time.sleep(0.05)
            self._signal_group(signal.SIGKILL)
        return self.popen.returncode

    def _signal_group(self, sig: signal.Signals) -> None:
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


@contextmanager
def spawn(
    name: str,
    argv: Sequence[str],
    *,
    log_dir: Path,
    port: int | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    ready: bool = True,
) -> Iterator[Proc]:
    """Start ``argv`` in a new process group, its output in ``log_dir/name.log``, with the
    environment ``env`` (default: this process's); if ``port`` is given and ``ready``, wait until
    it answers there. The group is stopped when the block ends, whatever happens inside."""
    log_path = log_dir / f"{name}.log"
    full_env = dict(os.environ if env is None else env)
    with open(log_path, "ab") as log:
        popen = subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=full_env, cwd=cwd, start_new_session=True
        )
    proc = Proc(name, popen, log_path, port)
    try:
        if port is not None and ready:
            proc.wait_port()
        yield proc
    finally:
        proc.stop()


# -- CPU -------------------------------------------------------------------------------------


def group_pids(pgid: int) -> list[int]:
    """The live processes of process group ``pgid`` (from ``/proc/*/stat``)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields is not None and fields[2] == str(pgid) and fields[0] != "Z":
            pids.append(int(entry))
    return pids


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of ``/proc/PID/stat`` after the command name: [state, ppid, pgrp, ...]."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            text = f.read()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process, seconds (0 if it is gone)."""
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0
    # After the name: state(0) ppid(1) pgrp(2) ... utime(11) stime(12).
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


class CpuMeter:
    """CPU used by a process group between :meth:`start` and :meth:`stop`, as % of one core.

    Processes of the group are read at both ends; one that exits in between loses its share
    (none of the measured servers forks during a window)."""

    def __init__(self, pgid: int) -> None:
        self.pgid = pgid
        self._t0 = 0.0
        self._cpu0: dict[int, float] = {}

    def _snapshot(self) -> dict[int, float]:
        return {pid: cpu_seconds(pid) for pid in group_pids(self.pgid)}

    def start(self) -> None:
        self._cpu0 = self._snapshot()
        self._t0 = time.monotonic()

    def stop(self) -> float:
        cpu1 = self._snapshot()
        elapsed = time.monotonic() - self._t0
        used = sum(cpu1[pid] - self._cpu0.get(pid, 0.0) for pid in cpu1)
        return 100.0 * used / elapsed if elapsed > 0 else 0.0


def cpu_percent(pgid: int, window: float) -> float:
    """CPU of process group ``pgid`` over the next ``window`` seconds, % of one core."""
    meter = CpuMeter(pgid)
    meter.start()
    time.sleep(window)
    return meter.stop()


# -- wrk -------------------------------------------------------------------------------------


@dataclass
class WrkResult:
    """What one wrk run printed. Latencies in ms; ``ok`` = responses below 400."""

    requests: int
    duration_s: float
    requests_per_s: float
    non_2xx: int
    socket_errors: dict[str, int]
    latency_ms: dict[str, float]
    connections: int
    threads: int
    raw: str = field(repr=False)

    @property
    def ok(self) -> int:
        return self.requests - self.non_2xx

    @property
    def ok_per_s(self) -> float:
        return self.ok / self.duration_s if self.duration_s else 0.0

    def summary(self) -> dict[str, Any]:
        data = asdict(self)
        del data["raw"]
        return {**data, "ok": self.ok, "ok_per_s": round(self.ok_per_s, 1)}


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def _ms(value: str, unit: str) -> float:
    return float(value) * _UNITS_MS[unit]


def parse_wrk(text: str, *, connections: int = 0, threads: int = 0) -> WrkResult:
    """Parse wrk 4's ``--latency`` report; raises ``ValueError`` if the summary line is missing."""
    total = re.search(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h)", text, re.M)
    if total is None:
        raise ValueError(f"no 'N requests in T' line in wrk's output:\n{text}")
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.M)
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    latency = {
        f"p{m.group(1)}": round(_ms(m.group(2), m.group(3)), 3)
        for m in re.finditer(r"^\s+(50|75|90|99)(?:\.000)?%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.M)
    }
    return WrkResult(
        requests=int(total.group(1)),
        duration_s=_ms(total.group(2), total.group(3)) / 1000.0,
        requests_per_s=float(rps.group(1)) if rps else 0.0,
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=dict(zip(("connect", "read", "write", "timeout"), map(int, sock.groups()), strict=True)) if sock else {},
        latency_ms=latency,
        connections=connections,
        threads=threads,
        raw=text,
    )


def _lua_post(body: str) -> str:
    if "]==]" in body:
        raise ValueError("the body must not contain ']==]'")
    return f'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\nwrk.body = [==[{body}]==]\n'


def wrk(
    url: str,
    *,
    body: str,
    connections: int = 50,
    duration: float = 10.0,
    threads: int = 2,
    timeout: float = 5.0,
) -> WrkResult:
    """``POST body`` (JSON) to ``url`` with ``connections`` open connections for ``duration``
    seconds, closed loop, and parse the report. ``threads`` wrk threads; a response slower than
    ``timeout`` counts as a socket timeout."""
    exe = shutil.which("wrk")
    if exe is None:
        raise StartError("wrk is not installed (Debian: apt-get install -y wrk)")
    with tempfile.NamedTemporaryFile("w", suffix=".lua", prefix="bench-post-") as script:
        script.write(_lua_post(body))
        script.flush()
        argv = [exe, f"-t{threads}", f"-c{connections}", f"-d{duration:g}s", f"--timeout={timeout:g}s", "--latency", "-s", script.name, url]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    return parse_wrk(done.stdout, connections=connections, threads=threads)
