"""Shared machinery of the fault campaign (``tests/faults``, ``make faults``).

* **Scale.** ``FAULTS_SCALE`` = ``short`` (the default: seconds per scenario, run by
  ``make test``), ``medium``, or ``full`` (the numbers of RELIABILITY.md, ``make faults``).
  :func:`params` gives a scenario's numbers at the current scale.
* **Results.** Each scenario fills a :class:`Result`: counts (acknowledged, lost, duplicated,
  time to recover), named checks, observations and the server log lines that matter. A
  failed check fails the test *after* everything was recorded, so the report says all of
  what broke, not just the first thing. ``conftest.py`` renders every result as markdown
  (:func:`render_report`).
* **Processes.** :class:`Procs` starts real ``python -m jobsvc serve`` children (port 0,
  loopback, a clean environment with ``tests/faults`` on ``PYTHONPATH``, optional
  ``RLIMIT_NOFILE``) and kills leftovers by their own PID.
* **Client history.** :func:`submit_all` is a Jepsen-style load generator (trio + httpx):
  every try of every submission is recorded with its fate; transport errors after the
  request may have been sent are *ambiguous* and retried with the same ``Idempotency-Key``
  once the service is back.
* **Environment.** :func:`tmpfs` (a small RAM file system, root only), :class:`PgCluster`
  (a throwaway PostgreSQL cluster of our own on a free port; the shared server is never
  touched), ``/proc`` readings (RSS, open descriptors).

Every loop is bounded in count and in time; every process is ended by its own PID.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import importlib.metadata
import json
import os
import platform
import pwd
import re
import resource
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio
from jobsvc_processes import Server, clean_env

FAULTS_DIR = Path(__file__).resolve().parent
TESTS_DIR = FAULTS_DIR.parent
REPO_DIR = TESTS_DIR.parent

FINAL_STATES = ("succeeded", "dead", "cancelled")
OPEN_STATES = ("pending", "retrying", "running")

# ----------------------------------------------------------------------------- scale

SCALES = ("short", "medium", "full")

#: Each scenario's numbers at each scale. ``full`` is the campaign of RELIABILITY.md §5.
PARAMS: dict[str, dict[str, dict[str, Any]]] = {
    "kill9": {
        "short": {"jobs": 300, "kills": 3, "concurrency": 6, "drain": 60},
        "medium": {"jobs": 2000, "kills": 8, "concurrency": 8, "drain": 120},
        "full": {"jobs": 10_000, "kills": 20, "concurrency": 8, "drain": 300},
    },
    "disk": {
        "short": {"hold": 3.0, "payload_kib": 8, "recover": 20.0},
        "medium": {"hold": 8.0, "payload_kib": 8, "recover": 30.0},
        "full": {"hold": 15.0, "payload_kib": 8, "recover": 60.0},
    },
    "dbfile": {
        "short": {"before": 20, "during": 15, "notice": 3.0},
        "medium": {"before": 100, "during": 100, "notice": 10.0},
        "full": {"before": 300, "during": 300, "notice": 10.0},
    },
    "pg": {
        "short": {"instances": 2, "jobs": 300, "cycles": [("fast", 2.0), ("immediate", 2.0)], "concurrency": 8, "drain": 90},
        "medium": {"instances": 3, "jobs": 1500, "cycles": [("fast", 3.0), ("immediate", 3.0)] * 2, "concurrency": 12, "drain": 150},
        "full": {"instances": 3, "jobs": 5000, "cycles": [("fast", 5.0), ("immediate", 5.0)] * 3, "concurrency": 16, "drain": 300},
    },
    "slow": {
        "short": {"nofile": 256, "longpolls": 300, "wait": 5, "slowloris": 300, "phase": 3.0, "big_jobs": 200, "big_kib": 16, "readers": 8},
        "medium": {"nofile": 256, "longpolls": 400, "wait": 20, "slowloris": 400, "phase": 8.0, "big_jobs": 600, "big_kib": 32, "readers": 12},
        "full": {"nofile": 256, "longpolls": 600, "wait": 60, "slowloris": 500, "phase": 15.0, "big_jobs": 1000, "big_kib": 32, "readers": 20},
    },
    "handlers": {
        "short": {"block": 8.0, "huge_mib": 10.0, "grace": 2.0},
        "medium": {"block": 30.0, "huge_mib": 10.0, "grace": 2.0},
        "full": {"block": 60.0, "huge_mib": 10.0, "grace": 2.0},
    },
}


def scale() -> str:
    value = os.environ.get("FAULTS_SCALE", "short").strip().lower() or "short"
    if value not in SCALES:
        raise pytest.UsageError(f"FAULTS_SCALE must be one of {', '.join(SCALES)}, not {value!r}")
    return value


def params(scenario: str) -> dict[str, Any]:
    return dict(PARAMS[scenario][scale()])


def seed() -> int:
    return int(os.environ.get("FAULTS_SEED", "20240601"))


# ----------------------------------------------------------------------------- results


@attrs.define
class Check:
    name: str
    ok: bool
    detail: str = ""


@attrs.define
class Result:
    """What one scenario saw; rendered into the report."""

    key: str
    title: str
    scale: str
    status: str = "running"  #: pass, "pass (known limit)", FAIL, ERROR, skipped
    known_limit: str = ""  #: a documented limit this run ran into (the checks say what held)
    acked: int | None = None
    lost: int | None = None
    duplicated: int | None = None
    recover: str = ""
    checks: list[Check] = attrs.Factory(list)
    observations: list[tuple[str, str]] = attrs.Factory(list)
    logs: dict[str, list[str]] = attrs.Factory(dict)
    notes: list[str] = attrs.Factory(list)
    error: str = ""
    started: float = attrs.Factory(time.monotonic)
    duration: float = 0.0

    def check(self, name: str, ok: bool, detail: Any = "") -> bool:
        self.checks.append(Check(name, bool(ok), _short(str(detail), 600)))
        return bool(ok)

    def observe(self, name: str, value: Any) -> None:
        self.observations.append((name, _short(value if isinstance(value, str) else json.dumps(value, default=str), 800)))

    def note(self, text: str) -> None:
        self.notes.append(text)

    def limit(self, text: str) -> None:
        """A documented limit was met: the scenario passes as "pass (known limit)" when every
        check that replaces the failed expectation holds."""
        self.known_limit = text
        self.note(f"known limit: {text}")

    def server_log(self, label: str, text: str) -> None:
        self.logs[label] = notable_lines(text)

    @property
    def failed_checks(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def finish(self) -> None:
        """Fail the test if any check failed (everything is recorded by now)."""
        self.duration = time.monotonic() - self.started
        failed = self.failed_checks
        if failed:
            pytest.fail(
                f"{self.title}: {len(failed)} check(s) failed:\n" + "\n".join(f"  - {c.name}: {c.detail}" for c in failed),
                pytrace=False,
            )


RESULTS: list[Result] = []


def _short(text: str, limit: int) -> str:
    text = text.replace("\n", "\\n")
    return text if len(text) <= limit else text[: limit - 20] + f"... ({len(text)} chars)"


# ----------------------------------------------------------------------------- logs

_PROBLEM_LEVELS = {"warning", "error", "critical"}


def log_level(line: str) -> str | None:
    """The level of one server log line, lower case: the ``level`` field of a JSON line (the
    format a server not on a terminal writes), else a level word near the start of a plain or
    key=value line (a traceback's lines and anything else: None)."""
    if line.startswith("{"):
        try:
            level = json.loads(line).get("level")
        except (ValueError, AttributeError):
            return None
        return level.lower() if isinstance(level, str) else None
    found = re.search(r"\b(debug|info|warning|error|critical)\b", line[:80], re.IGNORECASE)
    return found.group(1).lower() if found else None


def problem_lines(log: str) -> list[str]:
    """The WARNING, ERROR and CRITICAL lines of a server log."""
    return [line for line in log.splitlines() if log_level(line) in _PROBLEM_LEVELS]
#: INFO lines worth showing too
_INTERESTING = re.compile(r"recovered \d+ job|unavailable|fenced|lost its lease|could not be written|shutting down|stopping now")
_NOISE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|\b[0-9a-f]{8,}\b|\d+(\.\d+)?")


def printable(text: str) -> str:
    """Control characters (ANSI escapes, CR...) shown escaped, so the report stays readable."""
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in text)


