"""The same JSON logs from real processes: ``hypercorn --worker-class trio jobsvc.asgi:app``
(logging set up in the ASGI lifespan) and ``jobsvc serve``.

Rules as in tests/e2e: 127.0.0.1 only, a clean environment, polling with a deadline, every
process stopped by its own PID. hypercorn's CLI cannot bind port 0: a free port is picked
first (a tiny race with other programs picking ports, accepted here).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import json_lines
from jobsvc_processes import clean_env, wait_until

pytestmark = pytest.mark.e2e

OBS_DIR = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def argv(kind: str, port: int, db: Path) -> list[str]:
    if kind == "hypercorn":
        return [sys.executable, "-m", "hypercorn", "--worker-class", "trio", "--bind", f"127.0.0.1:{port}", "jobsvc.asgi:app"]
    return [sys.executable, "-m", "jobsvc", "serve", "--bind", f"127.0.0.1:{port}", "--db", f"sqlite:///{db}", "--tasks", "obstasks"]


@pytest.fixture
def process(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes started by the test; killed by PID (and reaped) if still running."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@pytest.mark.parametrize("kind", ["hypercorn", "serve"])
def test_json_logs_from_a_real_process(kind: str, tmp_path: Path, process: list[subprocess.Popen[bytes]]) -> None:
    """Submit a job to a real server whose stderr is a file: every stderr line is a JSON
    object, the job events carry job_id, task, attempt (and the request id for the
    submission), the handler's ctx.log line and the access line are there, and so is
    hypercorn's own "Running on" line (rerouted into the same format)."""
    port = free_port()
    db = tmp_path / "jobs.db"
    env = clean_env(
        JOBSVC_DB=f"sqlite:///{db}",
        JOBSVC_TASKS="obstasks",
        JOBSVC_GRACE="2",
        PYTHONPATH=os.pathsep.join([str(OBS_DIR), clean_env()["PYTHONPATH"]]),
    )
    stderr_path = tmp_path / "stderr.log"
    with open(stderr_path, "wb") as stderr:
        proc = subprocess.Popen(argv(kind, port, db), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr, env=env, cwd=tmp_path)
    process.append(proc)
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        if proc.poll() is not None:
            pytest.fail(f"{kind} exited with {proc.returncode}:\n{stderr_path.read_text()}")
        try:
            return httpx.get(f"{url}/health", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    wait_until(healthy, timeout=30, what=f"{kind} to answer /health")
    with httpx.Client(base_url=url, timeout=10) as client:
        r = client.post("/jobs", json={"task": "chatty", "payload": "do-not-log-me"}, headers={"X-Request-ID": "e2e-req-1"})
        assert r.status_code == 202, r.text
        assert r.headers["x-request-id"] == "e2e-req-1"
        job_id = r.json()["id"]
        assert client.get(f"/jobs/{job_id}", params={"wait": 10}).json()["state"] == "succeeded"
    os.kill(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=30) == 0

    text = stderr_path.read_text()
    records = json_lines(text)  # fails on any line that is not a JSON object
    assert "do-not-log-me" not in text

    def pick(event: str) -> dict[str, Any]:
        found = [r for r in records if r.get("event") == event and r.get("job_id") == job_id]
        assert len(found) == 1, (event, text)
        return found[0]

    submitted, started, succeeded = pick("job.submitted"), pick("job.started"), pick("job.succeeded")
    assert (submitted["task"], submitted["attempt"], submitted["request_id"]) == ("chatty", 1, "e2e-req-1")
    assert (started["attempt"], succeeded["attempt"], succeeded["level"]) == (1, 1, "info")
    assert "request_id" not in started
    said = pick("working on it: step 1 of 1")
    assert (said["task"], said["attempt"], said["logger"]) == ("chatty", 1, "jobsvc.job")
    access = [r for r in records if r.get("event") == "http.request" and r.get("request_id") == "e2e-req-1"]
    assert [(a["method"], a["route"], a["status"]) for a in access] == [("POST", "/jobs", 202)]
    if kind == "hypercorn":
        assert any(r["logger"] == "hypercorn.error" and r["event"].startswith("Running on") for r in records), text
