"""``--drain-delay``: a draining instance keeps its listener open, answering 503 on ``/ready``
and to submissions, for ``drain_delay`` seconds after the drain begins, so a load balancer
sees it leave; the job drain itself starts at once.

The phases run on trio's ``autojump_clock`` with exact virtual times; one test uses a real
hypercorn on 127.0.0.1:0 to show the listener really stays open, then really closes.
"""

from __future__ import annotations

import errno
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from jobsvc.config import Settings
from jobsvc.server import Running, run_service
from jobsvc.service import Shutdown
from jobsvc.tasks import Registry


async def _time_http_stop(shutdown: Shutdown, at: list[float]) -> None:
    await shutdown.http_stop()
    at.append(trio.current_time())


async def test_http_stops_drain_delay_seconds_after_begin(autojump_clock: Any) -> None:
    """begin() at t=3 with drain_delay 5: draining (and the grace deadline) from t=3, the
    HTTP stop at exactly t=8."""
    shutdown = Shutdown(grace=10, drain_delay=5)
    stopped_at: list[float] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_time_http_stop, shutdown, stopped_at)
        await trio.sleep_until(3)
        assert not shutdown.draining
        shutdown.begin()
        assert shutdown.draining and shutdown.requested.is_set()
        assert (shutdown.begun_at, shutdown.deadline) == (3.0, 13.0)
    assert stopped_at == [8.0]


async def test_a_zero_drain_delay_stops_http_at_begin(autojump_clock: Any) -> None:
    """The default (0): the listener closes as the drain begins, as before."""
    shutdown = Shutdown(grace=10)
    stopped_at: list[float] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_time_http_stop, shutdown, stopped_at)
        await trio.sleep_until(2)
        shutdown.begin()
    assert stopped_at == [2.0]


async def test_force_stops_http_at_once_during_the_delay(autojump_clock: Any) -> None:
    """A second signal (force) during the delay closes the listener now (t=4, not t=31)."""
    shutdown = Shutdown(grace=10, drain_delay=30)
    stopped_at: list[float] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_time_http_stop, shutdown, stopped_at)
        await trio.sleep_until(1)
        shutdown.begin()
        await trio.sleep_until(4)
        shutdown.force()
    assert stopped_at == [4.0]


async def test_the_instance_answers_503_during_the_delay_while_jobs_drain(start_service: Any, autojump_clock: Any) -> None:
    """Drain begun at t=1 (grace 2, drain delay 5): /ready and POST /jobs answer 503 (with
    Retry-After) during the delay; the running job is released at t=3, when the job drain
    ends, and the HTTP stop comes at t=6."""
    from jobsvc.app import create_app

    service = await start_service(grace=2, drain_delay=5)
    transport = httpx.ASGITransport(app=create_app(service), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
        job = (await client.post("/jobs", json={"task": "nap", "payload": {"seconds": 100}})).json()
        assert (await client.get("/ready")).status_code == 200
        await trio.sleep_until(1)
        service.begin_shutdown()
        stopped_at: list[float] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_time_http_stop, service.shutdown, stopped_at)
            await trio.sleep_until(2)
            ready = await client.get("/ready")
            refused = await client.post("/jobs", json={"task": "noop"})
            assert (ready.status_code, ready.json()["reason"], ready.headers["Retry-After"]) == (503, "draining", "1")
            assert refused.status_code == 503 and refused.headers["content-type"] == "application/problem+json"
            assert "Retry-After" in refused.headers
            await service.stopped.wait()
            assert trio.current_time() == 3.0  # the job drain did not wait for the delay
        assert stopped_at == [6.0]
    released = await service._store.get(job["id"])
    assert (released.state.value, released.attempts) == ("pending", 0)


def _connect(url: str) -> socket.socket | None:
    """A TCP connection to ``url``, or None if it is refused."""
    host, _, port = url.removeprefix("http://").partition(":")
    try:
        return socket.create_connection((host, int(port)), timeout=2)
    except ConnectionRefusedError:
        return None
    except OSError as exc:  # pragma: no cover - any other failure is a test failure
        if exc.errno == errno.ECONNREFUSED:
            return None
        raise


async def test_real_listener_stays_open_for_the_delay_then_closes(tmp_path: Path, nursery: trio.Nursery) -> None:
    """A real hypercorn with --drain-delay 1.5: for 1.5 s after the drain begins, new
    connections are accepted and answered 503 on /ready and POST /jobs; afterwards they
    are refused, and run_service returns."""
    delay = 1.5
    settings = Settings(bind="127.0.0.1:0", db=f"sqlite:///{tmp_path / 'jobs.db'}", workers=2, grace=0.5, drain_delay=delay)
    done = trio.Event()

    async def serve(*, task_status: trio.TaskStatus[Running] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            await run_service(settings, registry=Registry.from_modules(["testtasks"]), task_status=task_status)
        finally:
            done.set()

    with trio.fail_after(20):
        running: Running = await nursery.start(serve)
        began = time.monotonic()
        running.shutdown()
        # fresh connections (no keep-alive) during the delay: answered, 503
        async with httpx.AsyncClient(base_url=running.url, limits=httpx.Limits(max_keepalive_connections=0)) as client:
            ready = await client.get("/ready")
            submitted = await client.post("/jobs", json={"task": "noop"})
            health = await client.get("/health")
        answered_within = time.monotonic() - began
        assert answered_within < delay, f"took {answered_within:.2f}s: the test machine is too slow to see the delay"
        assert (ready.status_code, ready.json()["reason"]) == (503, "draining")
        assert submitted.status_code == 503 and submitted.headers["content-type"] == "application/problem+json"
        assert health.status_code == 200
        # then the listener closes: connections are refused
        while (sock := await trio.to_thread.run_sync(_connect, running.url)) is not None:
            sock.close()
            await trio.sleep(0.05)
        closed_after = time.monotonic() - began
        await done.wait()
    print(f"listener closed {closed_after:.2f}s after the drain began (drain delay {delay:g}s)")
    assert delay <= closed_after < delay + 2.0


@pytest.mark.parametrize("value", ["-1", "nan", "x"])
def test_drain_delay_must_be_a_non_negative_number(value: str) -> None:
    """JOBSVC_DRAIN_DELAY is validated like the other durations."""
    from jobsvc.errors import ConfigError

    with pytest.raises(ConfigError, match="drain"):
        Settings.from_sources({}, {"JOBSVC_DRAIN_DELAY": value})