def notable_lines(log: str, *, limit: int = 20, width: int = 260) -> list[str]:
    """The log lines that matter (warnings, errors, tracebacks' first and last lines),
    grouped by shape (numbers and ids blanked) with a count, at most ``limit`` shapes."""
    lines = log.splitlines()
    picked: list[str] = []
    in_tb = False
    for line in lines:
        if line.startswith("Traceback (most recent call last)"):
            in_tb = True
            picked.append("Traceback (most recent call last):")
            continue
        if in_tb:
            if line.startswith((" ", "\t", "|", "+", "During handling", "The above exception")) or not line.strip():
                continue
            in_tb = False
            picked.append("  -> " + line)
            continue
        if log_level(line) in _PROBLEM_LEVELS or _INTERESTING.search(line[:300]):
            picked.append(line.split(" ", 2)[-1] if re.match(r"\d{4}-\d\d-\d\d ", line) else line)
    shapes: Counter[str] = Counter()
    first: dict[str, str] = {}
    for line in picked:
        shape = _NOISE.sub("#", line[:200])
        shapes[shape] += 1
        first.setdefault(shape, line)
    out = []
    for shape, n in shapes.most_common(limit):
        line = printable(first[shape])
        line = line if len(line) <= width else line[: width - 15] + f"... [{len(first[shape])} chars]"
        out.append(f"{n}x {line}" if n > 1 else line)
    if len(shapes) > limit:
        out.append(f"... and {len(shapes) - limit} other kinds of line")
    return out


