"""The access guard: every HTTP request passes it before any route runs.

:class:`Guard` is pure ASGI and sits inside Starlette's error middleware (so a bug here is a
500 problem, never a traceback) and inside :class:`~jobsvc.middleware.RequestObserver` (so
what it refuses is in the access log and the metrics under the route it was meant for). It
finds the route a request is for, as Starlette's router will, and applies that route's
:class:`Rule`, in this order:

1. a health probe (``/health``, ``/ready``) passes at once: load balancers and orchestrators
   address instances by IP, and a probe reveals nothing worth a key;
2. **Host** (DNS rebinding): a Host header that is not one of the served names
   (``--allowed-hosts``) is 421;
3. **loopback only**: with no keys configured (and no ``--insecure-no-auth``), a request that
   reached a non-loopback address of this server is 403 (``jobsvc serve`` refuses such a bind
   at start; this also covers the hypercorn CLI, where jobsvc does not choose the bind);
4. **browser protections** (every route but the probes and the ``/docs`` page): a request
   from another site (an ``Origin`` that is not this server's, or ``Sec-Fetch-Site:
   cross-site``/``same-site``) is 403; on API routes, a body that is not JSON (any content
   type but ``application/json`` and ``application/*+json``, or a body without one) is 415,
   so no HTML form and no ``fetch`` without a CORS preflight can act;
5. **authentication**: with keys configured, a route that needs a scope needs
   ``Authorization: Bearer <key>``: none, or an unknown key, is 401 with
   ``WWW-Authenticate: Bearer``; the key's principal becomes ``request.state.principal``
   (without keys: :data:`~jobsvc.auth.OPEN`); a request that matches no route needs a valid
   key too (then the router answers 404/405), so routes cannot be probed without one;
6. **authorization**: a key without the route's scope is 403;
7. **rate**: a key over its rate is 429 with ``Retry-After``.

Every refusal is a problem+json answer; none names or echoes the key.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

import attrs
from starlette.responses import Response
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Receive, Scope, Send

from .auth import OPEN, SCOPES, Authenticator, Principal, RateLimiter
from .config import is_loopback, split_host
from .errors import (
    CrossSiteRequest,
    Forbidden,
    JobsvcError,
    LoopbackOnly,
    MisdirectedRequest,
    RateLimited,
    Unauthorized,
    UnsupportedMediaType,
)

__all__ = ["UNMATCHED", "Guard", "Rule", "check_rules", "is_json_media_type"]


def _scope_name(_i: Any, _a: Any, value: str | None) -> None:
    if value is not None and value not in SCOPES:
        raise ValueError(f"unknown scope {value!r}; scopes are {', '.join(SCOPES)}")


@attrs.frozen
class Rule:
    """Who may use a route."""

    #: the scope a key needs; None: no key (a public page, or a route that authenticates
    #: its callers itself, such as the dashboard's session pages)
    scope: str | None = attrs.field(validator=_scope_name)
    #: refuse requests made by pages of other sites (Origin, Sec-Fetch-Site); False for a
    #: page a link on another site may lead to
    same_origin: bool = True
    #: with ``same_origin``: GET and HEAD may still come from other sites (a link to a page),
    #: only writes (a form posted by another site's page) are refused
    cross_site_reads: bool = False
    #: bodies must be JSON (False: a route that takes HTML forms, such as the dashboard's)
    json_only: bool = True
    #: a health probe: none of the checks apply
    probe: bool = False


#: The rule for a request that matches no route: a valid key first, then 404/405.
UNMATCHED = Rule(scope=None)

_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_REFUSED_FETCH_SITES = frozenset({b"cross-site", b"same-site"})


def is_json_media_type(content_type: str) -> bool:
    """``application/json`` or ``application/<something>+json`` (parameters allowed): types
    a browser can send cross-site only after a CORS preflight, which jobsvc never grants."""
    media = content_type.split(";", 1)[0].strip().lower()
    kind, slash, subtype = media.partition("/")
    return kind == "application" and bool(slash) and (subtype == "json" or subtype.endswith("+json"))


def _same_origin(origin: str, host: str) -> bool:
    """Whether an Origin header names the site the Host header names (scheme aside: behind a
    TLS-terminating proxy the scheme differs; the name and the port must match)."""
    try:
        parts = urlsplit(origin)
        port = parts.port
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False
    default = 80 if parts.scheme == "http" else 443
    name, host_port = split_host(host)
    return (parts.hostname.lower(), port or default) == (name, host_port or default)


def check_rules(routes: Iterable[BaseRoute], rules: Mapping[str, Rule]) -> None:
    """LookupError naming the routes that have no rule (by route name: the endpoint's name
    for a Route, ``name=`` for a Mount). Fail closed: such a route is an error, not an open
    door."""
    missing = [f"{getattr(r, 'path', r)} ({getattr(r, 'name', None)})" for r in routes if getattr(r, "name", None) not in rules]
    if missing:
        raise LookupError(f"routes without an access rule in jobsvc.app.ACCESS: {', '.join(missing)}")


class Guard:
    """ASGI middleware: see the module docstring.

    ``routes`` is the app's own list of routes (read live: a route mounted later is seen),
    ``rules`` the rule of each by route name, ``hosts`` the Host names served (None: any),
    ``render`` makes the problem+json answer of a refusal."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        auth: Authenticator,
        routes: Iterable[BaseRoute],
        rules: Mapping[str, Rule],
        hosts: frozenset[str] | None,
        insecure: bool,
        render: Callable[[JobsvcError, str], Response],
        limiter: RateLimiter | None = None,
    ) -> None:
        self.app = app
        self.auth = auth
        self.routes = routes
        self.rules = rules
        self.hosts = hosts
        self.insecure = insecure
        self.render = render
        self.limiter = limiter or RateLimiter()
        check_rules(routes, rules)

    def _route(self, scope: Scope) -> tuple[BaseRoute | None, Rule]:
        partial: BaseRoute | None = None
        for route in self.routes:
            match, _ = route.matches(scope)
            if match is Match.FULL:
                return route, self.rules[route.name]  # type: ignore[attr-defined]
            if match is Match.PARTIAL and partial is None:
                partial = route
        if partial is not None:  # the path exists, the method does not: 405 after the checks
            return partial, self.rules[partial.name]  # type: ignore[attr-defined]
        return None, UNMATCHED

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route, rule = self._route(scope)
        if route is not None:
            scope["route"] = route  # the access log and the metrics name the route
        if not rule.probe:
            try:
                principal = self._check(scope, rule, matched=route is not None)
            except JobsvcError as refused:
                await self.render(refused, str(scope.get("path", "")))(scope, receive, send)
                return
            if principal is not None:
                scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)

    def _check(self, scope: Scope, rule: Rule, *, matched: bool) -> Principal | None:
        headers: dict[bytes, bytes] = {}
        for name, value in scope.get("headers", ()):
            headers.setdefault(name.lower(), value)
        host = headers.get(b"host", b"").decode("latin-1")
        if self.hosts is not None and split_host(host)[0] not in self.hosts:
            shown = host[:100] or "(none)"
            raise MisdirectedRequest(f"this server does not serve the host {shown!r}; the served names are set by --allowed-hosts")
        if not self.auth.enabled and not self.insecure:
            server = scope.get("server")
            if server and not is_loopback(str(server[0])):
                raise LoopbackOnly(
                    "no API keys are configured, so jobsvc answers on loopback addresses only; "
                    "configure keys (--auth-file) to serve this address"
                )
        if rule.same_origin and not (rule.cross_site_reads and scope.get("method") in _SAFE_METHODS):
            self._same_origin_only(headers, host)
        if rule.json_only:
            self._json_only(scope, headers)
        if rule.scope is None and matched:
            return None
        principal = self._authenticate(headers)
        if rule.scope is not None and not principal.allows(rule.scope):
            raise Forbidden(f"this API key lacks the {rule.scope!r} scope")
        if principal is not OPEN:
            limits = self.auth.limits(principal)
            wait = self.limiter.take(principal.key_id, limits)
            if wait > 0:
                raise RateLimited(
                    f"this API key may send {limits.rate:g} requests per second (bursts of {limits.burst}); retry in {wait:.3g}s",
                    retry_after=max(1, math.ceil(wait)),
                )
        return principal

    @staticmethod
    def _same_origin_only(headers: Mapping[bytes, bytes], host: str) -> None:
        origin = headers.get(b"origin")
        if origin is not None and not _same_origin(origin.decode("latin-1"), host):
            raise CrossSiteRequest("the API does not answer requests made by pages of other sites (Origin)")
        if headers.get(b"sec-fetch-site", b"").lower() in _REFUSED_FETCH_SITES:
            raise CrossSiteRequest("the API does not answer requests made by pages of other sites (Sec-Fetch-Site)")

    @staticmethod
    def _json_only(scope: Scope, headers: Mapping[bytes, bytes]) -> None:
        if scope.get("method") in _SAFE_METHODS:
            return
        content_type = headers.get(b"content-type")
        if content_type is not None:
            if not is_json_media_type(content_type.decode("latin-1")):
                raise UnsupportedMediaType(f"expected 'Content-Type: application/json', got {content_type.decode('latin-1')[:100]!r}")
        elif headers.get(b"content-length", b"0").strip() not in (b"0", b"") or b"transfer-encoding" in headers:
            raise UnsupportedMediaType("a request body needs 'Content-Type: application/json'")

    def _authenticate(self, headers: Mapping[bytes, bytes]) -> Principal:
        if not self.auth.enabled:
            return OPEN
        authorization = headers.get(b"authorization")
        if authorization is None:
            raise Unauthorized()
        scheme, _, token = authorization.decode("latin-1").strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("send the API key as 'Authorization: Bearer <key>'", invalid_token=True)
        principal = self.auth.authenticate(token.strip())
        if principal is None:
            raise Unauthorized("the API key is not valid: unknown, revoked or malformed", invalid_token=True)
        return principal
