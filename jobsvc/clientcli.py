"""The command-line client: ``jobsvc submit|get|list|retry|cancel|tasks|stats``.

Built on :class:`jobsvc.client.Client` (sync). ``jobsvc.cli`` calls :func:`add_commands` to
add the subcommands and :func:`run` to run one. Output is a table for people (rich) or, with
``--json``, exactly the API's JSON as one document. Errors are one line on stderr
(``jobsvc: error: ...``) and an exit code from :data:`EXIT_CODES`, the one table of them
(the ``--help`` texts and the tests are built from it; docs/client.md repeats it).
"""

from __future__ import annotations

import argparse
import datetime as dt
import enum
import json
import math
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from .client import (
    DEFAULT_URL,
    APIError,
    Client,
    ClientError,
    Job,
    JobNotFound,
    JobState,
    RequestRejected,
    RetryPolicy,
    ServerError,
    ServerUnreachable,
    Stats,
    TaskInfo,
    TooManyRequests,
    Unavailable,
    UnexpectedResponse,
    WaitTimeout,
)

__all__ = ["API_KEY_ENV", "COMMANDS", "EXIT_CODES", "URL_ENV", "Exit", "add_commands", "run"]

URL_ENV = "JOBSVC_URL"
#: The API key the commands send. An environment variable, not a flag: a flag's value shows
#: in ``ps`` and in the shell's history.
API_KEY_ENV = "JOBSVC_API_KEY"
#: While a spinner shows, ``--wait`` long-polls this many seconds at a time so it can update.
SPINNER_POLL = 5.0
#: Retries of the commands: enough to ride out a restart, short enough for a person waiting.
CLI_RETRY = RetryPolicy(max_retries=3, max_time=15.0)
#: Columns of the tables when stdout is not a terminal (and COLUMNS is not set): wide
#: enough that piped tables are not squeezed into 80 columns.
PIPE_WIDTH = 200


class Exit(enum.IntEnum):
    OK = 0
    USAGE = 2
    DEAD = 3
    CANCELLED = 4
    NOT_FINAL = 5
    NOT_FOUND = 6
    REJECTED = 7
    BUSY = 8
    SERVER_ERROR = 9
    UNREACHABLE = 10
    INTERRUPTED = 130


#: The exit codes of the client commands: stable, for scripts. One table, used everywhere.
EXIT_CODES: Mapping[Exit, str] = {
    Exit.OK: "success (submit, get: the job is not dead or cancelled)",
    Exit.USAGE: "bad command line: unknown flag, --payload not JSON, bad --url",
    Exit.DEAD: "the job is dead: out of attempts, in the dead-letter queue",
    Exit.CANCELLED: "the job is cancelled",
    Exit.NOT_FINAL: "--wait timed out: the job is not final yet",
    Exit.NOT_FOUND: "no job has that id (404)",
    Exit.REJECTED: "the request was rejected (4xx): invalid job, unknown task, conflict, wrong state",
    Exit.BUSY: "the service is busy or draining (429/503 after the client's retries): try later",
    Exit.SERVER_ERROR: "the server failed (5xx) or its answer is not jobsvc's API",
    Exit.UNREACHABLE: "the server cannot be reached: connection refused, DNS, timeout",
    Exit.INTERRUPTED: "interrupted (Ctrl-C)",
}

#: Exception -> exit code; the first match wins, so subclasses come first.
_ERROR_EXITS: Sequence[tuple[type[ClientError], Exit]] = (
    (JobNotFound, Exit.NOT_FOUND),
    (TooManyRequests, Exit.BUSY),
    (Unavailable, Exit.BUSY),
    (RequestRejected, Exit.REJECTED),
    (ServerError, Exit.SERVER_ERROR),
    (UnexpectedResponse, Exit.SERVER_ERROR),
    (ServerUnreachable, Exit.UNREACHABLE),
    (WaitTimeout, Exit.NOT_FINAL),
)

