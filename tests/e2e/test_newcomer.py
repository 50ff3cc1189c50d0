"""What a newcomer tripped over, on real processes: ``jobsvc serve --tasks`` with a module
in the current directory, ``make run`` and its signals, and ``hypercorn --workers 2
jobsvc.asgi:app`` on SQLite.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from jobsvc_processes import Server, clean_env

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _write_task_module(folder: Path) -> None:
    (folder / "myapp").mkdir()
    (folder / "myapp" / "__init__.py").write_text("")
    (folder / "myapp" / "tasks.py").write_text(
        textwrap.dedent(
            '''
            from jobsvc.tasks import task

            @task("hello")
            async def hello(payload, ctx):
                """Says hello."""
                return {"hello": payload}
            '''
        )
    )


def test_serve_imports_task_modules_from_the_current_directory(servers: Any, tmp_path: Path) -> None:
    """The ``jobsvc`` script (not ``python -m``) finds ``myapp.tasks`` in the current
    directory, as ``python -m jobsvc`` does, and runs its task."""
    _write_task_module(tmp_path)
    argv = [str(BIN / "jobsvc"), "serve", "--bind", "127.0.0.1:0", "--db", "memory:", "--tasks", "myapp.tasks"]
    env = clean_env()
    env.pop("PYTHONPATH")  # nothing but the current directory can make myapp importable
    stderr_path = tmp_path / "serve.stderr"
    with open(stderr_path, "wb") as stderr:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr, env=env, cwd=tmp_path)
    server = Server(proc, stderr_path, argv)
    servers.started.append(server)
    server.wait_listening()
    with server.client() as client:
        job = client.post("/jobs", json={"task": "hello", "payload": "world"}).json()
        done = client.get(f"/jobs/{job['id']}", params={"wait": 10}).json()
    assert (done["state"], done["result"]) == ("succeeded", {"hello": "world"})
    server.send(signal.SIGTERM)
    assert server.wait_exit(15) == 0


@pytest.mark.parametrize(
    ("to_group", "signum"), [(True, signal.SIGINT), (False, signal.SIGTERM)], ids=["ctrl-c-to-the-group", "sigterm-to-make"]
)
def test_make_run_hands_the_signal_to_jobsvc_which_drains_and_exits_0(tmp_path: Path, to_group: bool, signum: signal.Signals) -> None:
    """``make run``'s recipe execs jobsvc: it is make's own child (no shell in between), so
    Ctrl-C (SIGINT to the process group) reaches it, and so does a SIGTERM sent to make
    (make passes SIGTERM on to its child); it drains and exits 0."""
    db = tmp_path / "run.db"
    run_stamp = f"{BIN.parent}/.run-stamp"
    argv = ["make", "-s", "-C", str(REPO), "-o", run_stamp, "run", f"VENV={BIN.parent}", "BIND=127.0.0.1:0", f"DB=sqlite:///{db}"]
    stderr_path = tmp_path / "make.stderr"
    with open(stderr_path, "wb") as stderr:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr, env=clean_env(), start_new_session=True)
    server = Server(proc, stderr_path, argv)
    try:
        server.wait_listening()
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        assert len(children) == 1, children
        cmdline = Path(f"/proc/{children[0]}/cmdline").read_bytes().split(b"\0")
        assert cmdline[1:4] == [str(BIN / "jobsvc").encode(), b"serve", b"--bind"], f"not exec'd: {cmdline}"
        if to_group:
            os.killpg(proc.pid, signum)  # what Ctrl-C in a terminal does
        else:
            os.kill(proc.pid, signum)  # a supervisor stopping make
        make_status = server.wait_exit(20)
    finally:
        server.stop()
    log = server.log()
    assert f"{signum.name} received: shutting down gracefully" in log, log
    assert "jobsvc stopped" in log, log
    assert "Traceback" not in log and not re.search(r"\] Error \d", log), log
    # GNU make waits for its child, then re-raises the signal on itself (it does that for
    # any interrupted recipe); jobsvc's own status is 0, else make would say "Error N".
    assert make_status in (0, -signum), make_status
    assert db.exists()


@pytest.mark.parametrize(
    ("worker_class", "message"),
    [
        ("trio", "another jobsvc process is using"),
        ("asyncio", "jobsvc.asgi:app runs on trio: start hypercorn with --worker-class trio"),
    ],
)
def test_hypercorn_with_two_workers_on_sqlite_fails_with_one_clear_line(tmp_path: Path, worker_class: str, message: str) -> None:
    """``hypercorn --workers 2 jobsvc.asgi:app`` on SQLite: the second worker cannot take the
    file; with the (default) asyncio worker class, no worker can run. Either way hypercorn
    stops with one ``jobsvc: error:`` line per failed worker and no traceback."""
    argv = [
        str(BIN / "hypercorn"), "--worker-class", worker_class, "--workers", "2",
        "--bind", "127.0.0.1:0", "jobsvc.asgi:app",
    ]  # fmt: skip
    env = clean_env(JOBSVC_DB=f"sqlite:///{tmp_path / 'jobs.db'}")
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path)
    try:
        output, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"hypercorn did not stop within 30s: {output}")
    errors = [line for line in output.splitlines() if line.startswith("jobsvc: error: ")]
    def info(line: str) -> bool:  # hypercorn's own INFO lines, in its format or as jobsvc's JSON lines
        return "[INFO]" in line or '"level": "info"' in line

    others = [line for line in output.splitlines() if not line.startswith("jobsvc: error: ") and not info(line)]
    assert errors and all(message in line for line in errors), output
    assert len(set(errors)) == 1, output
    assert not others, f"only hypercorn's INFO lines and the error line, got: {output}"


def _make_dry_run(*args: str) -> str:
    """``make -n`` (print the commands, run nothing) in the repository."""
    done = subprocess.run(["make", "-n", "-C", str(REPO), *args], capture_output=True, text=True, timeout=30, check=False, env=clean_env())
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_make_run_installs_only_jobsvc_and_make_test_everything(tmp_path: Path) -> None:
    """In a new virtualenv, `make run` installs jobsvc without the test/lint extras (with the
    PostgreSQL driver only for a postgresql:// DB); `make test` installs every extra."""
    venv = f"VENV={tmp_path / 'venv'}"
    run = _make_dry_run("run", venv)
    assert "pip install -q -e '.'" in run and "[test" not in run
    assert "pip install -q -e '.[postgres]'" in _make_dry_run("run", venv, "DB=postgresql://db/jobsvc")
    assert "pip install -q -e '.[test,postgres,lint]'" in _make_dry_run("test", venv, "PG_TEST_URL=postgresql://elsewhere/x")


def test_make_test_with_pg_test_url_neither_starts_nor_needs_the_local_server() -> None:
    """PG_TEST_URL set: the `pg` step runs no pg_isready/pg_ctlcluster (and succeeds with no
    server at that address: the tests, not make, report an unreachable server)."""
    url = "PG_TEST_URL=postgresql://nobody@127.0.0.1:1/none"
    dry = _make_dry_run("-W", "tools", "pg", url)
    assert "pg_ctlcluster" not in dry and "pg_isready" not in dry
    done = subprocess.run(["make", "-s", "-C", str(REPO), "pg", url], capture_output=True, text=True, timeout=30, check=False, env=clean_env())
    assert done.returncode == 0 and "left alone" in done.stdout, done
    assert "pg_ctlcluster" in _make_dry_run("pg", "PG_TEST_URL=")


def test_the_files_make_run_leaves_are_ignored_by_git() -> None:
    names = ["jobsvc.db", "jobsvc.db-wal", "jobsvc.db-shm", "jobsvc.db.lock"]
    done = subprocess.run(["git", "-C", str(REPO), "check-ignore", *names], capture_output=True, text=True, timeout=30, check=False)
    assert done.stdout.split() == names, done
