"""``jobsvc keys create|list|revoke``: manage the API keys file (``--auth-file``).

``create`` prints the new key once, on stdout and alone (``KEY=$(jobsvc keys create ...)``);
the file keeps only its SHA-256. Running services read the file again on SIGHUP. Errors are
one line on stderr and exit code 2 (bad command line, bad file) or 1 (no such key).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any

from .auth import SCOPES, ApiKey, is_tenant, load_keys, new_key, parse_scopes, updating_keys
from .clock import SystemClock
from .codec import iso
from .errors import ConfigError

__all__ = ["add_commands", "run"]

AUTH_FILE_ENV = "JOBSVC_AUTH_FILE"

DESCRIPTION = """\
Manage the API keys that `jobsvc serve --auth-file FILE` accepts. A key is shown once, when
it is created; the file keeps its SHA-256 only. A running jobsvc reads the file again on
SIGHUP (`kill -HUP PID`, `systemctl reload jobsvc`).

scopes: submit (POST /jobs, /jobs/batch, /submit), read (jobs, tasks, stats, openapi.json),
admin (retry, cancel, dashboard actions), metrics (GET /metrics).

examples:
  jobsvc keys create --scope submit,read --tenant acme --name acme-ci --auth-file keys.toml
  jobsvc keys create --scope metrics --name prometheus --auth-file keys.toml
  jobsvc keys list --auth-file keys.toml
  jobsvc keys revoke k_3f9a0c1d2e3f4a5b --auth-file keys.toml"""


def _scopes(text: str) -> frozenset[str]:
    try:
        return parse_scopes(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _tenant(text: str) -> str:
    if not is_tenant(text):
        raise argparse.ArgumentTypeError(f"a tenant is 1 to 64 letters, digits and . _ - (starting with a letter or digit), not {text!r}")
    return text


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"expected a number of requests per second (0: no limit), not {text!r}")
    return value


def _count(low: int) -> Any:
    def parse(text: str) -> int:
        if not (text.isascii() and text.isdigit()) or int(text) < low:
            raise argparse.ArgumentTypeError(f"expected a whole number of at least {low}, not {text!r}")
        return int(text)

    return parse


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``jobsvc keys`` to the ``jobsvc`` parser's subparsers."""
    keys = sub.add_parser(
        "keys", help="manage API keys: create, list, revoke", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    actions = keys.add_subparsers(dest="keys_command", required=True, metavar="{create,list,revoke}")

    def file_flag(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--auth-file", help=f"the keys file, .json or .toml (default: ${AUTH_FILE_ENV})")

    create = actions.add_parser("create", help="create a key and print it (once)", description="Create a key; print it on stdout, once.")
    create.add_argument("--scope", required=True, type=_scopes, help=f"comma-separated scopes: {', '.join(SCOPES)}")
    create.add_argument("--tenant", type=_tenant, help="bind the key to a tenant: it sees and acts on that tenant's jobs only")
    create.add_argument("--name", default="", help="a label for people (shown by list, in logs with the key id)")
    create.add_argument("--rate", type=_rate, help="requests per second (token bucket, per instance; 0: no limit; default: --key-rate)")
    create.add_argument("--burst", type=_count(1), help="requests in a burst (default: --key-burst)")
    create.add_argument("--max-pending", type=_count(0), help="waiting jobs of the key's tenant above which it gets 429 (0: none; default: --key-max-pending)")
    file_flag(create)

    listing = actions.add_parser("list", help="list the keys (never the keys themselves)", description="List the keys in the file.")
    listing.add_argument("--json", action="store_true", help="print JSON")
    file_flag(listing)

    revoke = actions.add_parser("revoke", help="revoke a key", description="Remove a key from the file (SIGHUP the service to apply).")
    revoke.add_argument("key_id", metavar="ID", help="the key's id (k_...), as `jobsvc keys list` shows it")
    file_flag(revoke)


def _public(key: ApiKey) -> dict[str, Any]:
    """A key as ``list`` shows it: everything but its hash."""
    shown: dict[str, Any] = {"id": key.id, "name": key.name, "tenant": key.tenant, "scopes": list(key.scopes), "created": key.created}
    shown.update(rate=key.rate, burst=key.burst, max_pending=key.max_pending)
    return shown


def run(args: argparse.Namespace) -> int:
    path = args.auth_file or os.environ.get(AUTH_FILE_ENV)
    if not path:
        print(f"jobsvc: error: no keys file: give --auth-file FILE or set {AUTH_FILE_ENV}", file=sys.stderr)
        return 2
    try:
        if args.keys_command == "create":
            return _create(args, path)
        if args.keys_command == "list":
            return _list(args, path)
        return _revoke(args, path)
    except ConfigError as exc:
        print(f"jobsvc: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"jobsvc: error: cannot write the keys file {path!r}: {exc.strerror or exc}", file=sys.stderr)
        return 2


def _create(args: argparse.Namespace, path: str) -> int:
    token, key = new_key(
        scopes=args.scope,
        tenant=args.tenant,
        name=args.name,
        created=iso(SystemClock().now()) or "",
        rate=args.rate,
        burst=args.burst,
        max_pending=args.max_pending,
    )
    with updating_keys(path, create=True) as keys:
        keys.append(key)
    print(token, flush=True)
    scope = ",".join(key.scopes)
    whose = f", tenant {key.tenant}" if key.tenant else ", no tenant (sees every job)"
    print(
        f"created key {key.id} ({scope}{whose}) in {path}. This is the only time the key is shown: keep it in a "
        "secret store. A running jobsvc picks it up on SIGHUP.",
        file=sys.stderr,
    )
    return 0


def _list(args: argparse.Namespace, path: str) -> int:
    keys = load_keys(path)
    if args.json:
        print(json.dumps([_public(k) for k in keys], indent=2))
        return 0
    rows = [("ID", "NAME", "TENANT", "SCOPES", "CREATED", "LIMITS")]
    for k in keys:
        limits = ", ".join(f"{n}={v:g}" for n, v in (("rate", k.rate), ("burst", k.burst), ("max_pending", k.max_pending)) if v is not None)
        rows.append((k.id, k.name or "-", k.tenant or "-", ",".join(k.scopes), k.created or "-", limits or "defaults"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return 0


def _revoke(args: argparse.Namespace, path: str) -> int:
    with updating_keys(path) as keys:
        found = [k for k in keys if k.id == args.key_id]
        if not found:
            print(f"jobsvc: error: no key has the id {args.key_id!r} in {path} (see `jobsvc keys list`)", file=sys.stderr)
            return 1
        keys.remove(found[0])
    print(f"revoked key {args.key_id}{f' ({found[0].name})' if found[0].name else ''}; SIGHUP running services to apply it", file=sys.stderr)
    return 0