_FINAL_EXITS = {JobState.DEAD: Exit.DEAD, JobState.CANCELLED: Exit.CANCELLED}
_ANY = (Exit.USAGE, Exit.REJECTED, Exit.BUSY, Exit.SERVER_ERROR, Exit.UNREACHABLE)
_STATE_STYLE = {
    "pending": "blue",
    "running": "cyan",
    "retrying": "magenta",
    "succeeded": "green",
    "dead": "bold red",
    "cancelled": "yellow",
}


def exit_for(exc: ClientError) -> Exit:
    for cls, code in _ERROR_EXITS:
        if isinstance(exc, cls):
            return code
    return Exit.SERVER_ERROR  # pragma: no cover - every ClientError is listed above


def job_exit(job: Job) -> Exit:
    return _FINAL_EXITS.get(job.state, Exit.OK)


# -- output ----------------------------------------------------------------------------


def _when(moment: dt.datetime | None) -> str:
    if moment is None:
        return ""
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S") + "Z"


def _compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _state(name: str) -> Text:
    return Text(name, style=_STATE_STYLE.get(name, ""))


def _seconds(value: float) -> str:
    return f"{value:g}s"


class Output:
    """Where a command's result goes: rich tables on stdout, or the API's JSON with --json."""

    def __init__(self, *, as_json: bool) -> None:
        self.as_json = as_json
        self.out = Console(highlight=False)
        if not self.out.is_terminal and "COLUMNS" not in os.environ:
            self.out = Console(highlight=False, width=PIPE_WIDTH)
        self.err = Console(stderr=True, highlight=False)

    @property
    def interactive(self) -> bool:
        return self.out.is_terminal and self.err.is_terminal

    def document(self, value: Any) -> None:
        sys.stdout.write(json.dumps(value, ensure_ascii=False) + "\n")
        sys.stdout.flush()

    def note(self, message: str) -> None:
        self.err.print(Text(message, style="dim"))

    def job(self, job: Job) -> None:
        if self.as_json:
            return self.document(job.raw)
        rows: list[tuple[str, str | Text]] = [
            ("id", job.id),
            ("task", job.task),
            ("state", _state(job.state.value)),
            ("attempts", f"{job.attempts} of {job.max_attempts}" + (f", {job.rescues} rescued" if job.rescues else "")),
            ("priority", str(job.priority)),
            ("created", _when(job.created_at)),
            ("run at", _when(job.run_at)),
            ("updated", _when(job.updated_at)),
        ]
        if job.finished_at is not None:
            rows.append(("finished", _when(job.finished_at)))
        rows.append(("payload", _compact(job.payload)))
        if job.state is JobState.SUCCEEDED:
            rows.append(("result", _compact(job.result)))
        if job.cancel_requested and not job.is_final:
            rows.append(("cancel", "requested"))
        if job.idempotency_key:
            rows.append(("key", job.idempotency_key))
        for name, value in rows:
            self.out.print(Text.assemble((f"{name:<10}", "bold"), value))
        if job.errors:
            errors = Table("attempt", "at", "error", title="errors", title_justify="left", show_edge=False)
            for error in job.errors:
                errors.add_row(str(error.attempt), _when(error.at), Text(f"{error.type}: {error.message}"))
            self.out.print(errors)

    def jobs(self, jobs: Sequence[Job], *, raw: Any) -> None:
        if self.as_json:
            return self.document(raw)
        if not jobs:
            self.note("no jobs")
            return
        names = ("id", "task", "state", "attempts", "updated")
        rows = [
            [Text(job.id), Text(job.task), _state(job.state.value), Text(f"{job.attempts}/{job.max_attempts}"), Text(_when(job.updated_at))]
            for job in jobs
        ]
        widths = [max(len(name), *(row[i].cell_len for row in rows)) for i, name in enumerate(names)]
        # The last error gets what is left of the screen (none if too little); if even the
        # other columns do not fit, the id column folds: every column is shown uncut.
        room = self.out.width - sum(widths) - 3 * len(widths) - 2
        with_errors = room >= 12 and any(job.errors for job in jobs)
        table = Table(show_edge=False)
        table.add_column("id", overflow="fold")
        for name, width in zip(names[1:], widths[1:], strict=True):
            table.add_column(name, no_wrap=True, min_width=width)
        if with_errors:
            table.add_column("last error", no_wrap=True, overflow="ellipsis", max_width=room)
        for job, row in zip(jobs, rows, strict=True):
            last = job.errors[-1] if job.errors else None
            table.add_row(*row, *([Text(f"{last.type}: {last.message}" if last else "")] if with_errors else []))
        self.out.print(table)

    def tasks(self, tasks: Sequence[TaskInfo], *, raw: Any) -> None:
        if self.as_json:
            return self.document(raw)
        table = Table("task", "attempts", "timeout", "backoff", "description", show_edge=False)
        for info in tasks:
            backoff = info.backoff
            base, cap = backoff.get("base"), backoff.get("cap")
            text = f"{base:g}s to {cap:g}s" if isinstance(base, int | float) and isinstance(cap, int | float) else ""
            if backoff.get("jitter"):
                text += f", {backoff['jitter']} jitter"
            table.add_row(Text(info.name, style="bold"), str(info.max_attempts), _seconds(info.timeout), text, Text(info.description))
        self.out.print(table)

    def stats(self, stats: Stats) -> None:
        if self.as_json:
            return self.document(stats.raw)
        states = list(stats.jobs)
        for counts in stats.tasks.values():
            states += [s for s in counts if s not in states]
        table = Table("jobs", *states, show_edge=False)
        for column in table.columns[1:]:
            column.justify = "right"
        table.add_row(Text("all", style="bold"), *(str(stats.jobs.get(s, 0)) for s in states))
        for task, counts in sorted(stats.tasks.items()):
            table.add_row(Text(task), *(str(counts.get(s, 0)) for s in states))
        self.out.print(table)
        age = stats.oldest_due_age
        self.out.print("oldest due job: " + ("none waiting" if age is None else f"waiting for {age:g}s"))
        i = stats.instance
        self.out.print(
            Text(
                f"instance {i.owner}: store {i.store}, {i.busy_workers} of {i.workers} workers busy"
                + (", draining" if i.draining else "")
            )
        )


