"""The request observer: request ids, the access log and the HTTP metrics, for every request.

:class:`RequestObserver` is pure ASGI and sits *outside* every Starlette middleware (see
:class:`ObservedStarlette`), so it also sees, and tags, the 500 answers of Starlette's
error middleware. For each HTTP request it:

* takes the client's ``X-Request-ID`` when it is sane (1 to 128 visible ASCII characters),
  else makes one, binds it to the logging context for the request (every log line made
  while the request runs carries ``request_id``, job events included) and echoes it in the
  response;
* logs one access line, event ``http.request``: method, route, path, status,
  duration_ms, request_id, and ``key_id``, the public id of the API key the request was
  authenticated with (when keys are configured) (never the key, the query string, headers or bodies; anything in the
  path that looks like an API key is masked);
* reports ``http_request(method, route, status, seconds)`` to the service's observer.

``route`` is the route template that matched (``/jobs/{job_id}``), never the raw path, so
ids never become metric labels; a request that matched no route is "unmatched".
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable, Iterable, MutableMapping
from typing import Any

import structlog
import trio
from starlette.applications import Starlette
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .auth import OPEN, redact_keys
from .service.observer import Observer

__all__ = ["ACCESS_LOGGER", "MAX_PATH", "ObservedStarlette", "RequestObserver", "request_id_from"]

ACCESS_LOGGER = "jobsvc.access"
#: Longest path written to the access log (a longer one is cut).
MAX_PATH = 256
#: A client's X-Request-ID is used when it matches this: bounded, visible ASCII only.
_SANE_REQUEST_ID = re.compile(rb"[\x21-\x7e]{1,128}")
_HEADER = b"x-request-id"

access_log = logging.getLogger(ACCESS_LOGGER)


def request_id_from(headers: Iterable[tuple[bytes, bytes]]) -> str:
    """The client's X-Request-ID if it is sane, else a new one (32 hex digits)."""
    for name, value in headers:
        if name.lower() == _HEADER:
            if _SANE_REQUEST_ID.fullmatch(value):
                return value.decode("ascii")
            break
    return uuid.uuid4().hex


class RequestObserver:
    """ASGI middleware: see the module docstring. ``observer()`` gives the observer to
    report to (read per request: the service is attached to the app after it is built)."""

    def __init__(self, app: ASGIApp, observer: Callable[[], Observer | None]) -> None:
        self.app = app
        self._observer = observer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_from(scope.get("headers", ()))
        header = (_HEADER, request_id.encode("ascii"))
        status = 500  # unless a response starts: an exception escaped the app
        started = trio.current_time()

        async def tagged_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() != _HEADER]
                message = {**message, "headers": [*headers, header]}
            await send(message)

        with structlog.contextvars.bound_contextvars(request_id=request_id):
            try:
                await self.app(scope, receive, tagged_send)
            finally:
                self._done(scope, status, trio.current_time() - started, request_id)

    def _done(self, scope: MutableMapping[str, Any], status: int, seconds: float, request_id: str) -> None:
        route = getattr(scope.get("route"), "path", None) or "unmatched"
        method = str(scope.get("method", ""))
        observer = self._observer()
        if observer is not None:
            observer.http_request(method, route, status, seconds)
        if access_log.isEnabledFor(logging.INFO):
            path = redact_keys(str(scope.get("path", "")))
            extra = {
                "method": method,
                "route": route,
                "path": path if len(path) <= MAX_PATH else path[:MAX_PATH] + "...",
                "status": status,
                "duration_ms": round(seconds * 1000, 3),
            }
            principal = scope.get("state", {}).get("principal")
            if principal is not None and principal is not OPEN:
                extra["key_id"] = principal.key_id  # who did it; never the key
            access_log.info("http.request", extra=extra)


class ObservedStarlette(Starlette):
    """Starlette with a :class:`RequestObserver` outside its whole middleware stack,
    reporting to ``app.state.service.observer``."""

    def build_middleware_stack(self) -> ASGIApp:
        return RequestObserver(super().build_middleware_stack(), self._service_observer)

    def _service_observer(self) -> Observer | None:
        service = getattr(self.state, "service", None)
        return None if service is None else service.observer

