"""Access control: API keys with scopes and tenants, the principal of a request, rate limits.

Theory of operation
-------------------
* **Keys.** A key is ``jsk_<key id>_<secret>``: a recognisable prefix (secret scanners and
  people can tell what leaked), a public key id (``k_`` and 16 hex digits, what logs and the
  dashboard name), and 256 random bits. Only ``sha256(key)`` is stored: the secret has all
  the entropy a slow KDF would add, and a check costs one hash. A presented key is looked up
  by its id, then compared with :func:`hmac.compare_digest` on the digests (bytes, so no
  input can raise); an unknown id costs the same comparison. A key never reaches a log, an
  error message or the keys file.
* **The keys file** (``--auth-file``, JSON or TOML by its extension) lists each key's id,
  hash, scopes, tenant, name, creation time and optional limits. ``jobsvc keys create``
  writes it (atomically, mode 0600), ``jobsvc serve`` reads it at start and again on
  SIGHUP (:meth:`Authenticator.reload`; a file that does not parse keeps the keys loaded).
  A configured file turns access control on even while it holds no key: revoking the last
  key locks everyone out instead of opening the service.
* **Scopes** (:data:`SCOPES`): ``submit`` (POST /jobs...), ``read`` (jobs, tasks, stats, the
  OpenAPI document), ``admin`` (retry, cancel, dashboard actions), ``metrics``. They are
  independent: ``admin`` alone can retry a job it is told the id of, not list jobs.
* **Tenants.** A key bound to a tenant submits jobs stamped with it and sees, waits for,
  lists, retries and cancels that tenant's jobs only; any other job is "not found". A key
  without a tenant sees every job.
* **Limits** (:class:`Limits`), per key with defaults from flags: a request rate (a token
  bucket per key and per instance, :class:`RateLimiter`, on trio's clock) and a cap on the
  waiting jobs of the key's tenant (read from the store's constant-time counts by the
  service, so it holds across instances).

Nothing here imports the HTTP layer: :mod:`jobsvc.guard` applies it to requests.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import logging
import math
import os
import re
import secrets
import tempfile
import tomllib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import attrs
import cattrs
import cattrs.v
import trio

from .codec import make_converter
from .errors import ConfigError

__all__ = [
    "OPEN",
    "SCOPES",
    "ApiKey",
    "Authenticator",
    "Limits",
    "Principal",
    "RateLimiter",
    "digest",
    "is_tenant",
    "load_keys",
    "new_key",
    "parse_keys",
    "parse_scopes",
    "redact_keys",
    "save_keys",
    "updating_keys",
]

log = logging.getLogger("jobsvc.auth")

SCOPES = ("submit", "read", "admin", "metrics")
TOKEN_PREFIX = "jsk_"
#: A key as presented: the prefix, the key id, the secret (256 bits in hex).
_TOKEN = re.compile(r"jsk_(k_[0-9a-f]{16})_[0-9a-f]{64}")
_KEY_ID = re.compile(r"k_[0-9a-f]{16}")
_HASH = re.compile(r"sha256:[0-9a-f]{64}")
_TENANT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
#: Compared against when the presented key id is unknown, so both cases cost the same.
_DUMMY_DIGEST = hashlib.sha256(b"jobsvc: no such key").digest()


_ANY_KEY = re.compile(r"jsk_[A-Za-z0-9_-]*")


def redact_keys(text: str) -> str:
    """``text`` with anything that looks like an API key masked (a key pasted into a URL
    must not reach the access log)."""
    return _ANY_KEY.sub("jsk_***", text) if TOKEN_PREFIX in text else text


def is_tenant(name: str) -> bool:
    """A tenant name: 1 to 64 letters, digits and ``. _ -``, starting with a letter or digit."""
    return _TENANT.fullmatch(name) is not None


def parse_scopes(text: str | Iterable[str]) -> frozenset[str]:
    """``"submit,read"`` (or an iterable of names) -> the scopes; ValueError names an unknown one."""
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text)]
    names = [n for n in names if n]
    unknown = [n for n in names if n not in SCOPES]
    if unknown or not names:
        raise ValueError(f"scopes are {', '.join(SCOPES)} (comma-separated, at least one), not {', '.join(unknown) or 'none'}")
    return frozenset(names)


@attrs.frozen
class Principal:
    """Who a request acts for: a key (never its secret), its scopes and its tenant."""

    key_id: str  #: public id of the key, e.g. "k_3f9a..."
    name: str  #: the key's label
    scopes: frozenset[str]  #: a subset of SCOPES
    tenant: str | None  #: None: the key is not bound to a tenant (it sees every job)

    def allows(self, scope: str) -> bool:
        return scope in self.scopes


#: Used when no keys are configured (jobsvc then serves on loopback only): every scope, no tenant.
OPEN = Principal(key_id="open", name="no keys configured", scopes=frozenset(SCOPES), tenant=None)


@attrs.frozen(kw_only=True)
class Limits:
    """What one key may use: requests per second with a burst (a token bucket; rate 0: no
    limit), and the waiting jobs of its tenant above which its submissions get 429 (0: no
    cap but ``--max-pending``)."""

    rate: float = 0.0
    burst: int = 1
    max_pending: int = 0


def _non_negative(_i: Any, attribute: attrs.Attribute[Any], value: float | None) -> None:
    if value is not None and not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{attribute.name} must be a number of at least 0, not {value!r}")


def _at_least_one(_i: Any, attribute: attrs.Attribute[Any], value: int | None) -> None:
    if value is not None and value < 1:
        raise ValueError(f"{attribute.name} must be at least 1, not {value!r}")


def _pattern(regex: re.Pattern[str], what: str, *, echo: bool = True) -> Any:
    """A validator; ``echo=False`` keeps the value out of the message (a key pasted into the
    hash field must not reach a log)."""

    def check(_i: Any, attribute: attrs.Attribute[Any], value: str | None) -> None:
        if value is not None and not regex.fullmatch(value):
            raise ValueError(f"{attribute.name} is not {what}" + (f": {value[:80]!r}" if echo else ""))

    return check


def _scopes(_i: Any, _a: Any, value: tuple[str, ...]) -> None:
    parse_scopes(value)


@attrs.frozen(kw_only=True)
class ApiKey:
    """One entry of the keys file. ``hash`` is ``"sha256:" + hex(sha256(key))``."""

    id: str = attrs.field(validator=_pattern(_KEY_ID, "a key id (k_ and 16 hex digits)"))
    hash: str = attrs.field(validator=_pattern(_HASH, "sha256: and 64 hex digits", echo=False))
    scopes: tuple[str, ...] = attrs.field(validator=_scopes)
    tenant: str | None = attrs.field(default=None, validator=_pattern(_TENANT, "a tenant name (letters, digits, . _ -)"))
    name: str = ""
    created: str = ""  #: ISO 8601, UTC
    rate: float | None = attrs.field(default=None, validator=_non_negative)  #: requests per second; 0: no limit
    burst: int | None = attrs.field(default=None, validator=_at_least_one)
    max_pending: int | None = attrs.field(default=None, validator=_non_negative)  #: 0: no cap

    @property
    def principal(self) -> Principal:
        return Principal(key_id=self.id, name=self.name, scopes=frozenset(self.scopes), tenant=self.tenant)


def digest(token: str) -> str:
    """The stored form of a key."""
    return "sha256:" + hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def new_key(
    *,
    scopes: Iterable[str],
    created: str,
    tenant: str | None = None,
    name: str = "",
    rate: float | None = None,
    burst: int | None = None,
    max_pending: int | None = None,
) -> tuple[str, ApiKey]:
    """A new key: ``(the key, shown once; its ApiKey, holding only its hash)``."""
    key_id = "k_" + secrets.token_hex(8)
    token = f"{TOKEN_PREFIX}{key_id}_{secrets.token_hex(32)}"
    key = ApiKey(
        id=key_id,
        hash=digest(token),
        scopes=tuple(s for s in SCOPES if s in parse_scopes(scopes)),
        tenant=tenant,
        name=name,
        created=created,
        rate=rate,
        burst=burst,
        max_pending=max_pending,
    )
    return token, key


# -- the keys file ---------------------------------------------------------------------------

_converter = make_converter()


def _is_toml(path: str) -> bool:
    return path.lower().endswith(".toml")


def _entries(key: ApiKey) -> dict[str, Any]:
    fields: dict[str, Any] = {"id": key.id, "hash": key.hash, "scopes": list(key.scopes), "tenant": key.tenant, "name": key.name}
    fields.update(created=key.created, rate=key.rate, burst=key.burst, max_pending=key.max_pending)
    return {k: v for k, v in fields.items() if v is not None}


def _toml_value(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string (ASCII, escaped) is a TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, bool):  # pragma: no cover - no key field is a boolean
        return "true" if value else "false"
    return repr(value)


def _render(path: str, keys: Sequence[ApiKey]) -> str:
    if not _is_toml(path):
        return json.dumps({"keys": [_entries(k) for k in keys]}, indent=2) + "\n"
    lines = ["# jobsvc API keys (jobsvc keys create/list/revoke). Hashes only: the keys themselves are never stored.", ""]
    for key in keys:
        lines.append("[[keys]]")
        lines += [f"{name} = {_toml_value(value)}" for name, value in _entries(key).items()]
        lines.append("")
    return "\n".join(lines)


def _reason(exc: BaseException, type_: Any) -> str:
    """Our validators' messages name the field and the problem; cattrs says the rest."""
    if isinstance(exc, ValueError) and str(exc):
        return str(exc)
    return cattrs.v.format_exception(exc, type_)