# -- commands ---------------------------------------------------------------------------

Command = Callable[[argparse.Namespace, Client, Output], Exit]


def _status(job: Job) -> str:
    attempt = f", attempt {job.attempts} of {job.max_attempts}" if job.attempts else ""
    return f"job {job.id}: {job.state.value}{attempt}"


def _wait(client: Client, job: Job, seconds: float, out: Output) -> Job:
    """Wait for ``job`` to be final (a spinner on a terminal); prints its last state if not."""
    timeout = None if math.isinf(seconds) else seconds
    try:
        if job.is_final:
            return job
        if not out.interactive:
            return client.wait(job.id, timeout)
        with out.err.status(_status(job)) as status:
            return client.wait(job.id, timeout, poll=SPINNER_POLL, on_update=lambda j: status.update(_status(j)))
    except WaitTimeout as exc:
        out.job(exc.job)
        raise


def cmd_submit(args: argparse.Namespace, client: Client, out: Output) -> Exit:
    job = client.submit(
        args.task,
        args.payload,
        id=args.id,
        idempotency_key=args.key,
        delay=args.delay,
        priority=args.priority,
        max_attempts=args.max_attempts,
    )
    if args.wait is not None:
        job = _wait(client, job, args.wait, out)
    out.job(job)
    return job_exit(job)


def cmd_get(args: argparse.Namespace, client: Client, out: Output) -> Exit:
    job = client.get(args.job_id)
    if args.wait is not None:
        job = _wait(client, job, args.wait, out)
    out.job(job)
    return job_exit(job)


