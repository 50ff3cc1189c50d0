"""Settings from command-line flags and ``JOBSVC_*`` environment variables. Pure: no I/O.

Precedence: a flag beats its environment variable, which beats the default. Every
``JOBSVC_`` variable must be known: a typo such as ``JOBSVC_WORKER=4`` is an error, not
silently ignored.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import attrs

from .errors import ConfigError

__all__ = ["ENV_PREFIX", "DatabaseURL", "Settings", "is_loopback", "parse_bind", "split_host"]

ENV_PREFIX = "JOBSVC_"
SECONDS = 1.0
KIB = 1024

#: Variables with the prefix that are not settings but are still recognised.
OTHER_ENV = {
    "JOBSVC_DEMO_FAILURE_RATE": "failure rate of the demo 'email' task (jobsvc.demo), 0..1",
    "JOBSVC_URL": "the service's URL for the client commands (jobsvc submit, get, list, ...)",
    "JOBSVC_API_KEY": "the API key the client commands send (Authorization: Bearer)",
}


#: A libpq connection string of ``key=value`` pairs ("host=db dbname=jobs user=app").
_CONNINFO = re.compile(r"\s*[A-Za-z_]+\s*=\s*('(?:[^'\\]|\\.)*'|\S*)(\s+[A-Za-z_]+\s*=\s*('(?:[^'\\]|\\.)*'|\S*))*\s*")
_CONNINFO_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S*)", re.IGNORECASE)


def redact(url: str) -> str:
    """``url`` with any password (user-info, a ``password=`` query parameter, or a
    ``password=`` pair of a key=value connection string) masked."""
    if "@" not in url and "password" not in url.lower():
        return url
    if "://" not in url:
        return _CONNINFO_PASSWORD.sub(r"\1***", url)
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    netloc = parts.netloc
    if "@" in netloc:
        creds, _, host = netloc.rpartition("@")
        user = creds.partition(":")[0]
        netloc = f"{user}@{host}"
    query = "&".join(
        f"{k}=***" if k.lower() == "password" else (f"{k}={v}" if v else k)
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


@attrs.frozen
class DatabaseURL:
    scheme: str  #: "memory", "sqlite" or "postgresql"
    url: str
    path: str = ""  #: SQLite file path

    @classmethod
    def parse(cls, url: str) -> DatabaseURL:
        if url in ("memory:", "memory://"):
            return cls("memory", url)
        if url.startswith("sqlite:///"):
            path = url[len("sqlite:///") :]
            if not path or path.endswith("/"):
                raise ConfigError(f"invalid database URL {url!r}: no file name after 'sqlite:///'")
            return cls("sqlite", url, path)
        if url.startswith(("postgresql://", "postgres://")) or ("=" in url and _CONNINFO.fullmatch(url)):
            return cls("postgresql", url)
        raise ConfigError(
            f"invalid database URL {redact(url)!r}; expected 'sqlite:///jobsvc.db' (relative), "
            "'sqlite:////var/lib/jobsvc/jobs.db' (absolute), 'memory:' or "
            "'postgresql://user@host:5432/dbname' (or a 'host=... dbname=...' connection string)"
        )

    @property
    def display(self) -> str:
        """The URL without a password, for logs and messages."""
        return redact(self.url)


def parse_bind(bind: str) -> tuple[str, int]:
    """'HOST:PORT' or '[v6]:PORT' -> (host, port); port 0 picks a free port."""
    host, sep, port_text = bind.rpartition(":")
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise ConfigError(f"invalid bind address {bind!r}; expected HOST:PORT such as 127.0.0.1:3000")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port_text)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address, without brackets) is a loopback address;
    ``localhost`` is, any other name is not (it is not resolved: refusing is the safe side)."""
    if host.lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def split_host(value: str) -> tuple[str, int | None]:
    """A Host header's value -> (host name in lower case, without IPv6 brackets; port or None).
    Anything unparseable gives ("", None), which no allowed host matches."""
    value = value.strip().lower()
    if value.startswith("["):
        host, bracket, rest = value[1:].partition("]")
        if not bracket or (rest and not (rest.startswith(":") and rest[1:].isdigit())):
            return "", None
        return host, int(rest[1:]) if rest else None
    host, colon, port = value.rpartition(":")
    if not colon:
        return value, None
    if not port.isdigit() or ":" in host:
        return "", None
    return host, int(port)


#: Host names every instance serves, besides its bind address.
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")


