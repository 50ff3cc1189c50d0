"""jobsvc.config: defaults, flag > environment > default, strict JOBSVC_ variables, validation."""

from __future__ import annotations

from typing import Any

import attrs
import pytest

from jobsvc.config import DatabaseURL, Settings, parse_bind
from jobsvc.errors import ConfigError

DEFAULTS = {
    "bind": "127.0.0.1:3000",
    "db": "sqlite:///jobsvc.db",
    "tasks": (),
    "workers": 32,
    "grace": 20.0,
    "drain_delay": 0.0,
    "max_pending": 10_000,
    "max_attempts": 5,
    "backoff_base": 1.0,
    "backoff_cap": 300.0,
    "timeout": 300.0,
    "lease": 30.0,
    "heartbeat": 10.0,
    "max_rescues": 3,
    "poll": 1.0,
    "retention": 7 * 86400.0,
    "max_body": 256 * 1024,
    "fsync_interval": 1.0,
    "migrate": False,
    "log_level": "info",
    "log_format": "auto",
    "auth_file": None,
    "insecure_no_auth": False,
    "allowed_hosts": (),
    "key_rate": 100.0,
    "key_burst": 200,
    "key_max_pending": 0,
}


def test_defaults() -> None:
    """Settings() and from_sources() with nothing given have the documented defaults."""
    assert attrs.asdict(Settings(), recurse=False) == DEFAULTS
    assert Settings.from_sources() == Settings()
    assert Settings.from_sources({}, {}) == Settings()
    assert Settings().host_port == ("127.0.0.1", 3000)
    assert Settings().database == DatabaseURL("sqlite", "sqlite:///jobsvc.db", "jobsvc.db")


def test_every_setting_has_an_environment_variable() -> None:
    """Each field is JOBSVC_<NAME>."""
    names = Settings.env_names()
    assert names == {f"JOBSVC_{name.upper()}": name for name in DEFAULTS}


def test_environment_beats_defaults() -> None:
    """JOBSVC_* variables set settings, parsed from text by the field's type."""
    s = Settings.from_sources(
        environ={
            "JOBSVC_WORKERS": " 4 ",
            "JOBSVC_GRACE": "2.5",
            "JOBSVC_TASKS": "a, b,,c",
            "JOBSVC_MIGRATE": "yes",
            "JOBSVC_DB": "memory:",
            "JOBSVC_BIND": "[::1]:0",
            "JOBSVC_LOG_LEVEL": "DEBUG",
            "PATH": "/usr/bin",  # not ours: ignored
            "HOME": "/root",
        }
    )
    assert (s.workers, s.grace, s.tasks, s.migrate, s.db, s.host_port, s.log_level) == (
        4, 2.5, ("a", "b", "c"), True, "memory:", ("::1", 0), "DEBUG",
    )
    assert s.max_pending == DEFAULTS["max_pending"]


def test_flags_beat_environment_beat_defaults() -> None:
    """A flag wins over its variable; a None flag means "not given" and the variable applies."""
    env = {"JOBSVC_WORKERS": "4", "JOBSVC_GRACE": "3", "JOBSVC_TASKS": "envmod"}
    s = Settings.from_sources({"workers": 6, "grace": None, "tasks": ["flagmod", "other"], "max_body": None}, env)
    assert (s.workers, s.grace, s.tasks, s.max_body) == (6, 3.0, ("flagmod", "other"), DEFAULTS["max_body"])


@pytest.mark.parametrize(("text", "value"), [("1", True), ("true", True), ("ON", True), ("0", False), ("no", False), ("off", False), ("", False)])
def test_boolean_variables(text: str, value: bool) -> None:
    """Booleans accept 1/true/yes/on and 0/false/no/off/empty, case-insensitively."""
    assert Settings.from_sources(environ={"JOBSVC_MIGRATE": text}).migrate is value


