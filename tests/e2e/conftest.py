"""End-to-end harness: real ``python -m jobsvc serve`` processes on 127.0.0.1, port 0.

Rules for the tests in this folder:

- Every process is started through the ``servers`` fixture (or ``run_jobsvc`` for ones
  expected to exit at once) and, if still alive at teardown, is killed by its own PID.
- The child gets a clean environment: ``os.environ`` minus every ``JOBSVC_*`` key (the
  service rejects unknown ones), plus ``tests/`` on ``PYTHONPATH`` for ``e2e_tasks``.
- Synchronisation is polling with a deadline (``wait_until``), never a fixed sleep.
- A server's stderr goes to a file under ``tmp_path``; teardown prints it, so a failing
  test shows the service's log.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from jobsvc_processes import Server, clean_env, query, serve_argv, wait_until


class Servers:
    """The ``servers`` fixture: starts servers (``servers.start(db_path, *flags)``) and carries
    the harness helpers, so test modules need not import this conftest."""

    clean_env = staticmethod(clean_env)
    serve_argv = staticmethod(serve_argv)
    wait_until = staticmethod(wait_until)
    query = staticmethod(query)

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.started: list[Server] = []

    def spawn(self, db_path: Path, *args: str, tasks: Sequence[str] = ("e2e_tasks",), env: dict[str, str] | None = None) -> Server:
        """Start a server without waiting for it to listen."""
        argv = serve_argv(db_path, *args, tasks=tasks)
        stderr_path = self.tmp_path / f"server-{len(self.started)}.stderr"
        with open(stderr_path, "wb") as stderr:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr, env=env or clean_env(), cwd=self.tmp_path)
        server = Server(proc, stderr_path, argv)
        self.started.append(server)
        return server

    def start(self, db_path: Path, *args: str, tasks: Sequence[str] = ("e2e_tasks",), env: dict[str, str] | None = None) -> Server:
        """Start a server and wait until it prints ``listening on``."""
        server = self.spawn(db_path, *args, tasks=tasks, env=env)
        server.wait_listening()
        return server

    def run(self, argv: Sequence[str], *, env: dict[str, str], timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
        return run_jobsvc(argv, env=env, timeout=timeout, cwd=self.tmp_path)

    def close(self) -> None:
        for i, server in enumerate(self.started):
            server.stop()
            print(f"--- server {i} (pid {server.pid}, exit {server.proc.returncode}): {' '.join(server.argv[1:])}")
            print(server.log()[-8000:])


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Servers]:
    factory = Servers(tmp_path)
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "jobs.db"


def run_jobsvc(argv: Sequence[str], *, env: dict[str, str], timeout: float = 20.0, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run a jobsvc command expected to exit on its own; kill it (by PID) if it does not."""
    proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{' '.join(argv)} did not exit within {timeout:g}s; stdout: {out!r}; stderr: {err!r}")
    return subprocess.CompletedProcess(list(argv), proc.returncode, out, err)
