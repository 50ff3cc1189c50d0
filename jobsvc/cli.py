"""The ``jobsvc`` command: ``jobsvc serve`` and ``jobsvc migrate``; the client commands
(``submit``, ``get``, ``list``, ...) live in :mod:`jobsvc.clientcli`.

The CLI only turns flags and ``JOBSVC_*`` variables into :class:`~jobsvc.config.Settings`
and calls ``trio.run``; errors in the configuration are one clear line and exit code 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from functools import partial

import attrs
import trio

from . import __version__
from .config import LOG_FORMATS, OTHER_ENV, Settings
from .errors import ConfigError, StoreUnavailable, unwrap
from .logs import configure_logging

__all__ = ["main"]


#: The commands that run the service; for these the client commands' modules (httpx, rich)
#: are not imported, which keeps them out of the service's start-up.
SERVICE_COMMANDS = ("serve", "migrate")


def _parser(*, clients: bool = True) -> argparse.ArgumentParser:
    """The ``jobsvc`` parser; without ``clients``, only the service commands."""
    parser = argparse.ArgumentParser(
        prog="jobsvc",
        description="A durable HTTP job-processing service. `jobsvc serve` runs it; the other commands "
        "are clients of a running service (--url, else JOBSVC_URL, else http://127.0.0.1:3000).",
        epilog="`jobsvc COMMAND --help` describes each command.",
    )
    parser.add_argument("--version", action="version", version=f"jobsvc {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    d = Settings()
    serve = sub.add_parser(
        "serve",
        help="run the HTTP service and its workers",
        description=SERVE_DESCRIPTION,
        epilog=_serve_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("--bind", help=f"HOST:PORT to listen on; port 0 picks a free port (default {d.bind})")
    serve.add_argument("--db", help=f"database URL: sqlite:///path, memory:, postgresql://... (default {d.db})")
    serve.add_argument("--tasks", action="append", metavar="MODULE", help="module whose @task handlers are registered (repeatable)")
    serve.add_argument(
        "--workers",
        type=int,
        help=f"jobs run at once (trio tasks: cheap; raise it for I/O-bound handlers, lower it to protect a downstream) (default {d.workers})",
    )
    serve.add_argument("--grace", type=float, help=f"seconds running jobs get to finish on shutdown (default {d.grace:g})")
    serve.add_argument(
        "--drain-delay",
        type=float,
        help="seconds a draining instance keeps its listener open, answering 503 on /ready and to submissions, "
        f"so a load balancer sees it leave; 5 suits most health checks (default {d.drain_delay:g})",
    )
    serve.add_argument("--max-pending", type=int, help=f"pending jobs above which submissions get 429 (default {d.max_pending})")
    serve.add_argument("--max-attempts", type=int, help=f"default attempts per job (default {d.max_attempts})")
    serve.add_argument("--backoff-base", type=float, help=f"first retry delay ceiling, seconds (default {d.backoff_base:g})")
    serve.add_argument("--backoff-cap", type=float, help=f"longest retry delay, seconds (default {d.backoff_cap:g})")
    serve.add_argument("--timeout", type=float, help=f"default per-attempt timeout, seconds (default {d.timeout:g})")
    serve.add_argument("--lease", type=float, help=f"lease of a running job, seconds (default {d.lease:g})")
    serve.add_argument("--heartbeat", type=float, help=f"lease renewal and rescue sweep interval (default {d.heartbeat:g})")
    serve.add_argument("--max-rescues", type=int, help=f"rescues before a job is dead-lettered (default {d.max_rescues})")
    serve.add_argument("--poll", type=float, help=f"fallback poll for due jobs, seconds (default {d.poll:g})")
    serve.add_argument("--retention", type=float, help=f"seconds finished jobs are kept; 0 keeps them forever (default {d.retention:g})")
    serve.add_argument("--max-body", type=int, help=f"largest request body, bytes (default {d.max_body})")
    serve.add_argument(
        "--fsync-interval",
        type=float,
        help="seconds worker-side writes (claims, outcomes) may wait to reach the disk; submissions are "
        f"always on disk before the answer; 0 syncs every commit (default {d.fsync_interval:g})",
    )
    serve.add_argument("--migrate", action="store_const", const=True, help="apply pending PostgreSQL schema migrations at start-up")
    access = serve.add_argument_group("access control (docs/security.md)")
    access.add_argument(
        "--auth-file",
        metavar="FILE",
        help="the API keys file (JSON or TOML; `jobsvc keys create` makes it); read again on SIGHUP. "
        "Without it there are no keys and jobsvc serves loopback addresses only",
    )
    access.add_argument(
        "--insecure-no-auth",
        action="store_const",
        const=True,
        help="serve a non-loopback address without API keys: anyone who reaches it can submit, cancel and read jobs",
    )
    access.add_argument(
        "--allowed-hosts",
        metavar="NAMES",
        help="comma-separated Host header names served (DNS rebinding protection), * for any "
        "(default: the --bind address, localhost, 127.0.0.1, ::1)",
    )
    access.add_argument("--key-rate", type=float, help=f"requests per second per API key, per instance; 0: no limit (default {d.key_rate:g})")
    access.add_argument("--key-burst", type=int, help=f"requests an API key may send in a burst (default {d.key_burst})")
    access.add_argument(
        "--key-max-pending",
        type=int,
        help="waiting jobs of an API key's tenant above which its submissions get 429; 0: only --max-pending "
        f"(default {d.key_max_pending})",
    )
    serve.add_argument("--log-level", help=f"debug, info, warning or error (default {d.log_level})")
    serve.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        help=f"json: one JSON object per line; console: readable key=value lines; auto: console on a terminal, "
        f"else json (default {d.log_format})",
    )

    migrate = sub.add_parser("migrate", help="apply pending schema migrations")
    migrate.add_argument("--db", help="database URL (default: JOBSVC_DB, else the SQLite default)")
    if clients:
        from . import clientcli, keyscli

        keyscli.add_commands(sub)
        clientcli.add_commands(sub)
    return parser


SERVE_DESCRIPTION = """\
Run the jobsvc HTTP service and its workers in this process until SIGTERM or SIGINT
(a second signal stops at once). Jobs are kept in the database given by --db; task
handlers come from the modules given by --tasks, imported with the current directory
first on the module path (as `python -m` does), plus the built-in tasks (noop, echo,
sleep, fail).