def _positive_int(name: str) -> Callable[[Any, Any, int], None]:
    def check(_i: Any, _a: Any, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a whole number of at least 1, not {value!r}")

    return check


def _positive_float(name: str, *, allow_zero: bool = False) -> Callable[[Any, Any, float], None]:
    def check(_i: Any, _a: Any, value: float) -> None:
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        if not ok or value < 0 or (value == 0 and not allow_zero):
            raise ConfigError(f"{name} must be a {'non-negative' if allow_zero else 'positive'} number, not {value!r}")

    return check


def _non_negative_int(name: str) -> Callable[[Any, Any, int], None]:
    def check(_i: Any, _a: Any, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"{name} must be a whole number of at least 0, not {value!r}")

    return check


def _check_bind(_i: Any, _a: Any, value: str) -> None:
    parse_bind(value)


def _optional_text(value: str | None) -> str | None:
    return value or None


_HOST_NAME = re.compile(r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?|[0-9a-f:.]+|\*")


def _host_names(value: Any) -> tuple[str, ...]:
    """``allowed_hosts`` from a comma-separated string or a sequence: names in lower case,
    without ports or IPv6 brackets ("*" stays; an unparseable entry stays as it is, to be
    named by the validator)."""
    if isinstance(value, str):
        value = value.split(",")
    entries = [str(v).strip() for v in value if str(v).strip()]
    return tuple(e if e == "*" else (split_host(e)[0] or e) for e in entries)


def _check_hosts(_i: Any, _a: Any, value: tuple[str, ...]) -> None:
    for name in value:
        if not _HOST_NAME.fullmatch(name):
            raise ConfigError(f"allowed-hosts: {name!r} is not a host name (give names such as jobs.example.com, or *)")


def _check_db(_i: Any, _a: Any, value: str) -> None:
    DatabaseURL.parse(value)


def _check_log_level(_i: Any, _a: Any, value: str) -> None:
    if value.lower() not in {"debug", "info", "warning", "error"}:
        raise ConfigError(f"log level must be debug, info, warning or error, not {value!r}")


#: ``--log-format``: JSON lines when stderr is not a terminal (auto), or always, or
#: readable key=value lines (console).
LOG_FORMATS = ("auto", "json", "console")


def _check_log_format(_i: Any, _a: Any, value: str) -> None:
    if value not in LOG_FORMATS:
        raise ConfigError(f"log format must be auto, json or console, not {value!r}")


@attrs.frozen(kw_only=True)
class Settings:
    """Everything ``jobsvc serve`` can be told. Each field is flag ``--name-with-dashes`` and
    variable ``JOBSVC_NAME``."""

    bind: str = attrs.field(default="127.0.0.1:3000", validator=_check_bind)
    db: str = attrs.field(default="sqlite:///jobsvc.db", validator=_check_db)
    tasks: tuple[str, ...] = ()  #: modules whose @task handlers are registered
    workers: int = attrs.field(default=32, validator=_positive_int("workers"))
    grace: float = attrs.field(default=20 * SECONDS, validator=_positive_float("grace", allow_zero=True))
    #: seconds a draining instance keeps its listener open (503 on /ready) so load balancers see it leave
    drain_delay: float = attrs.field(default=0.0, validator=_positive_float("drain-delay", allow_zero=True))
    max_pending: int = attrs.field(default=10_000, validator=_positive_int("max-pending"))
    max_attempts: int = attrs.field(default=5, validator=_positive_int("max-attempts"))
    backoff_base: float = attrs.field(default=1 * SECONDS, validator=_positive_float("backoff-base"))
    backoff_cap: float = attrs.field(default=300 * SECONDS, validator=_positive_float("backoff-cap"))
    timeout: float = attrs.field(default=300 * SECONDS, validator=_positive_float("timeout"))
    lease: float = attrs.field(default=30 * SECONDS, validator=_positive_float("lease"))
    heartbeat: float = attrs.field(default=10 * SECONDS, validator=_positive_float("heartbeat"))
    max_rescues: int = attrs.field(default=3, validator=_positive_int("max-rescues"))
    poll: float = attrs.field(default=1 * SECONDS, validator=_positive_float("poll"))
    retention: float = attrs.field(default=7 * 86400 * SECONDS, validator=_positive_float("retention", allow_zero=True))
    max_body: int = attrs.field(default=256 * KIB, validator=_positive_int("max-body"))
    fsync_interval: float = attrs.field(default=1 * SECONDS, validator=_positive_float("fsync-interval", allow_zero=True))
    migrate: bool = False
    log_level: str = attrs.field(default="info", validator=_check_log_level)
    log_format: str = attrs.field(default="auto", validator=_check_log_format)
    #: the API keys file (JSON or TOML, made by `jobsvc keys create`); None: no keys
    auth_file: str | None = attrs.field(default=None, converter=_optional_text)
    #: serve a non-loopback address without keys (a warning at every start)
    insecure_no_auth: bool = False
    #: Host header names served (DNS rebinding); empty: the bind address, localhost,
    #: 127.0.0.1 and ::1; "*": any
    allowed_hosts: tuple[str, ...] = attrs.field(default=(), converter=_host_names, validator=_check_hosts)
    #: default requests per second per API key (0: no limit), and its burst
    key_rate: float = attrs.field(default=100.0, validator=_positive_float("key-rate", allow_zero=True))
    key_burst: int = attrs.field(default=200, validator=_positive_int("key-burst"))
    #: default cap on the waiting jobs of a key's tenant (0: only --max-pending)
    key_max_pending: int = attrs.field(default=0, validator=_non_negative_int("key-max-pending"))

    def __attrs_post_init__(self) -> None:
        if self.heartbeat * 2 > self.lease:
            raise ConfigError(
                f"lease ({self.lease:g}s) must be at least twice the heartbeat ({self.heartbeat:g}s), "
                "or a live worker could lose its lease between two heartbeats"
            )
        if self.backoff_cap < self.backoff_base:
            raise ConfigError(f"backoff-cap ({self.backoff_cap:g}s) is below backoff-base ({self.backoff_base:g}s)")

    @property
    def database(self) -> DatabaseURL:
        return DatabaseURL.parse(self.db)

    @property
    def served_hosts(self) -> frozenset[str] | None:
        """The Host header names served (None: any): ``allowed_hosts``, else the bind
        address (unless it is a wildcard), localhost, 127.0.0.1 and ::1."""
        if "*" in self.allowed_hosts:
            return None
        if self.allowed_hosts:
            return frozenset(self.allowed_hosts)
        host = self.host_port[0].lower()
        bound = () if host in ("", "0.0.0.0", "::") else (host,)
        return frozenset((*bound, *LOCAL_HOSTS))

    def check_exposure(self) -> None:
        """ConfigError (one line) for a non-loopback bind without API keys, unless
        ``insecure_no_auth`` accepts the risk."""
        host = self.host_port[0]
        if self.auth_file is None and not self.insecure_no_auth and not is_loopback(host):
            raise ConfigError(
                f"refusing to serve {self.bind} without API keys: anyone who can reach it could submit, "
                "cancel and read jobs; create a key (`jobsvc keys create --scope submit,read --auth-file FILE`) "
                "and pass --auth-file FILE, bind a loopback address such as 127.0.0.1, "
                "or accept the risk with --insecure-no-auth"
            )

    @property
    def host_port(self) -> tuple[str, int]:
        return parse_bind(self.bind)

    @classmethod
    def env_names(cls) -> dict[str, str]:
        """JOBSVC_* variable -> field name."""
        return {ENV_PREFIX + f.name.upper(): f.name for f in attrs.fields(cls)}

    @classmethod
    def from_sources(cls, flags: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from parsed flags (None values mean "not given") and an environment."""
        values: dict[str, Any] = {}
        names = cls.env_names()
        fields = {f.name: f for f in attrs.fields(cls)}
        for key, raw in (environ or {}).items():
            if not key.startswith(ENV_PREFIX) or key in OTHER_ENV:
                continue
            if key not in names:
                known = ", ".join(sorted([*names, *OTHER_ENV]))
                raise ConfigError(f"unknown environment variable {key}; known JOBSVC_ variables: {known}")
            values[names[key]] = _from_text(names[key], fields[names[key]].type, raw, source=key)
        for name, value in (flags or {}).items():
            if value is not None:
                if name not in fields:
                    raise ConfigError(f"unknown setting {name!r}")
                values[name] = tuple(value) if name == "tasks" else value
        try:
            return cls(**values)
        except (TypeError, ValueError) as exc:  # pragma: no cover - validators raise ConfigError
            raise ConfigError(str(exc)) from exc


def _from_text(name: str, type_: Any, raw: str, *, source: str) -> Any:
    text = raw.strip()
    kind = str(type_)
    try:
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
        if kind == "bool":
            if text.lower() in {"1", "true", "yes", "on"}:
                return True
            if text.lower() in {"0", "false", "no", "off", ""}:
                return False
            raise ValueError(text)
        if kind.startswith("tuple"):
            return tuple(part.strip() for part in text.split(",") if part.strip())
        return text
    except ValueError:
        raise ConfigError(f"{source}={raw!r} is not a valid {kind} for {name}") from None
