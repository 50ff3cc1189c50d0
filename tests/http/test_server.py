"""run_service in-process on a real socket (127.0.0.1:0), and the CLI's error handling."""

from __future__ import annotations

import gc
import sys
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio

from jobsvc import cli, server
from jobsvc.config import Settings
from jobsvc.models import JobState
from jobsvc.server import GC_THRESHOLD, LISTEN_BACKLOG, Running, hypercorn_config, run_service, tune_gc
from jobsvc.tasks import Registry


async def test_run_service_serves_runs_and_drains(tmp_path: Path, nursery: trio.Nursery) -> None:
    """A real hypercorn on port 0 accepts a job, runs it, and on shutdown is no longer ready,
    releases the unfinished job and returns with nothing left running."""
    settings = Settings(bind="127.0.0.1:0", db=f"sqlite:///{tmp_path / 'jobs.db'}", workers=2, grace=0.5)
    done = trio.Event()

    async def serve(*, task_status: trio.TaskStatus[Running] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            await run_service(settings, registry=Registry.from_modules(["testtasks"]), task_status=task_status)
        finally:
            done.set()

    with trio.fail_after(20):
        running: Running = await nursery.start(serve)
        assert running.url.startswith("http://127.0.0.1:")
        async with httpx.AsyncClient(base_url=running.url) as client:
            quick = (await client.post("/jobs", json={"task": "echo", "payload": {"x": 1}})).json()
            slow = (await client.post("/jobs", json={"task": "nap", "payload": {"seconds": 60}})).json()
            final = (await client.get(f"/jobs/{quick['id']}", params={"wait": 10})).json()
            assert (final["state"], final["result"]) == ("succeeded", {"x": 1})
            while (await client.get(f"/jobs/{slow['id']}")).json()["state"] != "running":  # noqa: ASYNC110 - polling a real server, bounded by fail_after
                await trio.sleep(0.01)
            running.shutdown()
            # hypercorn closes connections as soon as the drain starts, so ask the service.
            assert await running.service.ready() == (False, "draining")
        await done.wait()
    # Reopen the database: the long job was released, not left running.
    from jobsvc.store import open_store

    async with open_store(settings.db) as store:
        stored = await store.get(slow["id"])
        assert stored is not None and (stored.state, stored.attempts) == (JobState.PENDING, 0)
        assert (await store.counts()).by_state()[JobState.RUNNING] == 0


async def test_the_listener_queues_a_burst_of_connections(tmp_path: Path, nursery: trio.Nursery) -> None:
    """The listening socket's backlog (``ss`` shows it as Send-Q) is LISTEN_BACKLOG, capped by
    net.core.somaxconn, not hypercorn's 100, whose overflow under a burst dropped SYNs (a 1 s
    retransmission for the client)."""
    settings = Settings(bind="127.0.0.1:0", db=f"sqlite:///{tmp_path / 'jobs.db'}", workers=1, grace=0.5)
    with trio.fail_after(20):
        running: Running = await nursery.start(partial(run_service, settings, registry=Registry.from_modules(["testtasks"])))
        port = running.url.rsplit(":", 1)[1]
        listing = await trio.run_process(["ss", "-ltnH", f"sport = :{port}"], capture_stdout=True)
        running.shutdown()
    [line] = listing.stdout.decode().splitlines()
    somaxconn = int(await trio.Path("/proc/sys/net/core/somaxconn").read_text())
    assert int(line.split()[2]) == min(LISTEN_BACKLOG, somaxconn) > 100, line


def test_hypercorn_config_follows_the_settings() -> None:
    """The embedded hypercorn drains within --grace and sends no Server header."""
    config = hypercorn_config(Settings(bind="127.0.0.1:0", grace=7))
    assert (config.bind, config.graceful_timeout, config.include_server_header) == (["127.0.0.1:0"], 7, False)


def test_tune_gc_freezes_the_start_up_heap_and_raises_the_young_threshold() -> None:
    """After tune_gc, what is alive now is never scanned again (frozen), and a young pass
    waits for 10,000 net allocations instead of 700 (conftest's _restore_gc undoes both)."""
    assert gc.get_freeze_count() == 0
    tune_gc()
    assert gc.get_threshold() == GC_THRESHOLD == (10_000, 10, 10)
    assert gc.get_freeze_count() > 10_000  # the modules, classes and functions imported so far


def test_serve_tunes_the_gc_once_its_task_modules_are_imported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``jobsvc serve`` calls tune_gc once, after importing the --tasks modules (whose
    objects then live for good) and before it runs the service."""
    calls: list[bool] = []
    monkeypatch.delitem(sys.modules, "testtasks", raising=False)
    monkeypatch.setattr(server, "tune_gc", lambda: calls.append("testtasks" in sys.modules))
    # an unusable database: the service fails to open, after tune_gc
    assert cli.main(["serve", "--bind", "127.0.0.1:0", "--tasks", "testtasks", "--db", f"sqlite:///{tmp_path}/nope/x.db"]) == 2
    assert calls == [True]


def test_cli_reports_bad_configuration(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A configuration error is one clear line on stderr and exit code 2."""
    monkeypatch.setenv("JOBSVC_WORKER", "3")
    assert cli.main(["serve"]) == 2
    assert "unknown environment variable JOBSVC_WORKER" in capsys.readouterr().err
    monkeypatch.delenv("JOBSVC_WORKER")
    assert cli.main(["serve", "--workers", "0"]) == 2
    assert "workers must be a whole number of at least 1" in capsys.readouterr().err
    assert cli.main(["serve", "--tasks", "no.such.module"]) == 2
    assert "cannot import task module 'no.such.module'" in capsys.readouterr().err


def test_cli_migrate_on_sqlite_is_a_no_op(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """jobsvc migrate on SQLite creates the schema and says it is up to date."""
    assert cli.main(["migrate", "--db", f"sqlite:///{tmp_path / 'm.db'}"]) == 0
    assert "up to date" in capsys.readouterr().out
    assert (tmp_path / "m.db").exists()


def test_cli_serve_on_an_unusable_database(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A SQLite path in a missing directory is a clear error, not a traceback."""
    assert cli.main(["serve", "--bind", "127.0.0.1:0", "--db", f"sqlite:///{tmp_path}/nope/x.db"]) == 2
    assert "does not exist" in capsys.readouterr().err


async def test_serve_twice_on_one_sqlite_file_is_refused(tmp_path: Path) -> None:
    """The second process (here: a second open) on a SQLite file gets a clear ConfigError."""
    from jobsvc.errors import ConfigError
    from jobsvc.store import open_store

    url = f"sqlite:///{tmp_path / 'one.db'}"
    async with open_store(url):
        with pytest.raises(ConfigError, match="another jobsvc process is using"):
            async with open_store(url):
                pass  # pragma: no cover




async def test_asgi_app_under_hypercorn_runs_jobs_and_drains_in_its_lifespan(tmp_path: Path, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch) -> None:
    """jobsvc.asgi:app (for `hypercorn --worker-class trio`) opens the service in the ASGI
    lifespan from JOBSVC_* variables and runs jobs; at lifespan shutdown it drains: a job
    still running after JOBSVC_GRACE is released (pending, no attempt burnt), and hypercorn
    returns only once that is written."""
    import hypercorn.trio
    from hypercorn.config import Config

    from jobsvc import asgi
    from jobsvc.store import open_store

    db = f"sqlite:///{tmp_path / 'asgi.db'}"
    monkeypatch.setenv("JOBSVC_DB", db)
    monkeypatch.setenv("JOBSVC_TASKS", "testtasks")
    monkeypatch.setenv("JOBSVC_GRACE", "0.5")
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    app = asgi.JobsvcASGI(tune_gc=True)
    tuned: list[bool] = []
    monkeypatch.setattr(asgi, "tune_gc", lambda: tuned.append(app.app is not None))
    assert asgi.app.tune_gc and not asgi.JobsvcASGI().tune_gc  # the hypercorn CLI's app tunes the GC
    shutdown = trio.Event()
    served = trio.Event()

    async def serve(*, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            await hypercorn.trio.serve(app, config, shutdown_trigger=shutdown.wait, task_status=task_status)  # type: ignore[arg-type]
        finally:
            served.set()

    with trio.fail_after(20):
        binds = await nursery.start(serve)
        assert tuned == [True]  # once, with the service open
        async with httpx.AsyncClient(base_url=binds[0]) as client:
            job = (await client.post("/jobs", json={"task": "nap", "payload": {"seconds": 0.01}})).json()
            done = (await client.get(f"/jobs/{job['id']}", params={"wait": 10})).json()
            assert (done["state"], done["result"]) == ("succeeded", {"slept": 0.01})
            slow = (await client.post("/jobs", json={"task": "nap", "payload": {"seconds": 60}})).json()
            while (await client.get(f"/jobs/{slow['id']}")).json()["state"] != "running":  # noqa: ASYNC110 - polling a real server, bounded by fail_after
                await trio.sleep(0.01)
        shutdown.set()
        await served.wait()
    assert app.app is None  # the service is closed
    async with open_store(db) as store:
        released = await store.get(slow["id"])
        assert released is not None and (released.state, released.attempts, released.lease_owner) == (JobState.PENDING, 0, None)
        assert (await store.counts()).by_state()[JobState.RUNNING] == 0


async def test_abandoned_long_polls_are_freed_at_once(tmp_path: Path, nursery: trio.Nursery) -> None:
    """Clients that send GET /jobs/{id}?wait=60 and hang up at once free their connection,
    their long-poll wait and its store reads within moments, not after 60 s; the server
    keeps answering meanwhile."""
    import os
    import socket

    settings = Settings(bind="127.0.0.1:0", db=f"sqlite:///{tmp_path / 'jobs.db'}", workers=2, grace=0.5)
    running: Running = await nursery.start(partial(run_service, settings, registry=Registry.from_modules(["testtasks"])))
    waiters = running.service._waiters
    fds_before = len(os.listdir("/proc/self/fd"))
    host, port = running.url.removeprefix("http://").split(":")
    async with httpx.AsyncClient(base_url=running.url) as client:
        job = (await client.post("/jobs", json={"task": "echo", "payload": 1, "delay": 600})).json()
        with trio.fail_after(10):
            for _ in range(20):
                sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                await sock.connect((host, int(port)))
                await sock.send(f"GET /jobs/{job['id']}?wait=60 HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
                sock.close()
            while len(waiters) or len(os.listdir("/proc/self/fd")) > fds_before + 2:  # noqa: ASYNC110 - a real server, bounded by fail_after
                assert (await client.get("/health")).status_code == 200
                await trio.sleep(0.05)
    running.shutdown()


def test_start_up_failures_are_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A lock file that cannot be created, a database in an unusable place and a port in use
    are each one line on stderr and exit code 2; no traceback."""
    import socket

    (tmp_path / "x.db.lock").mkdir()
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    cases = [
        (["serve", "--bind", "127.0.0.1:0", "--db", f"sqlite:///{tmp_path}/x.db"], "cannot create its lock file"),
        (["serve", "--bind", "127.0.0.1:0", "--db", "sqlite:////proc/jobsvc-test.db"], "cannot open the SQLite database"),
        (["serve", "--bind", f"127.0.0.1:{port}", "--db", "memory:"], f"cannot listen on 127.0.0.1:{port}: Address already in use"),
    ]
    try:
        for argv, message in cases:
            assert cli.main(argv) == 2, argv
            err = capsys.readouterr().err
            assert message in err and "Traceback" not in err, err
            assert [line for line in err.splitlines() if line.startswith("jobsvc: error:")] == [err.strip().splitlines()[-1]]
    finally:
        taken.close()
        # hypercorn does not close the socket it failed to bind (the process exits after
        # this error, so it does not matter there); collect it here, not in the next test.
        import gc
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()


def test_a_key_value_dsn_is_postgresql_and_its_password_is_never_printed(capsys: pytest.CaptureFixture[str]) -> None:
    """A libpq key=value connection string is accepted as PostgreSQL; errors name the server
    without the password."""
    from jobsvc.config import DatabaseURL

    dsn = "host=127.0.0.1 port=1 user=root password=hunter2 dbname=nowhere"
    assert DatabaseURL.parse(dsn).scheme == "postgresql"
    assert "hunter2" not in DatabaseURL.parse(dsn).display
    assert cli.main(["serve", "--bind", "127.0.0.1:0", "--db", dsn]) == 1
    err = capsys.readouterr().err
    assert "unavailable" in err and "hunter2" not in err and "Traceback" not in err
    assert cli.main(["serve", "--db", "nonsense password=hunter2"]) == 2
    err = capsys.readouterr().err
    assert "invalid database URL" in err and "hunter2" not in err
