"""``GET /ui/events`` (Server-Sent Events) in process, driven at the ASGI level so the test
plays the client: it reads the stream as it comes and hangs up when it wants (httpx's
ASGITransport would wait for the end of a response that never ends). On ``autojump_clock``.
Also the activity ring that feeds the overview."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import attrs
import httpx
import pytest
import trio
import trio.testing

from jobsvc.app import create_app
from jobsvc.auth import SCOPES, Authenticator, new_key
from jobsvc.dashboard import activity as activity_module
from jobsvc.dashboard import events
from jobsvc.dashboard.activity import MINUTES, Activity
from jobsvc.dashboard.guard import CSP
from jobsvc.models import Job
from jobsvc.service import JobService

Message = dict[str, Any]


class Client:
    """One SSE client: ``connect()`` starts the request; ``events`` fills as they arrive;
    ``leave()`` sends ``http.disconnect`` (what hypercorn delivers when the socket closes)."""

    def __init__(self, app: Any, path: str, query: str = "", cookie: str | None = None) -> None:
        self.app = app
        self.scope = {
            "type": "http", "asgi": {"version": "3.0", "spec_version": "2.1"}, "http_version": "1.1",
            "method": "GET", "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "",
            "query_string": query.encode(), "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 80),
            "headers": [(b"host", b"localhost"), *([(b"cookie", cookie.encode())] if cookie else [])],
        }  # fmt: skip
        self.messages: list[Message] = []
        self.left = trio.Event()
        self.done = trio.Event()
        self.sent_request = False
        self.changed = trio.Event()  #: set (and replaced) at every message the app sends

    async def receive(self) -> Message:
        if not self.sent_request:
            self.sent_request = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await self.left.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        self.messages.append(message)
        self.changed.set()
        self.changed = trio.Event()

    async def run(self) -> None:
        try:
            await self.app(self.scope, self.receive, self.send)
        finally:
            self.done.set()

    @property
    def status(self) -> int:
        return int(self.messages[0]["status"])

    @property
    def headers(self) -> dict[str, str]:
        return {k.decode(): v.decode() for k, v in self.messages[0]["headers"]}

    @property
    def events(self) -> list[tuple[str, Any]]:
        body = b"".join(m.get("body", b"") for m in self.messages[1:]).decode()
        found = []
        for block in body.split("\n\n"):
            lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line and not line.startswith(":"))
            if "event" in lines:
                found.append((lines["event"], json.loads(lines["data"])))
        return found

    async def wait_for(self, predicate: Callable[[list[tuple[str, Any]]], bool], timeout: float = 60) -> None:
        with trio.fail_after(timeout):
            while not predicate(self.events):
                await self.changed.wait()


async def submit(client: httpx.AsyncClient, body: dict[str, Any]) -> str:
    r = await client.post("/jobs", json=body)
    assert r.status_code == 202, r.text
    return r.json()["id"]  # type: ignore[no-any-return]


def dashboard_of(app: Any) -> Any:
    [mount] = [route for route in app.routes if getattr(route, "path", None) == "/ui"]
    return mount.app.state.dashboard


@pytest.fixture
def app(service: JobService) -> Any:
    return create_app(service)


@pytest.fixture
async def api(app: Any) -> Any:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://localhost") as c:
        yield c


async def test_a_watched_job_is_streamed_until_the_client_leaves(
    app: Any, api: httpx.AsyncClient, service: JobService, nursery: trio.Nursery, autojump_clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job's changes arrive as ``job`` events (pending -> running -> succeeded), the
    facade is read at most once a second, and the stream ends as soon as the client goes."""
    job_id = await submit(api, {"task": "nap", "payload": {"seconds": 5}, "delay": 3})
    reads: list[float] = []
    real_get = service.get

    async def counting_get(job_id: str) -> Job:
        reads.append(trio.current_time())
        return await real_get(job_id)

    monkeypatch.setattr(service, "get", counting_get)
    client = Client(app, "/ui/events", f"watch={job_id}")
    nursery.start_soon(client.run)
    await client.wait_for(lambda ev: any(e == "job" and d["state"] == "succeeded" for e, d in ev))
    assert client.status == 200
    assert client.headers["content-type"].startswith("text/event-stream")
    assert client.headers["content-security-policy"] == CSP
    states = [d["state"] for e, d in client.events if e == "job"]
    assert states == ["pending", "running", "succeeded"]  # only changes are sent
    assert [d["result"] for e, d in client.events if e == "job"][-1] == {"slept": 5.0}
    gaps = [b - a for a, b in zip(reads, reads[1:], strict=False)]
    assert gaps and min(gaps) >= events.INTERVAL - 1e-9
    assert dashboard_of(app).streams == 1
    left_at = trio.current_time()
    client.left.set()
    with trio.fail_after(0.01):  # virtual time: it returns without waiting for a poll
        await client.done.wait()
    assert trio.current_time() - left_at < 0.01
    count = len(reads)
    await trio.sleep(5)
    assert len(reads) == count  # nothing polls for a client that left
    assert dashboard_of(app).streams == 0


