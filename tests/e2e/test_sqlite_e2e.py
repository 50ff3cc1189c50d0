"""End-to-end tests on real ``jobsvc serve`` processes with the SQLite store.

RELIABILITY.md §5: T1 (SIGKILL, lost = 0) and T2 (SIGTERM drain) in the small, plus the
seed's curl examples and the start-up errors (locked database, unknown variable).
"""

from __future__ import annotations

import random
import re
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from e2e_tasks import read_ledger

pytestmark = pytest.mark.e2e

FINAL = {"succeeded", "dead", "cancelled"}
SEED_HEALTH = "curl http://localhost:3000/health"
SEED_SUBMIT = """curl -X POST http://localhost:3000/submit \\
  -H "Content-Type: application/json" \\
  -d '{"id": 1, "task_type": "email", "payload": "send welcome email"}'"""


def _seed(command: str, url: str) -> str:
    """The seed's command with its address swapped for the test server's, nothing else."""
    return command.replace("http://localhost:3000", url)


def _curl(command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=20, check=False)


def _job(client: httpx.Client, job_id: str) -> dict[str, Any]:
    response = client.get(f"/jobs/{job_id}")
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def _ids_in(client: httpx.Client, states: str) -> list[str]:
    """Ids of every job in ``states`` (comma-separated), following ``next`` links."""
    ids: list[str] = []
    url: str | None = f"/jobs?state={states}&limit=1000"
    while url:
        response = client.get(url)
        assert response.status_code == 200, response.text
        body = response.json()
        ids += [job["id"] for job in body["jobs"]]
        url = body["next"]
    return ids


def _state_counts(servers: Any, db_path: Path) -> dict[str, int]:
    return dict(servers.query(db_path, "SELECT state, count(*) FROM jobs GROUP BY state"))


def _submit(client: httpx.Client, task: str, payload: Any) -> str:
    response = client.post("/jobs", json={"task": task, "payload": payload})
    assert response.status_code == 202, response.text
    return response.json()["id"]  # type: ignore[no-any-return]


def _metric_sum(text: str, outcome: str) -> float:
    pattern = re.compile(r'^jobsvc_job_outcomes_total\{[^}]*outcome="' + re.escape(outcome) + r'"[^}]*\} (\S+)$', re.M)
    return sum(float(v) for v in pattern.findall(text))


# -- the seed's curl examples -----------------------------------------------------------


@pytest.mark.parametrize(
    ("failure_rate", "expected"),
    [("0", {"succeeded"}), ("1", {"dead"}), (None, {"succeeded", "dead"})],
    ids=["rate-0-succeeds", "rate-1-dead", "seed-default-rate"],
)
def test_seed_curl_examples(servers: Any, db_path: Path, failure_rate: str | None, expected: set[str]) -> None:
    """The seed's two curl commands work unchanged and job 1 reaches a final state via /status/1."""
    env = servers.clean_env(**({"JOBSVC_DEMO_FAILURE_RATE": failure_rate} if failure_rate is not None else {}))
    server = servers.start(db_path, tasks=["jobsvc.demo"], env=env)

    health = _curl(_seed(SEED_HEALTH, server.url))
    assert health.returncode == 0, health.stderr
    assert httpx.Response(200, content=health.stdout).json()["status"] == "ok"

    submitted = _curl(_seed(SEED_SUBMIT, server.url))
    assert submitted.returncode == 0, submitted.stderr
    body = httpx.Response(202, content=submitted.stdout).json()
    assert body["id"] == "1"
    assert body["task"] == "email"
    assert body["status_url"] == "/status/1"

    with server.client() as client:

        def final() -> dict[str, Any] | None:
            status = client.get("/status/1").json()
            return status if status["status"] in FINAL else None

        status = servers.wait_until(final, timeout=15, what="/status/1 to reach a final state")
    assert status["status"] in expected, status
    assert status["payload"] == "send welcome email"
    if status["status"] == "dead":
        assert status["attempts"] == 3
        assert [e["type"] for e in status["errors"]] == ["NetworkIssue"] * 3


# -- T1 in the small: kill -9 mid-run ------------------------------------------------------


