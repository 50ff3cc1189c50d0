"""The security headers of every dashboard response, and the route label of its requests.

:class:`Guard` is pure ASGI around the whole dashboard (pages, events, static files,
errors). It adds:

* ``Content-Security-Policy``: :data:`CSP`. Nothing inline: the pages load one script and
  one stylesheet of the package (``/ui/static/``), so no hash or nonce is needed and an
  injected ``<script>`` or ``style=""`` would not run even if one got through escaping;
* ``X-Frame-Options: DENY`` (and ``frame-ancestors 'none'``), ``X-Content-Type-Options:
  nosniff``, ``Referrer-Policy: same-origin``, ``Cross-Origin-Opener-Policy: same-origin``;
* ``Cache-Control: no-store`` except on the static files (pages hold jobs and CSRF tokens).

Starlette writes the innermost matching route into ``scope["route"]``, which the request
observer (``jobsvc.middleware``) turns into the ``route`` label of the access log and the
HTTP metrics; inside this mount that would be ``/jobs/{job_id}``, the API's label. Guard puts
the mount's path in front (``/ui/jobs/{job_id}``).
"""

from __future__ import annotations

from typing import Any

import attrs
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["CSP", "SECURITY_HEADERS", "Guard"]

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "font-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
)
SECURITY_HEADERS: dict[str, str] = {
    "content-security-policy": CSP,
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "cross-origin-opener-policy": "same-origin",
}
_RAW = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in SECURITY_HEADERS.items()]
_NO_STORE = (b"cache-control", b"no-store")


@attrs.frozen
class _Label:
    """What the request observer reads of a route: its path."""

    path: str


class Guard:
    def __init__(self, app: ASGIApp, *, static_prefix: str = "/static") -> None:
        self.app = app
        self.static_prefix = static_prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        mount = str(scope.get("root_path", ""))
        path = str(scope.get("path", ""))
        static = path.startswith(mount + self.static_prefix + "/")
        prefix = str(getattr(scope.get("route"), "path", ""))  # the parent's Mount: "/ui"

        async def guarded_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {k for k, _ in _RAW} | ({_NO_STORE[0]} if not static else set())
                headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() not in names]
                headers += _RAW
                if not static:
                    headers.append(_NO_STORE)
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, guarded_send)
        finally:
            _label(scope, prefix)


def _label(scope: dict[str, Any] | Any, prefix: str) -> None:
    inner = getattr(scope.get("route"), "path", None)
    if inner is not None and prefix and not str(inner).startswith(prefix):
        scope["route"] = _Label(prefix + str(inner))