async def test_counts_are_streamed_when_they_change(app: Any, api: httpx.AsyncClient, nursery: trio.Nursery, autojump_clock: Any) -> None:
    client = Client(app, "/ui/events")
    nursery.start_soon(client.run)
    await client.wait_for(lambda ev: len(ev) >= 1)
    first = client.events[0]
    assert first[0] == "counts" and first[1]["jobs"]["pending"] == 0
    await submit(api, {"task": "echo", "payload": 1, "delay": 600})
    await client.wait_for(lambda ev: ev[-1][1]["jobs"]["pending"] == 1)
    assert client.events[-1][1]["activity"]["totals"]["submitted"] == 1
    seen = len(client.events)
    await trio.sleep(30)  # nothing changes: no new event, only keepalive comments
    assert len(client.events) == seen
    assert b": keepalive" in b"".join(m.get("body", b"") for m in client.messages)
    client.left.set()
    with trio.fail_after(0.01):
        await client.done.wait()


async def test_streams_are_bounded_and_end_after_their_lifetime(app: Any, nursery: trio.Nursery, autojump_clock: Any) -> None:
    dash = dashboard_of(app)
    clients = [Client(app, "/ui/events") for _ in range(events.MAX_STREAMS + 1)]
    for client in clients[:-1]:
        nursery.start_soon(client.run)
    await trio.testing.wait_all_tasks_blocked()
    assert dash.streams == events.MAX_STREAMS
    await clients[-1].run()
    assert clients[-1].status == 503 and clients[-1].headers["retry-after"] == "5"
    with trio.fail_after(events.MAX_LIFETIME + 2):  # each ends on its own; the browser reconnects
        for client in clients[:-1]:
            await client.done.wait()
    assert dash.streams == 0


async def test_a_stream_needs_a_session_when_keys_are_configured(app: Any, autojump_clock: Any) -> None:
    _, key = new_key(scopes=SCOPES, created="2026-11-30T00:00:00Z", name="admin")
    app.state.auth = Authenticator([key], path="keys.toml")  # what the dashboard reads per request
    client = Client(app, "/ui/events")
    await client.run()
    assert client.status == 401
    client = Client(app, "/ui/events", "watch=%00bad")
    app.state.auth = None
    await client.run()
    assert client.status == 404


async def test_an_unknown_watched_job_is_reported_gone(app: Any, nursery: trio.Nursery, autojump_clock: Any) -> None:
    client = Client(app, "/ui/events", "watch=nope")
    nursery.start_soon(client.run)
    await client.wait_for(lambda ev: len(ev) >= 1)
    assert client.events[0] == ("gone", {"id": "nope"})
    client.left.set()


# -- the activity ring -------------------------------------------------------------------


@attrs.define
class FakeClock:
    t: float = 1_000_020.0

    def now(self) -> float:
        return self.t


def job(tenant: str | None = None) -> Any:
    @attrs.frozen
    class J:
        tenant: str | None

    return J(tenant)


def test_activity_counts_per_minute_and_forgets_after_an_hour() -> None:
    clock = FakeClock()
    ring = Activity(clock)
    for event in ["submitted", "started", "succeeded", "started", "retrying", "started", "dead", "released"]:
        ring.job_event(event, job())
    summary = ring.summary()
    assert summary.totals == {"submitted": 1, "started": 3, "succeeded": 1, "retrying": 1, "dead": 1, "cancelled": 0}
    assert summary.failed_attempts == 2 and summary.failure_rate == pytest.approx(2 / 3)
    assert len(summary.minutes) == MINUTES and summary.minutes[-1].counts["started"] == 3
    clock.t += 60 * 30
    ring.job_event("succeeded", job())
    summary = ring.summary()
    assert summary.totals["succeeded"] == 2 and summary.minutes[-1].counts["succeeded"] == 1
    assert summary.minutes[-31].counts["started"] == 3
    clock.t += 60 * 30  # the first minute is now more than an hour ago
    summary = ring.summary()
    assert summary.totals["started"] == 0 and summary.totals["succeeded"] == 1
    clock.t += 60 * 60  # two hours after the first minute: the same slot of the ring
    ring.job_event("dead", job())  # lands in the first minute's slot: it starts afresh
    assert ring.summary().totals == {"submitted": 0, "started": 0, "succeeded": 0, "retrying": 0, "dead": 1, "cancelled": 0}
    assert Activity(clock).summary().failure_rate is None


def test_activity_is_kept_per_tenant_and_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    ring = Activity(FakeClock())
    ring.job_event("succeeded", job("acme"))
    ring.job_event("succeeded", job("globex"))
    ring.job_event("dead", job())
    assert ring.summary().totals["succeeded"] == 2 and ring.summary().totals["dead"] == 1
    assert ring.summary("acme").totals["succeeded"] == 1 and ring.summary("acme").totals["dead"] == 0
    assert ring.summary("nobody").totals["succeeded"] == 0
    monkeypatch.setattr(activity_module, "MAX_TENANTS", 3)
    for name in ["t1", "t2", "t3"]:
        ring.job_event("submitted", job(name))
    assert ring.summary("acme").totals["succeeded"] == 0  # the least recently active one went
    assert ring.summary().totals["submitted"] == 3  # the instance-wide ring stays