def test_kill_9_mid_run_loses_no_accepted_job(servers: Any, db_path: Path, tmp_path: Path) -> None:
    """After kill -9 with jobs pending and running, a restart on the same file finishes every accepted job."""
    ledger = tmp_path / "ledger.txt"
    rng = random.Random(1234)
    first = servers.start(db_path, "--workers", "8")
    accepted: list[str] = []
    sleepers: set[str] = set()
    with first.client() as client:
        for i in range(300):
            if i % 3 == 0:
                accepted.append(_submit(client, "noop", None))
            else:
                job_id = _submit(client, "ledger", {"path": str(ledger), "seconds": round(rng.uniform(0.05, 0.3), 3)})
                accepted.append(job_id)
                sleepers.add(job_id)
        servers.wait_until(lambda: len(_ids_in(client, "succeeded")) >= 20, timeout=20, what="20 jobs to succeed")
    first.send(signal.SIGKILL)
    assert first.wait_exit(10) == -signal.SIGKILL
    assert len(set(accepted)) == 300

    at_kill = _state_counts(servers, db_path)
    orphans = at_kill.get("running", 0)
    assert orphans > 0, f"the kill should hit running jobs: {at_kill}"
    assert at_kill.get("pending", 0) > 0, f"the kill should leave pending jobs: {at_kill}"
    assert sum(at_kill.values()) == 300

    restarted_at = time.monotonic()
    second = servers.start(db_path, "--workers", "8")
    with second.client() as client:
        servers.wait_until(lambda: not _ids_in(client, "pending,retrying,running"), timeout=30, what="every job to be final")
        elapsed = time.monotonic() - restarted_at
        succeeded = _ids_in(client, "succeeded")
        metrics = client.get("/metrics").text
    print(f"kill -9 with {orphans} running and {at_kill.get('pending', 0)} pending: restart -> all final in {elapsed:.2f}s")

    assert sorted(succeeded) == sorted(accepted)
    assert _state_counts(servers, db_path) == {"succeeded": 300}
    assert f"recovered {orphans} job(s) left running by a previous process" in second.log()
    assert _metric_sum(metrics, "rescued") == orphans
    assert servers.query(db_path, "SELECT count(*) FROM jobs WHERE rescues = 1")[0][0] == orphans
    executions = read_ledger(ledger)
    assert set(executions) == sleepers, "every ledger job ran at least once, and nothing else did"
    duplicates = [job_id for job_id, n in executions.items() if n > 1]
    assert len(duplicates) <= orphans, "only jobs running at the kill may run twice"


# -- T2 in the small: SIGTERM drain --------------------------------------------------------


def _open_request(url: str, head: bytes) -> socket.socket:
    """A connection with the start of a request sent (the rest follows in _finish_request)."""
    host, _, port = url.removeprefix("http://").partition(":")
    sock = socket.create_connection((host, int(port)), timeout=5)
    sock.sendall(head)
    return sock


def _finish_request(sock: socket.socket, rest: bytes) -> tuple[int | None, dict[str, str]]:
    """Send the rest; the response's status and headers, or (None, {}) if the server closed it."""
    with sock:
        try:
            sock.sendall(rest)
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = sock.recv(65536)
                if not chunk:
                    return None, {}
                data += chunk
        except OSError:
            return None, {}
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in head[1:])
    return int(head[0].split()[1]), headers



def _start_busy(servers: Any, db_path: Path, *flags: str, long: int, short: int, queued: int, long_seconds: float) -> tuple[Any, list[str], list[str], list[str]]:
    """A server with ``long`` + ``short`` sleep jobs running (8 workers) and ``queued`` waiting."""
    assert long + short == 8
    server = servers.start(db_path, "--workers", "8", *flags)
    with server.client() as client:
        long_ids = [_submit(client, "sleep", {"seconds": long_seconds}) for _ in range(long)]
        short_ids = [_submit(client, "sleep", {"seconds": 1.5}) for _ in range(short)]
        queued_ids = [_submit(client, "noop", None) for _ in range(queued)]
        running = set(long_ids + short_ids)
        servers.wait_until(lambda: running <= set(_ids_in(client, "running")), timeout=10, what="all sleep jobs to run")
    return server, long_ids, short_ids, queued_ids