def traceback_count(log: str) -> int:
    return log.count("Traceback (most recent call last)")


def leaks_traceback(body: str | bytes) -> bool:
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    return "Traceback (most recent call last)" in text or 'File "/' in text


# ----------------------------------------------------------------------------- processes


def fault_env(**extra: str) -> dict[str, str]:
    env = clean_env(**extra)
    env["PYTHONPATH"] = os.pathsep.join([str(FAULTS_DIR), env["PYTHONPATH"]])
    return env


def _limit_nofile(n: int) -> Callable[[], None]:
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))

    return apply


class Procs:
    """Starts ``jobsvc serve`` children; ``close()`` kills (by PID) whatever still runs."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.started: list[Server] = []

    def spawn(
        self,
        db: str,
        *flags: str,
        tasks: Sequence[str] = ("fault_tasks",),
        env: dict[str, str] | None = None,
        nofile: int | None = None,
        name: str = "server",
    ) -> Server:
        argv = [sys.executable, "-m", "jobsvc", "serve", "--bind", "127.0.0.1:0", "--db", db]
        for module in tasks:
            argv += ["--tasks", module]
        argv += list(flags)
        stderr_path = self.tmp_path / f"{name}-{len(self.started)}.stderr"
        with open(stderr_path, "wb") as stderr:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
                env=env or fault_env(),
                cwd=self.tmp_path,
                preexec_fn=_limit_nofile(nofile) if nofile else None,  # noqa: PLW1509 - only setrlimit
            )
        server = Server(proc, stderr_path, argv)
        self.started.append(server)
        return server

    def start(self, db: str, *flags: str, timeout: float = 30.0, **kwargs: Any) -> Server:
        server = self.spawn(db, *flags, **kwargs)
        server.wait_listening(timeout)
        return server

    def close(self) -> None:
        for server in self.started:
            with contextlib.suppress(Exception):
                server.stop()


def stop_gracefully(server: Server, timeout: float) -> tuple[int | None, float]:
    """SIGTERM; (exit code or None if it did not exit within ``timeout``, seconds taken).
    A server that does not exit in time is killed (by PID)."""
    t0 = time.monotonic()
    server.send(signal.SIGTERM)
    try:
        code: int | None = server.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        code = None
        server.stop()
    return code, time.monotonic() - t0


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def query(db_path: Path, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(db_path, timeout=10)) as conn:
        return conn.execute(sql, args).fetchall()


def integrity(db_path: Path) -> str:
    try:
        rows = query(db_path, "PRAGMA integrity_check")
    except sqlite3.Error as exc:
        return f"error: {exc}"
    return "; ".join(str(r[0]) for r in rows)


def wal_backlog(db_path: Path) -> dict[str, int] | None:
    """Frames in the WAL and how many of them are checkpointed back into the database,
    read from the ``-shm`` wal-index without a connection (so without causing a
    checkpoint): ``mxFrame`` at byte 16 of the index header, ``nBackfill`` at byte 96."""
    try:
        with open(str(db_path) + "-shm", "rb") as f:
            head = f.read(100)
    except OSError:
        return None
    if len(head) < 100:
        return None
    return {
        "frames": int.from_bytes(head[16:20], sys.byteorder),
        "checkpointed": int.from_bytes(head[96:100], sys.byteorder),
        "page_size": int.from_bytes(head[14:16], sys.byteorder),
    }


def file_sizes(db_path: Path) -> dict[str, int]:
    sizes = {}
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(OSError):
            sizes["db" + suffix] = os.stat(str(db_path) + suffix).st_size
    return sizes


def rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def open_fds(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def fd_kinds(pid: int) -> dict[str, int]:
    """The process's open descriptors by kind (``socket``, ``pipe``, a file's name...), and
    its TCP sockets by state (``tcp:ESTAB``...), for a report that says what was held."""
    kinds: Counter[str] = Counter()
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
                kinds[re.sub(r":\[\d+\]$", "", target)] += 1
    except OSError:
        return {}
    states = {"01": "ESTAB", "02": "SYN_SENT", "03": "SYN_RECV", "04": "FIN_WAIT1", "05": "FIN_WAIT2", "06": "TIME_WAIT", "07": "CLOSE", "08": "CLOSE_WAIT", "09": "LAST_ACK", "0A": "LISTEN", "0B": "CLOSING"}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table, encoding="ascii") as f:
            for line in list(f)[1:]:
                cols = line.split()
                if len(cols) > 9 and cols[9] in inodes:
                    kinds[f"tcp:{states.get(cols[3], cols[3])}"] += 1
    return dict(kinds)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def host_port(url: str) -> tuple[str, int]:
    host, _, port = url.removeprefix("http://").partition(":")
    return host, int(port)


# ----------------------------------------------------------------------------- the client history


@attrs.define
class Try:
    key: str
    job_id: str
    n: int  #: try number for this key, from 1
    t_send: float
    t_recv: float
    outcome: str  #: "202", "200", "503", ..., "refused", "ambiguous:ReadError"
    generation: int  #: which server incarnation it was sent to


@attrs.define
class History:
    """Every try of every submission (also appended to a JSON-lines file)."""

    path: Path
    tries: list[Try] = attrs.Factory(list)
    accepted: dict[str, str] = attrs.Factory(dict)  #: key -> job id (2xx)
    accepted_status: dict[str, int] = attrs.Factory(dict)  #: key -> the 2xx that resolved it
    ambiguous_keys: set[str] = attrs.Factory(set)
    bad: list[str] = attrs.Factory(list)  #: what a client must never see
    gave_up: list[str] = attrs.Factory(list)
    first_ack_at: dict[str, float] = attrs.Factory(dict)

    def add(self, t: Try) -> None:
        self.tries.append(t)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(attrs.asdict(t)) + "\n")

    def statuses(self) -> Counter[str]:
        return Counter(t.outcome.split(":")[0] for t in self.tries)

    def ambiguous_resolution(self) -> Counter[str]:
        """How the keys that saw an ambiguous try resolved: 200 (it had been stored), 202
        (it had not), or unresolved."""
        return Counter(str(self.accepted_status.get(k, "unresolved")) for k in self.ambiguous_keys)


class Target:
    """Where submissions go; ``set`` after a restart (the port changes)."""

    def __init__(self, urls: Sequence[str]) -> None:
        self.urls = list(urls)
        self.generation = 0
        self.changed = trio.Event()
        self.down = False

    def set(self, urls: Sequence[str]) -> None:
        self.urls = list(urls)
        self.generation += 1
        self.down = False
        self.changed.set()
        self.changed = trio.Event()


def problem_ok(response: httpx.Response) -> bool:
    return response.headers.get("content-type", "").startswith("application/problem+json") and "retry-after" in response.headers


async def submit_all(
    target: Target,
    jobs: Sequence[tuple[str, dict[str, Any]]],
    history: History,
    *,
    concurrency: int,
    deadline: float,
    max_tries: int = 500,
    timeout: float = 5.0,
    on_progress: Callable[[], None] | None = None,
) -> None:
    """POST every ``(key, body)`` until it is acknowledged (bounded by ``max_tries`` per job
    and ``deadline`` overall). 503/429 and transport errors are retried with the same
    Idempotency-Key; ambiguous ones after the next restart (or 0.5 s)."""
    next_index = 0

    async def one(client: httpx.AsyncClient, index: int, key: str, body: dict[str, Any]) -> None:
        job_id = body.get("id", "")
        rr = index
        for n in range(1, max_tries + 1):
            urls, gen = target.urls, target.generation
            url = urls[rr % len(urls)]
            t0 = time.time()
            try:
                response = await client.post(f"{url}/jobs", json=body, headers={"Idempotency-Key": key})
            except (httpx.ConnectError, httpx.ConnectTimeout):
                history.add(Try(key, job_id, n, t0, time.time(), "refused", gen))
                rr += 1
                with trio.move_on_after(0.2):
                    await target.changed.wait()
                continue
            except httpx.TransportError as exc:
                history.add(Try(key, job_id, n, t0, time.time(), f"ambiguous:{type(exc).__name__}", gen))
                history.ambiguous_keys.add(key)
                rr += 1
                if target.generation == gen:
                    with trio.move_on_after(0.5):
                        await target.changed.wait()
                continue
            status = response.status_code
            history.add(Try(key, job_id, n, t0, time.time(), str(status), gen))
            if leaks_traceback(response.content):
                history.bad.append(f"{key}: a traceback in a {status} response: {response.text[:200]!r}")
            if status in (200, 202):
                got = response.json().get("id")
                if job_id and got != job_id:
                    history.bad.append(f"{key}: asked for id {job_id}, acknowledged as {got}")
                if key in history.accepted and history.accepted[key] != got:
                    history.bad.append(f"{key}: acknowledged as {history.accepted[key]} and as {got}")
                history.accepted[key] = got
                history.accepted_status.setdefault(key, status)
                history.first_ack_at.setdefault(key, time.time())
                if on_progress is not None:
                    on_progress()
                return
            if status in (503, 429):
                if not problem_ok(response):
                    history.bad.append(f"{key}: {status} without problem+json/Retry-After: {dict(response.headers)}")
                rr += 1
                await trio.sleep(min(float(response.headers.get("retry-after", "1") or 1), 0.25))
                continue
            history.bad.append(f"{key}: HTTP {status}: {response.text[:300]!r}")
            if status >= 500:  # unknown fate: resolve it with the same key
                await trio.sleep(0.2)
                continue
            return
        history.gave_up.append(key)

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal next_index
        while next_index < len(jobs):
            i = next_index
            next_index += 1
            key, body = jobs[i]
            await one(client, i, key, body)

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    with trio.move_on_after(deadline) as scope:
        async with httpx.AsyncClient(timeout=timeout, limits=limits) as client, trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(worker, client)
    if scope.cancelled_caught:
        unresolved = [k for k, _ in jobs if k not in history.accepted and k not in history.gave_up]
        history.gave_up.extend(unresolved)


async def state_counts(url: str) -> dict[str, int] | None:
    """Counts by state from ``GET /stats`` (None if the server did not answer)."""
    try:
        async with httpx.AsyncClient(timeout=5) as client:
            response = await client.get(f"{url}/stats")
        if response.status_code != 200:
            return None
        return {k: int(v) for k, v in response.json()["jobs"].items()}
    except (httpx.HTTPError, ValueError, KeyError):
        return None


async def wait_all_final(counts: Callable[[], Any], *, timeout: float, interval: float = 0.2) -> tuple[bool, float, dict[str, int] | None]:
    """Poll ``await counts()`` until nothing is pending, retrying or running (bounded):
    (done, seconds, last counts)."""
    t0 = trio.current_time()
    last = None
    while trio.current_time() - t0 < timeout:
        last = await counts()
        if last is not None and not any(last.get(s, 0) for s in OPEN_STATES):
            return True, trio.current_time() - t0, last
        await trio.sleep(interval)
    return False, trio.current_time() - t0, last


# ----------------------------------------------------------------------------- environment


def is_root() -> bool:
    return os.geteuid() == 0


@contextlib.contextmanager
def tmpfs(size: str) -> Iterator[Path]:
    """A fresh tmpfs of ``size`` (e.g. "8m") mounted on a temporary directory; unmounted and
    removed afterwards. Root only."""
    mountpoint = Path(tempfile.mkdtemp(prefix="jobsvc-faults-tmpfs-"))
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(mountpoint)], capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        mountpoint.rmdir()
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        for args in (["umount", str(mountpoint)], ["umount", "-l", str(mountpoint)]):
            if subprocess.run(args, capture_output=True, timeout=30, check=False).returncode == 0:
                break
        with contextlib.suppress(OSError):
            mountpoint.rmdir()


def find_pg_bindir() -> Path | None:
    """The newest PostgreSQL server binaries on this machine (initdb, pg_ctl, postgres)."""
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    for bindir in reversed(candidates):
        if (bindir / "initdb").exists() and (bindir / "pg_ctl").exists():
            return bindir
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=False).stdout.strip()
        if out and (Path(out) / "initdb").exists():
            return Path(out)
    return None


class PgCluster:
    """A throwaway PostgreSQL cluster: initdb into a temporary directory, one free loopback
    port, its socket in that directory; ``destroy()`` stops it and removes everything.
    The shared server on 5432 is never touched. As root, the cluster runs as ``postgres``."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.base = Path(tempfile.mkdtemp(prefix="jobsvc-faults-pg-"))
        self.data = self.base / "data"
        self.logfile = self.base / "postgres.log"
        self.port = free_port()
        self.user: str | None = None
        if is_root():
            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                pytest.skip("running as root and there is no 'postgres' user to run a throwaway cluster as")
            self.user = "postgres"
            os.chown(self.base, pw.pw_uid, pw.pw_gid)
            os.chmod(self.base, 0o755)

    def _run(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bindir / argv[0]), *argv[1:]]
        if self.user:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, cwd=self.base)

    def init(self) -> None:
        done = self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed: {done.stderr[-2000:]}")

    def start(self) -> float:
        """Start and wait until it accepts connections; seconds taken."""
        t0 = time.monotonic()
        options = f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c max_connections=100 -c shared_buffers=32MB"
        done = self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.logfile), "-w", "-t", "60", "start")
        if done.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed: {done.stdout[-1000:]} {done.stderr[-1000:]} {self.log()[-2000:]}")
        return time.monotonic() - t0

    def stop(self, mode: str = "fast") -> float:
        t0 = time.monotonic()
        done = self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")
        if done.returncode != 0 and "is the server running" not in done.stderr:
            raise RuntimeError(f"pg_ctl stop -m {mode} failed: {done.stderr[-1000:]}")
        return time.monotonic() - t0

    def running(self) -> bool:
        return self._run("pg_ctl", "-D", str(self.data), "status", timeout=20).returncode == 0

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{db}"

    def version(self) -> str:
        done = subprocess.run([str(self.bindir / "postgres"), "--version"], capture_output=True, text=True, timeout=10, check=False)
        return done.stdout.strip()

    def log(self) -> str:
        try:
            return self.logfile.read_text(errors="replace")
        except OSError:
            return ""

    def destroy(self) -> None:
        with contextlib.suppress(Exception):
            if self.data.exists() and self.running():
                self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)


