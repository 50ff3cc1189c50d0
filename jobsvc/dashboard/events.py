"""``GET /ui/events``: live updates as Server-Sent Events.

One stream per open page. Without ``watch`` it carries ``counts`` events (jobs by state and
task, the oldest due job's age, this instance's last hour); with ``watch=<job id>`` it
carries ``job`` events (the job's state, attempts, times, result and errors). An event is
sent when its data changed since the last one, plus a comment line every
:data:`KEEPALIVE` seconds.

Costs and bounds:

* the facade is read at most once per :data:`INTERVAL` (1 s) per stream: counts from the
  store's O(1) counts (``stats()``), or one job by id;
* at most :data:`MAX_STREAMS` streams at once per process; one more is answered 503 with
  ``Retry-After`` (EventSource then retries on its own);
* a stream ends when the client leaves: hypercorn delivers ``http.disconnect`` on
  ``receive()`` at once (Starlette's ``is_disconnected()`` cannot see it under trio), and
  the stream's nursery is cancelled; else after :data:`MAX_LIFETIME` seconds (the browser
  reconnects, and the session is checked again).
"""

from __future__ import annotations

import json
from typing import Any

import trio
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.types import Receive, Scope, Send

from .. import codec
from ..errors import JobNotFound, JobsvcError, StoreUnavailable
from .context import Dashboard, LoginRequired, View

__all__ = ["INTERVAL", "KEEPALIVE", "MAX_LIFETIME", "MAX_STREAMS", "EventStream"]

INTERVAL = 1.0
KEEPALIVE = 15.0
MAX_LIFETIME = 300.0
MAX_STREAMS = 32
#: What the browser waits before reconnecting (EventSource ``retry:``), in ms.
RECONNECT_MS = 2000
#: Fields of a watched job that its page shows live.
JOB_FIELDS = ("id", "state", "attempts", "max_attempts", "rescues", "updated_at", "finished_at", "run_at", "result", "errors", "cancel_requested")


def _event(name: str, data: Any) -> bytes:
    text = json.dumps(data, ensure_ascii=True, separators=(",", ":"))  # one line: no newline can split it
    return f"event: {name}\ndata: {text}\n\n".encode()


class EventStream:
    """The ASGI endpoint of ``/ui/events``."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        dash: Dashboard = request.app.state.dashboard
        try:
            view = dash.view(request)
            watch = request.query_params.get("watch")
            if watch is not None and not codec.is_job_id(watch):
                raise HTTPException(404, "no job has that id")
        except LoginRequired:
            await PlainTextResponse("log in first", status_code=401)(scope, receive, send)
            return
        except HTTPException as exc:
            await PlainTextResponse(str(exc.detail), status_code=exc.status_code)(scope, receive, send)
            return
        if dash.streams >= MAX_STREAMS:
            response = PlainTextResponse("too many live streams; retry later", status_code=503, headers={"Retry-After": "5"})
            await response(scope, receive, send)
            return
        dash.streams += 1
        try:
            await self._stream(dash, view, watch, receive, send)
        finally:
            dash.streams -= 1

    async def _stream(self, dash: Dashboard, view: View, watch: str | None, receive: Receive, send: Send) -> None:
        headers = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"x-accel-buffering", b"no")]
        if view.set_cookie is not None:
            headers.append((b"set-cookie", view.set_cookie.encode("latin-1")))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": f"retry: {RECONNECT_MS}\n\n".encode(), "more_body": True})
        async with trio.open_nursery() as nursery:

            async def pump() -> None:
                with trio.move_on_after(MAX_LIFETIME):
                    await self._pump(dash, view, watch, send)
                nursery.cancel_scope.cancel()

            nursery.start_soon(pump)
            while (await receive())["type"] != "http.disconnect":
                pass
            nursery.cancel_scope.cancel()  # the client left: stop reading the store for it
        # (after a disconnect this final message goes nowhere, and hypercorn ignores it)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _pump(self, dash: Dashboard, view: View, watch: str | None, send: Send) -> None:
        last: bytes | None = None
        quiet_since = trio.current_time()
        while True:
            try:
                message = await (self._job(view, watch) if watch is not None else self._counts(dash, view))
            except StoreUnavailable:
                message = _event("unavailable", {"detail": "the store cannot be reached right now"})
            except JobNotFound:
                message = _event("gone", {"id": watch})
            except JobsvcError as exc:
                message = _event("error", {"detail": exc.detail})
            if message != last:
                await send({"type": "http.response.body", "body": message, "more_body": True})
                last = message
                quiet_since = trio.current_time()
            elif trio.current_time() - quiet_since >= KEEPALIVE:
                await send({"type": "http.response.body", "body": b": keepalive\n\n", "more_body": True})
                quiet_since = trio.current_time()
            await trio.sleep(INTERVAL)

    @staticmethod
    async def _job(view: View, job_id: str) -> bytes:
        public = codec.job_to_json(await view.jobs.get(job_id))
        return _event("job", {name: public.get(name) for name in JOB_FIELDS})

    @staticmethod
    async def _counts(dash: Dashboard, view: View) -> bytes:
        stats = await view.jobs.stats()
        data: dict[str, Any] = {"jobs": stats["jobs"], "tasks": stats["tasks"], "oldest_due_age": stats["oldest_due_age"]}
        if dash.activity is not None:
            data["activity"] = dash.activity.summary(view.principal.tenant).as_json()
        return _event("counts", data)