def test_sigterm_drains_within_grace_and_releases_unfinished_jobs(servers: Any, db_path: Path) -> None:
    """SIGTERM with --grace 2: exit 0 within grace, short jobs finish, long ones go back to pending unburnt."""
    grace = 2.0
    server, long_ids, short_ids, queued_ids = _start_busy(servers, db_path, "--grace", str(grace), long=4, short=4, queued=4, long_seconds=5)

    with server.client() as client:
        assert client.get("/ready").status_code == 200
    # Requests already in flight when the signal lands (new connections are refused at once):
    # /ready with its headers unfinished, and a POST /jobs whose body is still on its way.
    # Best effort: hypercorn may close either on shutdown; an answer must be 503.
    ready = _open_request(server.url, b"GET /ready HTTP/1.1\r\nHost: localhost\r\n")
    body = b'{"task": "noop"}'
    post = _open_request(server.url, b"POST /jobs HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body))
    sent_at = time.monotonic()
    server.send(signal.SIGTERM)
    servers.wait_until(lambda: "received: shutting down gracefully" in server.log(), timeout=grace, what="the signal to be handled")
    ready_status, _ = _finish_request(ready, b"\r\n")
    post_status, post_headers = _finish_request(post, body)
    assert ready_status in (None, 503), f"/ready answered {ready_status} while draining"
    assert post_status in (None, 503), f"POST /jobs answered {post_status} while draining"
    if post_status == 503:
        assert post_headers.get("content-type") == "application/problem+json"
        assert "retry-after" in post_headers

    code = server.wait_exit(grace + 5)
    took = time.monotonic() - sent_at
    print(f"SIGTERM -> exit {code} in {took:.2f}s (grace {grace:g}s); in-flight /ready got {ready_status}, POST got {post_status}")
    assert code == 0
    assert took <= grace + 1.5, f"the drain took {took:.2f}s, more than grace + 1.5s"

    assert servers.query(db_path, "SELECT count(*) FROM jobs WHERE state = 'running'") == [(0,)]
    rows = {job_id: (state, attempts) for job_id, state, attempts in servers.query(db_path, "SELECT id, state, attempts FROM jobs")}
    assert {rows[i] for i in long_ids} == {("pending", 0)}, "long jobs are released, attempt not burnt"
    assert {rows[i] for i in short_ids} == {("succeeded", 1)}, "short jobs finish inside the grace period"
    assert {rows[i] for i in queued_ids} == {("pending", 0)}, "nothing new is claimed while draining"
    assert len(rows) == 12, "a POST during the drain must not be accepted"

    again = servers.start(db_path, "--workers", "8")
    with again.client() as client:
        for job_id in long_ids + queued_ids:
            job = client.get(f"/jobs/{job_id}?wait=15").json()
            assert job["state"] == "succeeded", job
            assert job["attempts"] == 1, job


def test_second_sigterm_stops_at_once(servers: Any, db_path: Path) -> None:
    """A second SIGTERM during the drain stops now (exit 0 long before the grace) and still releases jobs."""
    grace = 30.0
    server, long_ids, short_ids, _ = _start_busy(servers, db_path, "--grace", str(grace), long=8, short=0, queued=0, long_seconds=60)
    server.send(signal.SIGTERM)
    servers.wait_until(lambda: "received: shutting down gracefully" in server.log(), timeout=5, what="the first signal to be handled")
    sent_at = time.monotonic()
    server.send(signal.SIGTERM)
    code = server.wait_exit(10)
    took = time.monotonic() - sent_at
    print(f"second SIGTERM -> exit {code} in {took:.2f}s (grace {grace:g}s)")
    assert code == 0
    assert took < 3.0, f"a second signal should stop at once, took {took:.2f}s"
    assert "received again: stopping now" in server.log()
    assert servers.query(db_path, "SELECT count(*) FROM jobs WHERE state = 'running'") == [(0,)]
    assert set(servers.query(db_path, "SELECT state, attempts FROM jobs")) == {("pending", 0)}


def test_client_disconnect_mid_body_is_not_an_error(servers: Any, db_path: Path) -> None:
    """A client that hangs up halfway through a POST body leaves no error or traceback in the log."""
    server = servers.start(db_path)
    post = _open_request(server.url, b"POST /jobs HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n")
    post.sendall(b'{"task": "noop", ')
    with server.client() as client:  # served after it, so the POST connection was accepted (FIFO backlog)
        assert client.get("/health").status_code == 200
    post.close()
    server.send(signal.SIGTERM)  # the process ends only after the request's handler has: the log is complete
    assert server.wait_exit(10) == 0
    log = server.log()
    assert "Traceback" not in log, log
    assert " ERROR " not in log, log
    assert servers.query(db_path, "SELECT count(*) FROM jobs") == [(0,)]


# -- start-up errors ------------------------------------------------------------------------


def test_second_server_on_same_sqlite_file_exits_2(servers: Any, db_path: Path) -> None:
    """A second jobsvc on a SQLite file in use exits with code 2 and says the file is locked."""
    first = servers.start(db_path)
    result = servers.run(servers.serve_argv(db_path), env=servers.clean_env())
    assert result.returncode == 2, result
    assert "listening on" not in result.stdout
    assert f"another jobsvc process is using '{db_path}'" in result.stderr
    assert result.stderr.count("\n") == 1, f"one clear line, not a traceback: {result.stderr}"
    with first.client() as client:
        assert client.get("/health").status_code == 200, "the first server is unaffected"


def test_unknown_jobsvc_variable_exits_2(servers: Any, db_path: Path) -> None:
    """An unknown JOBSVC_FOO=1 in the environment stops start-up with exit code 2 naming it."""
    result = servers.run(servers.serve_argv(db_path), env=servers.clean_env(JOBSVC_FOO="1"))
    assert result.returncode == 2, result
    assert "listening on" not in result.stdout
    assert "unknown environment variable JOBSVC_FOO" in result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert not db_path.exists(), "nothing is opened before the configuration is valid"


def test_a_handler_that_ignores_cancellation_cannot_hold_the_process(servers: Any, db_path: Path) -> None:
    """A handler blocked in a thread trio may not abandon: SIGTERM (grace 0.5 s) cancels it,
    STUCK_AFTER (1 s) later it is written off and its job handed back, and the process exits
    0 with an error line naming it, without waiting for the thread."""
    from jobsvc.service.runner import STUCK_AFTER

    server = servers.start(db_path, "--grace", "0.5")
    with server.client() as client:
        job = client.post("/jobs", json={"task": "uncancellable"}).json()
        servers.wait_until(lambda: client.get(f"/jobs/{job['id']}").json()["state"] == "running", timeout=10, what="the job to run")
    sent_at = time.monotonic()
    server.send(signal.SIGTERM)
    code = server.wait_exit(10)
    took = time.monotonic() - sent_at
    assert code == 0 and took <= 0.5 + STUCK_AFTER + 2, (code, took)
    log = server.log()
    assert "written off" in log and "handler(s) that ignore cancellation still run" in log
    assert servers.query(db_path, "SELECT state, attempts FROM jobs") == [("pending", 0)]


def test_a_handler_that_blocks_the_loop_past_the_drain_ends_with_exit_code_3(servers: Any, db_path: Path) -> None:
    """A handler that blocks the event loop once cancelled: nothing in trio runs any more, so
    the watchdog's thread ends the process grace + STOP_SLACK + FORCE_SLACK after SIGTERM,
    with exit code 3 and one error line; the job, left running, is rescued at the next start."""
    from jobsvc.server import EXIT_STUCK, FORCE_SLACK, STOP_SLACK

    server = servers.start(db_path, "--grace", "0.5")
    with server.client() as client:
        job = client.post("/jobs", json={"task": "blocks_loop_when_cancelled"}).json()
        servers.wait_until(lambda: client.get(f"/jobs/{job['id']}").json()["state"] == "running", timeout=10, what="the job to run")
    sent_at = time.monotonic()
    server.send(signal.SIGTERM)
    budget = 0.5 + STOP_SLACK + FORCE_SLACK
    code = server.wait_exit(budget + 10)
    took = time.monotonic() - sent_at
    assert code == EXIT_STUCK and budget - 0.5 <= took <= budget + 3, (code, took)
    assert "a job handler ignores cancellation" in server.log()
    assert servers.query(db_path, "SELECT state FROM jobs") == [("running",)]
    again = servers.start(db_path, "--grace", "0.5")
    with again.client() as client:
        rescued = client.get(f"/jobs/{job['id']}").json()
        assert (rescued["state"], rescued["rescues"]) in (("running", 1), ("pending", 1)), rescued