def test_unknown_jobsvc_variable_is_an_error_naming_it() -> None:
    """A typo such as JOBSVC_WORKER is a ConfigError naming it and listing the known variables."""
    with pytest.raises(ConfigError) as info:
        Settings.from_sources(environ={"JOBSVC_WORKER": "4"})
    message = str(info.value)
    assert message.startswith("unknown environment variable JOBSVC_WORKER; known JOBSVC_ variables: ")
    assert "JOBSVC_WORKERS" in message and "JOBSVC_DEMO_FAILURE_RATE" in message


def test_unknown_flag_is_an_error() -> None:
    """A flag that is not a setting is a ConfigError naming it."""
    with pytest.raises(ConfigError, match=r"^unknown setting 'nope'$"):
        Settings.from_sources({"nope": 1})


def test_demo_failure_rate_is_tolerated() -> None:
    """JOBSVC_DEMO_FAILURE_RATE is recognised (used by jobsvc.demo), not a setting and not an error."""
    assert Settings.from_sources(environ={"JOBSVC_DEMO_FAILURE_RATE": "0.9"}) == Settings()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"JOBSVC_WORKERS": "four"}, "JOBSVC_WORKERS='four' is not a valid int for workers"),
        ({"JOBSVC_WORKERS": "4.0"}, "JOBSVC_WORKERS='4.0' is not a valid int for workers"),
        ({"JOBSVC_GRACE": "soon"}, "JOBSVC_GRACE='soon' is not a valid float for grace"),
        ({"JOBSVC_MIGRATE": "maybe"}, "JOBSVC_MIGRATE='maybe' is not a valid bool for migrate"),
        ({"JOBSVC_WORKERS": "0"}, "workers must be a whole number of at least 1, not 0"),
        ({"JOBSVC_GRACE": "-1"}, "grace must be a non-negative number, not -1.0"),
        ({"JOBSVC_LEASE": "inf"}, "lease must be a positive number, not inf"),
        ({"JOBSVC_DB": "mysql://db"}, "invalid database URL 'mysql://db'"),
    ],
)
def test_bad_environment_values_are_config_errors(env: dict[str, str], message: str) -> None:
    """Unparseable or invalid variable values are a ConfigError with a clear message."""
    with pytest.raises(ConfigError) as info:
        Settings.from_sources(environ=env)
    assert str(info.value).startswith(message)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"workers": 0}, "workers must be a whole number of at least 1, not 0"),
        ({"workers": True}, "workers must be a whole number of at least 1, not True"),
        ({"max_pending": -5}, "max-pending must be a whole number of at least 1, not -5"),
        ({"max_body": 1.5}, "max-body must be a whole number of at least 1, not 1.5"),
        ({"grace": -1}, "grace must be a non-negative number, not -1"),
        ({"grace": float("nan")}, "grace must be a non-negative number, not nan"),
        ({"timeout": 0}, "timeout must be a positive number, not 0"),
        ({"poll": True}, "poll must be a positive number, not True"),
        ({"lease": 10, "heartbeat": 6}, "lease (10s) must be at least twice the heartbeat (6s), or a live worker could lose its lease between two heartbeats"),
        ({"backoff_base": 5, "backoff_cap": 1}, "backoff-cap (1s) is below backoff-base (5s)"),
        ({"bind": "nohost"}, "invalid bind address 'nohost'; expected HOST:PORT such as 127.0.0.1:3000"),
        ({"bind": ":3000"}, "invalid bind address ':3000'; expected HOST:PORT such as 127.0.0.1:3000"),
        ({"bind": "host:70000"}, "invalid bind address 'host:70000'; expected HOST:PORT such as 127.0.0.1:3000"),
        ({"bind": "host:http"}, "invalid bind address 'host:http'; expected HOST:PORT such as 127.0.0.1:3000"),
        ({"db": "mysql://x"}, "invalid database URL 'mysql://x'; expected 'sqlite:///jobsvc.db' (relative), 'sqlite:////var/lib/jobsvc/jobs.db' (absolute), 'memory:' or 'postgresql://user@host:5432/dbname' (or a 'host=... dbname=...' connection string)"),
        ({"db": "sqlite:///"}, "invalid database URL 'sqlite:///': no file name after 'sqlite:///'"),
        ({"db": "sqlite:///var/lib/"}, "invalid database URL 'sqlite:///var/lib/': no file name after 'sqlite:///'"),
        ({"log_level": "loud"}, "log level must be debug, info, warning or error, not 'loud'"),
    ],
)
def test_bad_values_are_config_errors(values: dict[str, Any], message: str) -> None:
    """Invalid settings are a ConfigError with one clear message, through Settings() and from_sources()."""
    with pytest.raises(ConfigError) as info:
        Settings(**values)
    assert str(info.value) == message
    with pytest.raises(ConfigError) as info:
        Settings.from_sources(values)
    assert str(info.value) == message


