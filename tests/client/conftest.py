"""Fixtures for the client tests (``jobsvc.client`` and the ``jobsvc submit|get|...`` commands).

Rules, besides the ones in ``tests/conftest.py``:

- The Python client runs in process: against the real app (``httpx.ASGITransport`` over a
  running ``JobService`` on the memory store, virtual time) where the server can show the
  behaviour, and against ``httpx.MockTransport`` for the faults a server will not produce
  on demand (429, 503, lost responses, malformed answers).
- Waiting and retrying are timed exactly: the async client on trio's ``autojump_clock``,
  the sync client with a ``FakeTime`` passed as its ``sleep`` and ``clock``.
- The CLI runs against one real ``jobsvc serve`` per module (``live_server``: SQLite,
  127.0.0.1 port 0, killed by its PID at the end), in process through ``jobsvc.cli.main``
  (``jobsvc`` fixture), and once as a real child process.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from jobsvc_processes import Server, clean_env, serve_argv

from jobsvc import cli

JOB_JSON: dict[str, Any] = {
    "id": "job-1",
    "task": "echo",
    "state": "pending",
    "payload": {"n": 1},
    "priority": 0,
    "attempts": 0,
    "max_attempts": 5,
    "rescues": 0,
    "run_at": "2026-11-29T10:00:00Z",
    "created_at": "2026-11-29T10:00:00Z",
    "updated_at": "2026-11-29T10:00:00Z",
    "finished_at": None,
    "result": None,
    "errors": [],
    "idempotency_key": None,
    "cancel_requested": False,
    "tenant": None,
}


def job_json(**changes: Any) -> dict[str, Any]:
    """A job as the API shows it (``JOB_JSON`` with ``changes``)."""
    return {**JOB_JSON, **changes}


@attrs.define
class FakeTime:
    """The sync client's ``sleep`` and ``clock``: sleeping moves the clock; sleeps are recorded."""

    now: float = 0.0
    slept: list[float] = attrs.Factory(list)

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.slept.append(seconds)
        self.now += seconds

    def clock(self) -> float:
        return self.now


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


@attrs.frozen
class Run:
    """What one ``jobsvc ...`` command did."""

    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


JobsvcRunner = Callable[..., Run]


@pytest.fixture
def jobsvc(capsys: pytest.CaptureFixture[str]) -> JobsvcRunner:
    """``jobsvc("get", "ID", "--url", URL)``: runs ``jobsvc.cli.main`` in process -> Run."""

    def run(*argv: str) -> Run:
        capsys.readouterr()
        try:
            code = cli.main(list(argv))
        except SystemExit as exc:  # argparse: usage errors, --help
            code = int(exc.code or 0)
        out, err = capsys.readouterr()
        assert "Traceback" not in out + err
        return Run(code, out, err)

    return run


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One real ``jobsvc serve`` (SQLite, built-in tasks only) for the tests of a module."""
    tmp: Path = tmp_path_factory.mktemp("client-server")
    argv = serve_argv(tmp / "jobs.db", tasks=())
    stderr_path = tmp / "server.stderr"
    with open(stderr_path, "wb") as stderr:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr, env=clean_env(), cwd=tmp)
    server = Server(proc, stderr_path, argv)
    try:
        server.wait_listening()
        yield server
    finally:
        server.stop()
        print(f"--- jobsvc serve (pid {server.pid}, exit {server.proc.returncode}):\n{server.log()[-8000:]}")