examples:
  jobsvc serve --tasks myapp.tasks
  jobsvc serve --bind 0.0.0.0:3000 --auth-file /etc/jobsvc/keys.toml --allowed-hosts jobs.example.com \
      --db postgresql://jobsvc@db/jobsvc --migrate --drain-delay 5

Without --auth-file there are no API keys: jobsvc then serves loopback addresses only."""


def _serve_epilog() -> str:
    """The JOBSVC_* variables, generated from :class:`Settings` (and the other known ones)."""
    lines = ["environment: every flag is also a variable; a flag beats its variable, which beats the default"]
    kinds = {f.name: str(f.type) for f in attrs.fields(Settings)}
    for variable, name in Settings.env_names().items():
        kind = kinds[name]
        hint = " (comma-separated)" if kind.startswith("tuple") else " (1 or 0)" if kind == "bool" else ""
        lines.append(f"  {variable:<24} --{name.replace('_', '-')}{hint}")
    for variable, meaning in OTHER_ENV.items():
        lines.append(f"  {variable:<24} {meaning}")
    lines.append("An unknown JOBSVC_ variable is an error.")
    lines.append(
        "exit codes: 0 stopped (every job handed back), 1 the store could not be opened, "
        "2 configuration error, 3 did not stop in time (a handler blocks the event loop; its jobs are rescued)"
    )
    lines.append("Docs: README.rst, docs/operations.md.")
    return "\n".join(lines)


def _listening(binds: list[str]) -> None:
    for bind in binds:
        print(f"listening on {bind}", flush=True)


def _cwd_on_path() -> None:
    """Put the current directory first on ``sys.path`` for the ``--tasks`` imports, as
    ``python -m jobsvc`` does (the ``jobsvc`` script's own path starts with its bin folder)."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)


def main(argv: Sequence[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else list(argv)
    args = _parser(clients=not words or words[0] not in SERVICE_COMMANDS).parse_args(words)
    if args.command not in SERVICE_COMMANDS:
        from . import clientcli, keyscli

        if args.command == "keys":
            return keyscli.run(args)
        return clientcli.run(args)
    flags = {k: v for k, v in vars(args).items() if k != "command"}
    try:
        return _run(args, flags)
    except BaseExceptionGroup as group:
        exc = unwrap(group)  # trio's nurseries wrap what they raise
        if isinstance(exc, ConfigError):
            print(f"jobsvc: error: {exc}", file=sys.stderr)
            return 2
        if isinstance(exc, StoreUnavailable):
            print(f"jobsvc: error: {exc}", file=sys.stderr)
            return 1
        raise


def _run(args: argparse.Namespace, flags: dict[str, object]) -> int:
    try:
        settings = Settings.from_sources(flags, os.environ)
        configure_logging(settings.log_level, settings.log_format)
        if args.command == "migrate":
            from .store import migrate

            applied = trio.run(migrate, settings.database)
            print(f"applied {len(applied)} migration(s): {', '.join(applied)}" if applied else "the schema is up to date")
            return 0
        settings.check_exposure()  # before anything is opened: one line, exit 2
        from .server import run_service, tune_gc
        from .tasks import Registry

        _cwd_on_path()
        registry = Registry.from_modules(settings.tasks)
        tune_gc()
        trio.run(partial(run_service, settings, registry=registry, handle_signals=True, on_listening=_listening))
    except ConfigError as exc:
        print(f"jobsvc: error: {exc}", file=sys.stderr)
        return 2
    except StoreUnavailable as exc:
        print(f"jobsvc: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # pragma: no cover - signals are handled inside trio.run
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