def parse_keys(text: str, *, path: str) -> list[ApiKey]:
    """The keys of a keys file's text; ConfigError naming what is wrong (never a key's hash)."""
    try:
        data = tomllib.loads(text) if _is_toml(path) else json.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"the keys file {path!r} is not valid {'TOML' if _is_toml(path) else 'JSON'}: {exc}") from None
    if not isinstance(data, dict) or set(data) - {"keys"} or not isinstance(data.get("keys", []), list):
        raise ConfigError(f"the keys file {path!r} must hold one list, 'keys', of key entries")
    keys: list[ApiKey] = []
    for i, entry in enumerate(data.get("keys", [])):
        try:
            keys.append(_converter.structure(entry, ApiKey))
        except (cattrs.BaseValidationError, TypeError, ValueError, AttributeError) as exc:
            if isinstance(exc, cattrs.BaseValidationError):
                reasons = "; ".join(cattrs.transform_error(exc, path=f"keys[{i}]", format_exception=_reason))
            else:
                reasons = f"{exc} @ keys[{i}]"
            raise ConfigError(f"the keys file {path!r} has an invalid entry: {reasons}") from None
    seen: set[str] = set()
    for key in keys:
        if key.id in seen:
            raise ConfigError(f"the keys file {path!r} lists the key id {key.id} twice")
        seen.add(key.id)
    return keys