def test_lease_of_exactly_twice_the_heartbeat_is_allowed() -> None:
    """lease == 2 * heartbeat is the boundary and is accepted."""
    assert Settings(lease=20, heartbeat=10).lease == 20


@pytest.mark.parametrize(
    ("bind", "expected"),
    [("127.0.0.1:3000", ("127.0.0.1", 3000)), ("0.0.0.0:0", ("0.0.0.0", 0)), ("[::1]:8080", ("::1", 8080)), ("localhost:65535", ("localhost", 65535))],
)
def test_parse_bind(bind: str, expected: tuple[str, int]) -> None:
    """HOST:PORT and [v6]:PORT parse to (host, port)."""
    assert parse_bind(bind) == expected


@pytest.mark.parametrize(
    ("url", "scheme", "path"),
    [
        ("sqlite:///jobsvc.db", "sqlite", "jobsvc.db"),
        ("sqlite:///data/jobs.db", "sqlite", "data/jobs.db"),
        ("sqlite:////var/lib/jobsvc/jobs.db", "sqlite", "/var/lib/jobsvc/jobs.db"),
        ("memory:", "memory", ""),
        ("memory://", "memory", ""),
        ("postgresql://user@host:5432/db", "postgresql", ""),
        ("postgres://user:pw@host/db", "postgresql", ""),
    ],
)
def test_database_url_parsing(url: str, scheme: str, path: str) -> None:
    """sqlite:/// is relative, sqlite://// absolute; memory: and postgresql:// (or postgres://) are recognised."""
    assert DatabaseURL.parse(url) == DatabaseURL(scheme, url, path)


@pytest.mark.parametrize("url", ["", "sqlite://jobs.db", "sqlite:jobs.db", "memory", "mysql://h/db", "postgresql:/h/db", "jobs.db"])
def test_database_url_rejects_others(url: str) -> None:
    """Anything else is a ConfigError quoting the URL."""
    with pytest.raises(ConfigError, match=r"^invalid database URL"):
        DatabaseURL.parse(url)


@pytest.mark.parametrize(
    ("url", "display"),
    [
        ("postgresql://app:s3cret@db.example:5432/jobs", "postgresql://app@db.example:5432/jobs"),
        ("postgres://app:p@ss:w0rd@db/jobs", "postgres://app@db/jobs"),
        ("postgresql://app@db/jobs", "postgresql://app@db/jobs"),
        ("postgresql://db/jobs", "postgresql://db/jobs"),
        ("sqlite:///jobsvc.db", "sqlite:///jobsvc.db"),
        ("memory:", "memory:"),
    ],
)
def test_database_url_display_hides_the_password(url: str, display: str) -> None:
    """`display` drops the password from the user-info (even one containing ':' or '@')."""
    shown = DatabaseURL.parse(url).display
    assert shown == display
    assert "s3cret" not in shown and "w0rd" not in shown


def test_database_url_display_hides_a_password_in_the_query() -> None:
    """A password given as libpq's ?password= query parameter is hidden too."""
    assert "s3cret" not in DatabaseURL.parse("postgresql://app@db/jobs?password=s3cret").display
