"""Dashboard sessions: a signed cookie naming the API key (never the key), and CSRF tokens.

The cookie ``jobsvc_ui`` holds ``v1.<nonce>.<key id>.<issued>.<signature>``:

* ``nonce``: 16 random bytes, new at every login and logout (no session fixation); the
  CSRF token of every form is ``HMAC(secret, "csrf|" + nonce)``, so it is tied to this
  session and useless with any other;
* ``key id``: the key's public id (base64url), or empty for a session that has not logged
  in (it still carries a nonce: the login form has a CSRF token too);
* ``issued``: epoch seconds; a session older than :data:`MAX_AGE` is not accepted;
* ``signature``: HMAC-SHA256 of the rest with the dashboard's secret.

It is ``HttpOnly``, ``SameSite=Strict``, ``Path=<the dashboard's root>``, and ``Secure``
when the request came over https. On every request the key it names is looked up again
(:meth:`Authenticator.principal`): a revoked key ends its sessions at once.

Logging out replaces the cookie and remembers the old session's nonce until it would have
expired anyway (at most :data:`MAX_ENDED` of them), so a copy of the old cookie is refused.

The secret is made at start-up (32 random bytes): sessions do not outlive the process and
are not shared between instances (behind a load balancer, use sticky sessions or log in
again; a shared secret setting would lift this).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time

import attrs

from ..auth import OPEN, Authenticator, Principal

__all__ = ["COOKIE", "MAX_AGE", "Session", "Sessions"]

COOKIE = "jobsvc_ui"
#: Seconds a session lasts.
MAX_AGE = 12 * 3600
#: Ended sessions remembered (the oldest is forgotten first).
MAX_ENDED = 10_000


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@attrs.frozen
class Session:
    nonce: str
    key_id: str | None  #: None: not logged in
    issued: int


class Sessions:
    """Makes and checks session cookies and CSRF tokens with one secret."""

    def __init__(self, secret: bytes | None = None) -> None:
        self._secret = secret or secrets.token_bytes(32)
        self._ended: dict[str, int] = {}  #: nonce -> issued, of sessions logged out

    def end(self, session: Session) -> None:
        """Refuse this session from now on (logout)."""
        self._ended[session.nonce] = session.issued
        if len(self._ended) > MAX_ENDED:
            oldest = time.time() - MAX_AGE
            self._ended = {n: t for n, t in self._ended.items() if t >= oldest}
            while len(self._ended) > MAX_ENDED:
                del self._ended[next(iter(self._ended))]

    def _sign(self, text: str) -> str:
        return _b64(hmac.new(self._secret, text.encode("ascii"), hashlib.sha256).digest())

    def new(self, key_id: str | None = None) -> Session:
        return Session(nonce=_b64(secrets.token_bytes(16)), key_id=key_id, issued=int(time.time()))

    def encode(self, session: Session) -> str:
        key = _b64(session.key_id.encode("utf-8")) if session.key_id is not None else ""
        body = f"v1.{session.nonce}.{key}.{session.issued}"
        return f"{body}.{self._sign(body)}"

    def decode(self, cookie: str | None) -> Session | None:
        """The session of a cookie, or None if it is missing, forged, malformed or expired."""
        if not cookie or len(cookie) > 1024 or not cookie.isascii():
            return None
        body, _, signature = cookie.rpartition(".")
        if not hmac.compare_digest(self._sign(body), signature):
            return None
        parts = body.split(".")
        if len(parts) != 4 or parts[0] != "v1" or not parts[3].isdigit():
            return None
        issued = int(parts[3])
        if not 0 <= time.time() - issued <= MAX_AGE:
            return None
        try:
            key_id = _unb64(parts[2]).decode("utf-8") if parts[2] else None
        except (binascii.Error, UnicodeDecodeError, ValueError):  # pragma: no cover - signed by us
            return None
        if parts[1] in self._ended:
            return None
        return Session(nonce=parts[1], key_id=key_id, issued=issued)

    def csrf_token(self, session: Session) -> str:
        return self._sign(f"csrf|{session.nonce}")

    def csrf_ok(self, session: Session | None, token: str | None) -> bool:
        if session is None or not token or not token.isascii():
            return False
        return hmac.compare_digest(self.csrf_token(session), token)

    @staticmethod
    def principal(session: Session | None, auth: Authenticator) -> Principal | None:
        """Who the session acts for: OPEN when no keys are configured; else the key it
        names if that key still exists; else None (log in)."""
        if not auth.enabled:
            return OPEN
        if session is None or session.key_id is None:
            return None
        return auth.principal(session.key_id)

    @staticmethod
    def cookie_header(value: str, *, path: str, secure: bool, max_age: int = MAX_AGE) -> str:
        attributes = [f"{COOKIE}={value}", f"Path={path or '/'}", f"Max-Age={max_age}", "HttpOnly", "SameSite=Strict"]
        if secure:
            attributes.append("Secure")
        return "; ".join(attributes)
