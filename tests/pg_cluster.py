"""A throwaway PostgreSQL cluster of a test's own, to restart, stop or crash at will.

``initdb`` into a new temporary folder, start (``postgres -D``) on a free port of 127.0.0.1 with
its Unix socket in that folder, trust authentication, superuser ``postgres``. At the end the
server is stopped (and, if it will not stop, its processes are killed by PID) and the folder
deleted: no database and no process is left behind. The shared server (``PG_TEST_URL``,
127.0.0.1:5432) is never touched. Fixture and context manager::

    from pg_cluster import pg_cluster  # noqa: F401   (the function-scoped fixture)

    def test_restart(pg_cluster: PgCluster) -> None:
        url = pg_cluster.create_database("jobsvc")      # postgresql://postgres@127.0.0.1:PORT/jobsvc
        pg_cluster.restart()                            # also: stop(), start(), crash()

    with throwaway_cluster() as cluster: ...            # any other scope

The server binaries come from ``$PG_BIN``, else the newest ``/usr/lib/postgresql/*/bin``
(Debian), else ``pg_config --bindir``; without them the test fails saying what to install.
``initdb`` refuses to run as root: as root every server command runs as the ``postgres`` OS
user (``setpriv``, which execs, so the postmaster stays this process's child and a crash is
reaped here), and the temporary folder is made theirs. The server is started without
``pg_ctl`` for that reason; stop modes are its signals (SIGTERM smart, SIGINT fast, SIGQUIT
immediate).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

__all__ = ["PgCluster", "find_bindir", "pg_cluster", "throwaway_cluster"]

#: The OS user that runs the server when the tests run as root.
SERVER_USER = "postgres"
SUPERUSER = "postgres"


def find_bindir() -> Path:
    """The folder holding initdb and postgres; fails the test clearly if there is none."""
    candidates: list[Path] = []
    if os.environ.get("PG_BIN"):
        candidates.append(Path(os.environ["PG_BIN"]))
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0, reverse=True)
    if shutil.which("pg_config"):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=False).stdout.strip()
        if out:
            candidates.append(Path(out))
    for bindir in candidates:
        if (bindir / "initdb").exists() and (bindir / "postgres").exists():
            return bindir
    pytest.fail(
        "a throwaway PostgreSQL cluster needs the server binaries (initdb, postgres): install them "
        "(Debian: apt-get install postgresql) or set PG_BIN to their folder",
        pytrace=False,
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - someone else's process reused the PID
        return True
    return not _zombie(pid)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except (FileNotFoundError, IndexError):
        return True


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


@contextlib.contextmanager
def _subreaper() -> Iterator[None]:
    """Make this process a child subreaper (Linux) while the block runs."""
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_child_subreaper = 36
    was_set = libc.prctl(pr_set_child_subreaper, 1, 0, 0, 0) == 0
    try:
        yield
    finally:
        if was_set:
            libc.prctl(pr_set_child_subreaper, 0, 0, 0, 0)


class PgCluster:
    """One PostgreSQL server in a folder of its own (see the module docstring)."""

    def __init__(self, bindir: Path, root: Path, *, port: int | None = None) -> None:
        self.bindir = bindir
        self.root = root
        self.data = root / "data"
        self.log = root / "postgres.log"
        self.port = port or _free_port()
        self._as_server_user = os.geteuid() == 0
        self._pids: set[int] = set()  #: every server process seen, for the final clean-up
        self._server: subprocess.Popen[bytes] | None = None  #: the postmaster, our child

    # -- commands -------------------------------------------------------------------------

    def _as_user(self, argv: list[str]) -> list[str]:
        """As root, run ``argv`` as the server's OS user (setpriv execs: no process between)."""
        if not self._as_server_user:
            return argv
        return ["setpriv", f"--reuid={SERVER_USER}", f"--regid={SERVER_USER}", "--init-groups", "--", *argv]

    def _run(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        command = self._as_user([str(self.bindir / argv[0]), *argv[1:]])
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL)

    def _check(self, what: str, done: subprocess.CompletedProcess[str]) -> None:
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
            pytest.fail(f"throwaway PostgreSQL: {what} failed ({done.returncode}): {done.stdout}{done.stderr}\n{log}", pytrace=False)

    def init(self) -> None:
        """initdb: trust authentication, UTF-8, no fsync while creating it (it is thrown away)."""
        if self._as_server_user:
            shutil.chown(self.root, SERVER_USER, SERVER_USER)
        self._check(
            "initdb",
            self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", SUPERUSER, "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"),
        )

    def start(self) -> None:
        """Start the postmaster as a child of this process (so a crash can be reaped) and
        wait until it accepts connections."""
        assert self._server is None or self._server.poll() is not None, "already running"
        argv = [
            str(self.bindir / "postgres"), "-D", str(self.data), "-p", str(self.port), "-k", str(self.root),
            "-c", "listen_addresses=127.0.0.1", "-c", "max_connections=100",
        ]  # fmt: skip
        with open(self.log, "ab") as log:
            self._server = subprocess.Popen(self._as_user(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + 60
        while True:
            try:
                psycopg.connect(self.url(), connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if self._server.poll() is not None or time.monotonic() > deadline:
                    self._check("start", subprocess.CompletedProcess([], self._server.poll() or -1, "", "the server did not come up"))
                time.sleep(0.05)

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: ``fast`` (disconnect clients, clean shutdown), ``smart`` (wait
        for clients) or ``immediate`` (no shutdown checkpoint: crash recovery at the next
        start). Waits until every server process has exited."""
        self._signal({"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}[mode])

    def restart(self, mode: str = "fast") -> None:
        """Stop and start on the same port: clients lose their connections meanwhile."""
        self.stop(mode)
        self.start()

    def crash(self) -> None:
        """SIGKILL the postmaster (as the OOM killer would); its backends exit on their own,
        or are killed by PID. ``start()`` then runs crash recovery.

        Meanwhile this process is a child subreaper, so the orphaned backends become its
        children and are reaped here instead of lingering as zombies under PID 1."""
        with _subreaper():
            self._signal(signal.SIGKILL)

    def _signal(self, signum: signal.Signals, timeout: float = 60) -> None:
        server = self._server
        assert server is not None and server.poll() is None, "the server is not running"
        self._pids |= {server.pid, *_children(server.pid)}
        os.kill(server.pid, signum)
        try:
            server.wait(timeout=timeout)
        except subprocess.TimeoutExpired:  # pragma: no cover - a stuck server
            os.kill(server.pid, signal.SIGKILL)
            server.wait()
        self._reap(timeout=10)

    # -- state ----------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """The postmaster's PID, if it runs."""
        if self._server is None or self._server.poll() is not None:
            return None
        return self._server.pid

    def _reap(self, timeout: float) -> None:
        """Wait until every server process seen has exited; SIGKILL (by PID) those that won't."""
        deadline = time.monotonic() + timeout
        while True:
            for pid in self._pids:
                with contextlib.suppress(ChildProcessError):  # reap it if it is our child
                    os.waitpid(pid, os.WNOHANG)
            if not any(_alive(p) for p in self._pids) or time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        for pid in self._pids:
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)
        self._pids = {p for p in self._pids if _alive(p)}

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, name: str) -> str:
        """CREATE DATABASE ``name``; its URL."""
        with psycopg.connect(self.url(), autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def close(self) -> None:
        """Stop the server (immediate: it is thrown away), kill what is left by PID, delete
        the folder."""
        try:
            if self.pid is not None:
                self._signal(signal.SIGQUIT, timeout=30)
            self._reap(timeout=10)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def throwaway_cluster() -> Iterator[PgCluster]:
    """A started cluster in a new temporary folder; stopped and deleted on exit."""
    cluster = PgCluster(find_bindir(), Path(tempfile.mkdtemp(prefix="jobsvc-pg-")))
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def pg_cluster() -> Iterator[PgCluster]:
    """A throwaway PostgreSQL cluster of this test's own (see the module docstring)."""
    with throwaway_cluster() as cluster:
        yield cluster