# ----------------------------------------------------------------------------- the report


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "-"


def _meminfo() -> str:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            total = next(line for line in f if line.startswith("MemTotal:"))
        return f"{int(total.split()[1]) // 1024} MiB"
    except (OSError, StopIteration):
        return "?"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), platform.processor() or "?")
    except OSError:
        return "?"


def _git_commit() -> str:
    try:
        done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10, check=False, cwd=REPO_DIR)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "jobsvc"], capture_output=True, text=True, timeout=10, check=False, cwd=REPO_DIR)
        return done.stdout.strip() + (" (jobsvc/ modified)" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "?"


def environment() -> list[tuple[str, str]]:
    bindir = find_pg_bindir()
    pg = "-"
    if bindir:
        pg = subprocess.run([str(bindir / "postgres"), "--version"], capture_output=True, text=True, timeout=10, check=False).stdout.strip()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    versions = ", ".join(f"{n} {_version(n)}" for n in ("jobsvc", "trio", "hypercorn", "starlette", "httpx", "psycopg", "psycopg-pool"))
    return [
        ("date", _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")),
        ("scale", f"{scale()} (FAULTS_SCALE; seed {seed()})"),
        ("machine", f"{socket.gethostname()}: {os.cpu_count()} CPUs ({_cpu_model()}), {_meminfo()} RAM, load average {load} at the start"),
        ("system", f"{platform.platform()}, running as {'root' if is_root() else 'uid ' + str(os.geteuid())}"),
        ("python", f"{platform.python_implementation()} {platform.python_version()}, SQLite {sqlite3.sqlite_version}"),
        ("versions", versions),
        ("PostgreSQL", f"{pg} (a throwaway cluster per run)"),
        ("commit", _git_commit()),
    ]


def _cell(value: Any) -> str:
    return "-" if value is None or value == "" else str(value).replace("|", "\\|")


def in_order(results: Sequence[Result]) -> list[Result]:
    """By scenario number (1, 2, 3a, 3b, ...)."""
    return sorted(results, key=lambda r: (int(re.match(r"\d+", r.key).group()) if re.match(r"\d+", r.key) else 99, r.key))  # type: ignore[union-attr]


def render_report(results: Sequence[Result], env: Sequence[tuple[str, str]]) -> str:
    results = in_order(results)
    out = ["# jobsvc fault campaign", "", "Generated by `tests/faults` (`make faults`; `FAULTS_SCALE=short|medium|full`).", ""]
    out += [f"- **{k}**: {v}" for k, v in env]
    out += ["", "## Results", "", "| # | scenario | result | acknowledged | lost | duplicated | time to recover | failed checks |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        failed = "; ".join(c.name for c in r.failed_checks) or ("-" if r.status != "ERROR" else "harness error")
        out.append(
            f"| {r.key} | {_cell(r.title)} | **{r.status}** | {_cell(r.acked)} | {_cell(r.lost)} | {_cell(r.duplicated)} | {_cell(r.recover)} | {_cell(failed)} |"
        )
    for r in results:
        out += ["", f"## {r.key}. {r.title}: {r.status} ({r.duration:.1f} s, scale {r.scale})", ""]
        if r.error:
            out += ["**Error:**", "", "```", r.error[:3000], "```", ""]
        if r.checks:
            out += ["Checks:", ""]
            out += [f"- {'PASS' if c.ok else '**FAIL**'} {c.name}" + (f": {c.detail}" if c.detail else "") for c in r.checks]
            out.append("")
        if r.observations:
            out += ["Observations:", ""]
            out += [f"- {k}: {v}" for k, v in r.observations]
            out.append("")
        if r.notes:
            out += ["Notes:", ""]
            out += [f"- {n}" for n in r.notes]
            out.append("")
        for label, lines in r.logs.items():
            out += [f"Server log, {label} (lines that matter, grouped):", "", "```"]
            out += lines or ["(no warnings, errors or tracebacks)"]
            out += ["```", ""]
    return "\n".join(out).rstrip() + "\n"
