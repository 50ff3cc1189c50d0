"""Real ``jobsvc serve`` child processes for the end-to-end tests (SQLite and PostgreSQL).

Every process is started with a clean environment (no ``JOBSVC_*`` keys, ``tests/`` on
``PYTHONPATH``), reads its ``listening on`` line with a deadline, logs to a file, and is
killed by its own PID if still alive at the end.
"""

from __future__ import annotations

import os
import select
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import closing
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

T = TypeVar("T")

TESTS_DIR = Path(__file__).resolve().parent
#: How long a server may take to print ``listening on``.
STARTUP_DEADLINE = 20.0
POLL_INTERVAL = 0.05


def clean_env(**extra: str) -> dict[str, str]:
    """os.environ without JOBSVC_* keys, with tests/ on PYTHONPATH, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBSVC_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS_DIR), os.environ.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env


def serve_argv(db_path: Path, *args: str, tasks: Sequence[str] = ("e2e_tasks",)) -> list[str]:
    argv = [sys.executable, "-m", "jobsvc", "serve", "--bind", "127.0.0.1:0", "--db", f"sqlite:///{db_path}"]
    for module in tasks:
        argv += ["--tasks", module]
    return [*argv, *args]


def wait_until(predicate: Callable[[], T], *, timeout: float, what: str, interval: float = POLL_INTERVAL) -> T:
    """Call ``predicate`` every ``interval`` s until it returns something truthy; return it.

    Fails the test after ``timeout`` seconds, naming ``what`` it was waiting for.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what} (last value: {value!r})")
        time.sleep(interval)


def query(db_path: Path, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """Rows from the SQLite file itself (for a stopped server, or reads beside a live one)."""
    with closing(sqlite3.connect(db_path, timeout=5)) as conn:
        return conn.execute(sql, args).fetchall()


class Server:
    """One ``jobsvc serve`` child process."""

    def __init__(self, proc: subprocess.Popen[bytes], stderr_path: Path, argv: list[str]) -> None:
        self.proc = proc
        self.stderr_path = stderr_path
        self.argv = argv
        self.url = ""
        self.started_at = time.monotonic()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        try:
            return self.stderr_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def wait_listening(self, timeout: float = STARTUP_DEADLINE) -> str:
        """Read stdout until ``listening on URL``; return URL."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        buffer = b""
        deadline = time.monotonic() + timeout
        while b"\n" not in buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(f"jobsvc did not print 'listening on' within {timeout:g}s; stderr:\n{self.log()}")
            ready, _, _ = select.select([fd], [], [], remaining)
            if ready:
                chunk = os.read(fd, 4096)
                if not chunk:
                    self.proc.wait(timeout=5)
                    pytest.fail(f"jobsvc exited with code {self.proc.returncode} before listening; stderr:\n{self.log()}")
                buffer += chunk
        line = buffer.split(b"\n", 1)[0].decode()
        assert line.startswith("listening on http://127.0.0.1:"), f"unexpected first line {line!r}"
        self.url = line.removeprefix("listening on ").strip()
        return self.url

    def send(self, signum: signal.Signals) -> None:
        if self.proc.poll() is None:
            os.kill(self.pid, signum)

    def wait_exit(self, timeout: float) -> int:
        """The exit code; fails the test if the process is still running after ``timeout``."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"jobsvc (pid {self.pid}) still running {timeout:g}s later; stderr:\n{self.log()}")

    def client(self, timeout: float = 10.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout)

    def stop(self) -> None:
        """Kill (by PID) if still running, reap, close the pipe."""
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