def cmd_list(args: argparse.Namespace, client: Client, out: Output) -> Exit:
    if args.all:
        jobs = list(client.iter_jobs(args.state, task=args.task, page_size=args.limit))
        out.jobs(jobs, raw={"jobs": [job.raw for job in jobs], "next": None})
        return Exit.OK
    page = client.list(args.state, task=args.task, limit=args.limit)
    out.jobs(page.jobs, raw=page.raw)
    if page.next is not None and not out.as_json:
        out.note("more jobs follow: --all lists them all")
    return Exit.OK


def cmd_retry(args: argparse.Namespace, client: Client, out: Output) -> Exit:
    out.job(client.retry(args.job_id))
    return Exit.OK


def cmd_cancel(args: argparse.Namespace, client: Client, out: Output) -> Exit:
    out.job(client.cancel(args.job_id))
    return Exit.OK


def cmd_tasks(args: argparse.Namespace, client: Client, out: Output) -> Exit:
    tasks = client.tasks()
    out.tasks(tasks, raw={"tasks": [info.raw for info in tasks]})
    return Exit.OK


def cmd_stats(args: argparse.Namespace, client: Client, out: Output) -> Exit:
    out.stats(client.stats())
    return Exit.OK


# -- parsers ----------------------------------------------------------------------------


def _epilog(codes: Iterable[Exit]) -> str:
    lines = ["exit codes:"]
    lines += [f"  {code.value:<4}{EXIT_CODES[code]}" for code in sorted({*codes, *_ANY, Exit.INTERRUPTED})]
    lines += [
        "",
        "environment:",
        f"  {URL_ENV}  the service's URL when --url is not given (else {DEFAULT_URL})",
        f"  {API_KEY_ENV}  the API key to send (Authorization: Bearer), when the service has keys",
    ]
    return "\n".join(lines)


def _payload(text: str) -> Any:
    """--payload: JSON text, @FILE (a JSON file) or @- (JSON on stdin)."""
    source = "the text"
    if text.startswith("@"):
        path = text[1:]
        try:
            if path == "-":
                text = sys.stdin.read()
            else:
                with open(path, encoding="utf-8") as f:
                    text = f.read()
        except OSError as exc:
            raise argparse.ArgumentTypeError(f"cannot read {path}: {exc.strerror or exc}") from None
        source = f"{'stdin' if path == '-' else path}"
    try:
        return json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{source} is not valid JSON: {exc}") from None


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, not {text!r}")
    return value


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", help=f"the service's base URL (default: ${URL_ENV}, else {DEFAULT_URL})")
    parser.add_argument("--json", action="store_true", help="print the API's JSON (one document) instead of a table")


def _wait_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--wait",
        nargs="?",
        type=_non_negative,
        const=math.inf,
        metavar="SECONDS",
        help="wait until the job is final (at most SECONDS; no limit without a value), then print it",
    )