def load_keys(path: str) -> list[ApiKey]:
    """Read a keys file; ConfigError (one line) if it is missing or invalid."""
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
    except FileNotFoundError:
        raise ConfigError(
            f"the keys file {path!r} does not exist; create a key with `jobsvc keys create --auth-file {path} --scope ...`"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the keys file {path!r}: {getattr(exc, 'strerror', None) or exc}") from None
    return parse_keys(text, path=path)


def save_keys(path: str, keys: Sequence[ApiKey]) -> None:
    """Replace the keys file atomically (a new file, synced, then renamed), readable by its
    owner only."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, temporary = tempfile.mkstemp(prefix=".jobsvc-keys-", dir=directory)  # mode 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(_render(path, keys))
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@contextlib.contextmanager
def updating_keys(path: str, *, create: bool = False) -> Iterator[list[ApiKey]]:
    """Read-modify-write the keys file under a lock (``<file>.lock``), so two ``jobsvc keys``
    commands cannot lose each other's change: change the list yielded; it is saved on a
    clean exit (if it changed). ``create``: a missing file starts empty."""
    try:
        lock = os.open(path + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise ConfigError(f"cannot lock the keys file {path!r}: {exc.strerror}") from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        keys = load_keys(path) if (os.path.exists(path) or not create) else []
        before = list(keys)
        yield keys
        if keys != before or not os.path.exists(path):
            save_keys(path, keys)
    finally:
        os.close(lock)


# -- authentication --------------------------------------------------------------------------


class Authenticator:
    """The keys a service accepts. ``enabled`` is False when no keys file is configured:
    every request then acts as :data:`OPEN` (and jobsvc serves loopback addresses only)."""

    def __init__(self, keys: Iterable[ApiKey] = (), *, path: str | None = None, enabled: bool | None = None, defaults: Limits | None = None) -> None:
        self.path = path
        self.enabled = bool(path) if enabled is None else enabled
        self.defaults = defaults or Limits()
        self._table: tuple[Mapping[str, ApiKey], Mapping[str, bytes]] = ({}, {})
        self._set(keys)

    @classmethod
    def from_settings(cls, settings: Any) -> Authenticator:
        """From ``--auth-file`` and the ``--key-*`` defaults; ConfigError if the file is bad."""
        defaults = Limits(rate=settings.key_rate, burst=settings.key_burst, max_pending=settings.key_max_pending)
        path = settings.auth_file
        return cls(load_keys(path) if path else (), path=path, defaults=defaults)

    def _set(self, keys: Iterable[ApiKey]) -> None:
        by_id = {key.id: key for key in keys}
        digests = {key.id: bytes.fromhex(key.hash.removeprefix("sha256:")) for key in by_id.values()}
        self._table = (by_id, digests)  # one assignment: a request sees the old keys or the new ones

    @property
    def key_ids(self) -> list[str]:
        return sorted(self._table[0])

    def authenticate(self, token: str) -> Principal | None:
        """The principal of a presented key, or None (unknown, revoked or malformed).
        Constant time in the secret."""
        keys, digests = self._table
        match = _TOKEN.fullmatch(token)
        key_id = match[1] if match else ""
        stored = digests.get(key_id, _DUMMY_DIGEST)
        presented = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        if not hmac.compare_digest(stored, presented) or key_id not in keys:
            return None
        return keys[key_id].principal

    def principal(self, key_id: str) -> Principal | None:
        """The principal of a key id that is still configured (a session holding a key id,
        such as the dashboard's, re-checks with this that its key was not revoked)."""
        key = self._table[0].get(key_id)
        return None if key is None else key.principal

    def limits(self, principal: Principal) -> Limits:
        """The key's limits, each falling back to the defaults; OPEN has none."""
        key = self._table[0].get(principal.key_id)
        if key is None:
            return Limits()
        d = self.defaults
        return Limits(
            rate=d.rate if key.rate is None else key.rate,
            burst=d.burst if key.burst is None else key.burst,
            max_pending=d.max_pending if key.max_pending is None else key.max_pending,
        )

    def reload(self) -> bool:
        """Read the keys file again (SIGHUP). A file that cannot be read or parsed keeps the
        keys loaded and is logged; True when the new keys are in use."""
        if self.path is None:
            return False
        try:
            keys = load_keys(self.path)
        except ConfigError as exc:
            log.error("keys file not reloaded, the previous keys stay in use: %s", exc)
            return False
        before = set(self._table[0])
        self._set(keys)
        after = set(self._table[0])
        log.info(
            "keys file reloaded: %d keys (added: %s; removed: %s)",
            len(after), ", ".join(sorted(after - before)) or "none", ", ".join(sorted(before - after)) or "none",
        )
        return True


# -- rate limits -------------------------------------------------------------------------------


@attrs.define
class _Bucket:
    tokens: float
    at: float


class RateLimiter:
    """A token bucket per key, in this process. Each request takes one token; a bucket
    refills at ``rate`` tokens per second up to ``burst``. Time is trio's clock, so tests
    on ``autojump_clock`` see exact times.

    Per instance on purpose: a bucket shared through the database would cost a write per
    request on the hottest path; N instances behind a balancer let a key through at up to
    N times its rate (set the rate per instance). The pending-jobs cap is the limit that
    holds across instances. Only keys that authenticated get a bucket: memory is bounded
    by the keys configured."""

    def __init__(self) -> None:
        self._buckets: dict[str, _Bucket] = {}

    def take(self, key_id: str, limits: Limits, now: float | None = None) -> float:
        """Take a token for ``key_id``: 0.0 if it had one, else the seconds until it will."""
        if limits.rate <= 0:
            return 0.0
        now = trio.current_time() if now is None else now
        bucket = self._buckets.get(key_id)
        if bucket is None:
            bucket = self._buckets[key_id] = _Bucket(tokens=float(limits.burst), at=now)
        else:
            bucket.tokens = min(float(limits.burst), bucket.tokens + (now - bucket.at) * limits.rate)
            bucket.at = now
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return 0.0
        return (1 - bucket.tokens) / limits.rate
