"""What every dashboard request needs: who asks (session -> principal), the facade scoped to
their tenant, the CSRF token of their forms, and rendering with the security defaults.

Flow of a request (pages, actions and the event stream alike)::

    cookie --Sessions.decode--> Session (a new anonymous one if missing or invalid)
      POST: CSRF token of the form == HMAC(secret, session nonce)?   else 403
      Sessions.principal: OPEN (no keys configured) | the key's principal | None -> login
      principal.allows("read") for viewing, ("admin") for actions?    else 403
      -> View: principal, Scoped(service, principal.tenant), csrf token
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

import attrs
import trio
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from ..auth import Authenticator, Principal
from ..service import JobService
from .activity import Activity, attach_activity
from .scoped import Scoped
from .session import COOKIE, Session, Sessions

if TYPE_CHECKING:
    from starlette.templating import Jinja2Templates

__all__ = ["Dashboard", "LoginRequired", "View"]

#: Largest form body accepted (a bulk action's ids fit many times over).
MAX_FORM = 64 * 1024
#: A form body must arrive within this many seconds.
FORM_DEADLINE = 10.0


class LoginRequired(Exception):
    """Keys are configured and this request's session has none that still exists."""


@attrs.frozen
class View:
    """One request's principal, scoped facade and CSRF token."""

    request: Request
    session: Session
    set_cookie: str | None  #: a Set-Cookie value when the session is new
    principal: Principal
    jobs: Scoped
    csrf: str
    base: str  #: the dashboard's root path ("/ui")

    @property
    def can_act(self) -> bool:
        return self.principal.allows("admin")


def iso_time(ts: float | None) -> str:
    if ts is None:
        return "—"
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S") + "Z"


def duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "—"
    seconds = max(0.0, seconds)
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h {minutes:02d}m"
    return f"{hours // 24}d {hours % 24}h"


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False)


def _preview(value: Any, length: int = 80) -> str:
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return text if len(text) <= length else text[: length - 1] + "…"


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.1f}%"


def make_templates() -> Jinja2Templates:
    """Jinja2 with autoescape on for every template (whatever its extension) and undefined
    names as errors, so a typo cannot silently print nothing.

    Jinja2 is imported here, not at the top: it was about a fifth of what ``jobsvc serve``
    imports (``python -X importtime``), and a service whose dashboard nobody opens never
    needs it."""
    import jinja2
    from starlette.templating import Jinja2Templates

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("jobsvc.dashboard", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(iso=iso_time, duration=duration, pretty=_pretty, preview=_preview, percent=_percent)
    return Jinja2Templates(env=env)


class Dashboard:
    """The dashboard's shared state: the service, its activity ring, the session secret,
    the templates and the number of open event streams."""

    def __init__(self, service: JobService, auth: Any = None) -> None:
        self.service = service
        self.activity: Activity | None = attach_activity(service.observer, service.clock)
        self.sessions = Sessions()
        self.streams = 0
        self._auth = auth  # a callable giving the app's Authenticator (read per request)
        self._open = Authenticator()  # no keys: every request acts as OPEN

    @functools.cached_property
    def templates(self) -> Jinja2Templates:
        """Made (and Jinja2 imported) when the first page is rendered."""
        return make_templates()

    @property
    def auth(self) -> Authenticator:
        found = self._auth() if self._auth is not None else None
        return found if found is not None else self._open

    # -- who is asking -------------------------------------------------------------------

    def session_of(self, request: Request) -> tuple[Session, str | None]:
        """The request's session, or a new anonymous one with the cookie that carries it."""
        session = self.sessions.decode(request.cookies.get(COOKIE))
        if session is not None:
            return session, None
        session = self.sessions.new()
        return session, self.cookie_for(request, session)

    def cookie_for(self, request: Request, session: Session, *, max_age: int | None = None) -> str:
        secure = request.url.scheme == "https"
        kwargs = {} if max_age is None else {"max_age": max_age}
        return self.sessions.cookie_header(self.sessions.encode(session), path=base_of(request), secure=secure, **kwargs)

    def view(self, request: Request, *, scope: str = "read", form: Mapping[str, list[str]] | None = None) -> View:
        """The request's View. ``form``: a POST's fields, whose CSRF token is checked first.

        Raises LoginRequired (no principal), HTTPException 403 (a wrong CSRF token, or
        the principal lacks ``scope``)."""
        session, set_cookie = self.session_of(request)
        if form is not None and not self.sessions.csrf_ok(None if set_cookie else session, first(form, "csrf")):
            raise HTTPException(403, "the form's CSRF token is missing or wrong: reload the page and try again")
        principal = self.sessions.principal(session, self.auth)
        if principal is None:
            raise LoginRequired
        if not principal.allows(scope):
            raise HTTPException(403, f"the key {principal.name!r} does not have the {scope!r} scope")
        return View(
            request=request,
            session=session,
            set_cookie=set_cookie,
            principal=principal,
            jobs=Scoped(self.service, principal.tenant),
            csrf=self.sessions.csrf_token(session),
            base=base_of(request),
        )

    # -- answering -----------------------------------------------------------------------

    def render(
        self, request: Request, template: str, context: dict[str, Any], *, view: View | None = None,
        status: int = 200, set_cookie: str | None = None,
    ) -> Response:
        context = {
            "base": base_of(request),
            "view": view,
            "auth_enabled": self.auth.enabled,
            "nav": "",
            **context,
        }
        response = self.templates.TemplateResponse(request, template, context, status_code=status)
        cookie = set_cookie or (view.set_cookie if view is not None else None)
        if cookie is not None:
            response.headers.append("set-cookie", cookie)
        return response


def base_of(request: Request) -> str:
    """The dashboard's root path, as mounted ("/ui", behind any root_path)."""
    return str(request.scope.get("root_path", "")).rstrip("/")


def first(form: Mapping[str, list[str]], name: str) -> str | None:
    values = form.get(name)
    return values[0] if values else None


async def read_form(request: Request) -> dict[str, list[str]]:
    """An ``application/x-www-form-urlencoded`` body, bounded in size and time; any other
    body is not read and gives no fields."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        return {}  # not one of our forms: it has no CSRF token, and is refused for that
    chunks: list[bytes] = []
    size = 0
    with trio.move_on_after(FORM_DEADLINE) as scope:
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_FORM:
                raise HTTPException(413, f"the form exceeds {MAX_FORM} bytes")
            chunks.append(chunk)
    if scope.cancelled_caught:
        raise HTTPException(408, f"the form did not arrive within {FORM_DEADLINE:g}s")
    try:
        text = b"".join(chunks).decode("ascii")
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=False, max_num_fields=1000)
    except (UnicodeDecodeError, ValueError):
        raise HTTPException(400, "the form is malformed") from None
    form: dict[str, list[str]] = {}
    for name, value in pairs:
        form.setdefault(name, []).append(value)
    return form