COMMANDS: Mapping[str, Command] = {
    "submit": cmd_submit,
    "get": cmd_get,
    "list": cmd_list,
    "retry": cmd_retry,
    "cancel": cmd_cancel,
    "tasks": cmd_tasks,
    "stats": cmd_stats,
}


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the client subcommands to the ``jobsvc`` parser's subparsers."""

    def add(name: str, summary: str, description: str, codes: Iterable[Exit]) -> argparse.ArgumentParser:
        parser = sub.add_parser(
            name,
            help=summary,
            description=description,
            epilog=_epilog(codes),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        return parser

    job_codes = (Exit.OK, Exit.DEAD, Exit.CANCELLED)
    submit = add(
        "submit",
        "submit a job to a running jobsvc",
        "Submit a job (POST /jobs) and print it. A retried request (after a 429, a 503 or a\n"
        "lost connection) reuses its Idempotency-Key, so it never creates a second job.\n"
        "With --wait, wait until the job is final (a spinner on a terminal) and print it;\n"
        "the exit code then says how it ended.",
        (*job_codes, Exit.NOT_FINAL),
    )
    submit.add_argument("task", metavar="TASK", help="a registered task (see: jobsvc tasks)")
    submit.add_argument("--payload", type=_payload, metavar="JSON|@FILE", help="the payload: JSON text, @FILE, or @- for stdin (default: null)")
    submit.add_argument("--id", help="the job's id (default: a UUID); resubmitting an id returns the first job")
    submit.add_argument("--key", help="the Idempotency-Key (default: a new one per command)")
    submit.add_argument("--delay", type=_non_negative, metavar="SECONDS", help="run no earlier than SECONDS from now")
    submit.add_argument("--priority", type=int, metavar="N", help="-1000..1000, higher runs first (default 0)")
    submit.add_argument("--max-attempts", type=int, metavar="N", help="attempts before the job is dead (default: the task's)")
    _wait_flag(submit)
    _common(submit)

    get = add(
        "get",
        "show a job",
        "Show a job (GET /jobs/{id}): state, attempts, payload, result and errors.\n"
        "With --wait, wait until it is final first. The exit code says how it ended.",
        (*job_codes, Exit.NOT_FINAL, Exit.NOT_FOUND),
    )
    get.add_argument("job_id", metavar="ID", help="the job's id")
    _wait_flag(get)
    _common(get)

    listing = add(
        "list",
        "list jobs",
        "List jobs in submission order (GET /jobs), one page of --limit jobs unless --all.\n"
        "--state dead is the dead-letter queue.",
        (Exit.OK,),
    )
    listing.add_argument("--state", metavar="S[,S]", help=f"only jobs in these states: {', '.join(s.value for s in JobState)}")
    listing.add_argument("--task", metavar="T", help="only jobs of this task")
    listing.add_argument("--limit", type=int, metavar="N", help="jobs per page, 1..1000 (default 100)")
    listing.add_argument("--all", action="store_true", help="follow the pages to the end")
    _common(listing)

    retry = add(
        "retry",
        "replay a dead or cancelled job",
        "Replay a dead or cancelled job (POST /jobs/{id}/retry): back to pending with a\n"
        "fresh set of attempts; its error history is kept. Any other state exits 7.",
        (Exit.OK, Exit.NOT_FOUND),
    )
    retry.add_argument("job_id", metavar="ID", help="the job's id")
    _common(retry)

    cancel = add(
        "cancel",
        "cancel a job",
        "Cancel a job (POST /jobs/{id}/cancel): a waiting job is cancelled at once; a\n"
        "running one is asked to stop (cancel requested) and ends cancelled. A finished\n"
        "job exits 7.",
        (Exit.OK, Exit.NOT_FOUND),
    )
    cancel.add_argument("job_id", metavar="ID", help="the job's id")
    _common(cancel)

    tasks = add("tasks", "list the task types", "List the registered task types (GET /tasks) with their retry policy.", (Exit.OK,))
    _common(tasks)

    stats = add(
        "stats",
        "show queue statistics",
        "Show job counts by state, and by task and state (GET /stats), the wait of the\n"
        "oldest due job, and the answering instance's workers.",
        (Exit.OK,),
    )
    _common(stats)


def run(args: argparse.Namespace) -> int:
    """Run the client command in ``args``; the exit code."""
    out = Output(as_json=args.json)
    url = args.url or os.environ.get(URL_ENV) or DEFAULT_URL
    try:
        client = Client(url, retry=CLI_RETRY, api_key=os.environ.get(API_KEY_ENV) or None)
    except ValueError as exc:
        print(f"jobsvc: error: {exc}", file=sys.stderr)
        return Exit.USAGE
    try:
        with client:
            return COMMANDS[args.command](args, client, out)
    except ClientError as exc:
        print(f"jobsvc: error: {_one_line(exc)}", file=sys.stderr)
        return exit_for(exc)
    except KeyboardInterrupt:
        print("jobsvc: interrupted", file=sys.stderr)
        return Exit.INTERRUPTED
    except BrokenPipeError:  # `jobsvc list | head`: the reader has gone; so be it
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return Exit.OK


def _one_line(exc: ClientError) -> str:
    text = " ".join(str(exc).split())
    if isinstance(exc, APIError):
        text += f" (HTTP {exc.status}{' ' + exc.slug if exc.slug else ''})"
    return text
