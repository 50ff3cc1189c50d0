"""The client commands without a server: the exit-code table, --help, argument errors, an
unreachable server, and the output for canned answers (``Client`` over ``httpx.MockTransport``)."""

from __future__ import annotations

import io
import json
import re
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import FakeTime, JobsvcRunner, job_json

from jobsvc import client as client_module
from jobsvc import clientcli
from jobsvc.client import (
    JobNotFound,
    RetryPolicy,
    ServerUnreachable,
    TooManyRequests,
    Unavailable,
    WaitTimeout,
)
from jobsvc.clientcli import EXIT_CODES, Exit
from jobsvc.config import Settings
from jobsvc.retry import Backoff

DOCS = Path(__file__).resolve().parents[2] / "docs" / "client.md"
QUICK = RetryPolicy(max_retries=1, backoff=Backoff(base=0.01, cap=0.01))


@pytest.fixture
def canned(monkeypatch: pytest.MonkeyPatch) -> Callable[..., list[httpx.Request]]:
    """canned(handler): the commands' Client talks to ``handler`` (a MockTransport); returns
    the list the requests are recorded in."""

    def install(handler: Callable[[httpx.Request], httpx.Response]) -> list[httpx.Request]:
        seen: list[httpx.Request] = []

        def record(request: httpx.Request) -> httpx.Response:
            seen.append(request)
            return handler(request)

        real = client_module.Client

        def client(url: str, **kwargs: Any) -> client_module.Client:
            fake = FakeTime()  # no real sleeping: retries and pauses between polls are instant
            return real(url, transport=httpx.MockTransport(record), sleep=fake.sleep, clock=fake.clock, **kwargs)

        monkeypatch.setattr(clientcli, "Client", client)
        monkeypatch.setattr(clientcli, "CLI_RETRY", QUICK)
        return seen

    return install


def test_exit_codes_are_distinct_and_documented_once() -> None:
    assert len({code.value for code in Exit}) == len(Exit) and set(EXIT_CODES) == set(Exit)
    rows = re.findall(r"^\| (\d+) \| (.+) \|$", DOCS.read_text(encoding="utf-8"), flags=re.MULTILINE)
    assert {int(code): text for code, text in rows} == {code.value: text for code, text in EXIT_CODES.items()}


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (JobNotFound(status=404), Exit.NOT_FOUND),
        (client_module.NotFound(status=404), Exit.REJECTED),
        (client_module.IllegalTransition(status=409), Exit.REJECTED),
        (client_module.UnknownTask(status=422), Exit.REJECTED),
        (TooManyRequests(status=429), Exit.BUSY),
        (Unavailable(status=503), Exit.BUSY),
        (client_module.ServerError(status=500), Exit.SERVER_ERROR),
        (client_module.UnexpectedResponse(), Exit.SERVER_ERROR),
        (ServerUnreachable(), Exit.UNREACHABLE),
        (WaitTimeout(job=None), Exit.NOT_FINAL),  # type: ignore[arg-type]
    ],
)
def test_each_error_has_its_exit_code(exc: client_module.ClientError, code: Exit) -> None:
    assert clientcli.exit_for(exc) is code


@pytest.mark.parametrize("command", list(clientcli.COMMANDS))
def test_help_stands_on_its_own(jobsvc: JobsvcRunner, command: str) -> None:
    run = jobsvc(command, "--help")
    assert run.code == 0
    text = " ".join(run.out.split())
    assert "exit codes:" in text and "environment: JOBSVC_URL" in text and "--json" in text and "--url" in text
    for code in (Exit.OK, Exit.USAGE, Exit.REJECTED, Exit.BUSY, Exit.SERVER_ERROR, Exit.UNREACHABLE):
        assert f" {code.value} {' '.join(EXIT_CODES[code].split())}" in text
    described = {"submit": "Submit a job", "get": "Show a job", "list": "List jobs", "retry": "Replay a dead",
                 "cancel": "Cancel a job", "tasks": "List the registered task types", "stats": "Show job counts"}
    assert described[command] in text
    assert (f" {Exit.DEAD.value} " in text) == (command in ("submit", "get"))
    assert (f" {Exit.NOT_FOUND.value} " in text) == (command in ("get", "retry", "cancel"))


def test_jobsvc_url_is_a_known_variable_for_serve() -> None:
    Settings.from_sources({}, {"JOBSVC_URL": "http://127.0.0.1:1"})  # no ConfigError


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["submit", "echo", "--payload", "{nope"], "--payload: the text is not valid JSON: Expecting property name"),
        (["submit", "echo", "--payload", "@/nonexistent/p.json"], "--payload: cannot read /nonexistent/p.json: No such file"),
        (["submit", "echo", "--delay", "-1"], "--delay: expected a number of seconds, not '-1'"),
        (["get", "x", "--wait", "soon"], "--wait: expected a number of seconds, not 'soon'"),
        (["list", "--limit", "many"], "--limit: invalid int value: 'many'"),
    ],
)
def test_bad_arguments_exit_2(jobsvc: JobsvcRunner, argv: list[str], message: str) -> None:
    run = jobsvc(*argv)
    assert run.code == Exit.USAGE and message in run.err and run.out == ""


def test_payload_from_a_file_and_stdin(jobsvc: JobsvcRunner, canned: Callable[..., list[httpx.Request]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = canned(lambda request: httpx.Response(202, json=job_json()))
    (tmp_path / "p.json").write_text('{"to": ["ada"]}', encoding="utf-8")
    assert jobsvc("submit", "echo", "--payload", f"@{tmp_path / 'p.json'}").code == Exit.OK
    monkeypatch.setattr("sys.stdin", io.StringIO("[1, 2]"))
    assert jobsvc("submit", "echo", "--payload", "@-", "--id", "7", "--key", "k", "--priority", "-3", "--max-attempts", "2", "--delay", "1.5").code == Exit.OK
    bodies = [json.loads(r.content) for r in seen]
    assert bodies == [{"task": "echo", "payload": {"to": ["ada"]}}, {"task": "echo", "payload": [1, 2], "id": "7", "delay": 1.5, "priority": -3, "max_attempts": 2}]
    assert seen[1].headers["idempotency-key"] == "k"


def test_a_bad_url_exits_2(jobsvc: JobsvcRunner) -> None:
    run = jobsvc("stats", "--url", "localhost:3000")
    assert (run.code, run.err) == (Exit.USAGE, "jobsvc: error: invalid jobsvc URL 'localhost:3000'; expected http://HOST:PORT such as http://127.0.0.1:3000\n")


def test_an_unreachable_server_exits_10(jobsvc: JobsvcRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(clientcli, "CLI_RETRY", QUICK)
    with socket.socket() as s:  # a port that was free a moment ago, now closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = jobsvc("get", "x", "--url", f"http://127.0.0.1:{port}")
    assert run.code == Exit.UNREACHABLE and run.out == ""
    assert re.fullmatch(rf"jobsvc: error: cannot reach jobsvc at http://127.0.0.1:{port}: .*refused \(after 2 attempts\)\n", run.err)


def test_the_url_comes_from_jobsvc_url(jobsvc: JobsvcRunner, canned: Callable[..., list[httpx.Request]], monkeypatch: pytest.MonkeyPatch) -> None:
    seen = canned(lambda request: httpx.Response(200, json=job_json()))
    monkeypatch.setenv("JOBSVC_URL", "http://from-env.test:1234")
    jobsvc("get", "a")
    jobsvc("get", "b", "--url", "http://from-flag.test")
    monkeypatch.delenv("JOBSVC_URL")
    jobsvc("get", "c")
    assert [str(r.url) for r in seen] == ["http://from-env.test:1234/jobs/a", "http://from-flag.test/jobs/b", "http://127.0.0.1:3000/jobs/c"]


@pytest.mark.parametrize(
    ("response", "code", "err"),
    [
        (httpx.Response(503, json={"type": "urn:jobsvc:problem:unavailable", "title": "t", "status": 503, "detail": "the service is shutting down"}, headers={"Retry-After": "0"}),
         Exit.BUSY, "jobsvc: error: the service is shutting down (HTTP 503 unavailable)\n"),
        (httpx.Response(500, json={"type": "urn:jobsvc:problem:internal-error", "title": "t", "status": 500, "detail": "an unexpected error\nocurred"}),
         Exit.SERVER_ERROR, "jobsvc: error: an unexpected error ocurred (HTTP 500 internal-error)\n"),
        (httpx.Response(502, text="bad gateway"), Exit.SERVER_ERROR, "jobsvc: error: HTTP 502: bad gateway (HTTP 502)\n"),
        (httpx.Response(200, json={"jobs": "x"}), Exit.SERVER_ERROR, None),
    ],
)
def test_server_trouble_is_one_line_and_an_exit_code(jobsvc: JobsvcRunner, canned: Callable[..., list[httpx.Request]], response: httpx.Response, code: Exit, err: str | None) -> None:
    canned(lambda request: response)
    run = jobsvc("stats")
    assert run.code == code and run.out == "" and run.err.count("\n") == 1
    assert err is None or run.err == err


def test_get_exits_with_the_jobs_state(jobsvc: JobsvcRunner, canned: Callable[..., list[httpx.Request]]) -> None:
    states = iter(["pending", "running", "retrying", "succeeded", "dead", "cancelled"])
    canned(lambda request: httpx.Response(200, json=job_json(state=next(states))))
    assert [jobsvc("get", "job-1").code for _ in range(6)] == [0, 0, 0, 0, Exit.DEAD, Exit.CANCELLED]


def test_the_job_view(jobsvc: JobsvcRunner, canned: Callable[..., list[httpx.Request]]) -> None:
    body = job_json(
        state="dead",
        payload={"to": "[bold]ada[/bold]"},
        attempts=2,
        max_attempts=2,
        rescues=1,
        finished_at="2026-11-29T10:00:09Z",
        idempotency_key="k-1",
        errors=[{"attempt": 1, "at": "2026-11-29T11:00:01+01:00", "type": "Boom", "message": "no [red]luck[/red]"}],
    )
    canned(lambda request: httpx.Response(200, json=body))
    run = jobsvc("get", "job-1")
    lines = [line.rstrip() for line in run.out.splitlines()]
    assert lines[:11] == [
        "id        job-1",
        "task      echo",
        "state     dead",
        "attempts  2 of 2, 1 rescued",
        "priority  0",
        "created   2026-11-29 10:00:00Z",
        "run at    2026-11-29 10:00:00Z",
        "updated   2026-11-29 10:00:00Z",
        "finished  2026-11-29 10:00:09Z",
        'payload   {"to":"[bold]ada[/bold]"}',
        "key       k-1",
    ]
    assert "errors" in lines[11] and lines[-1].split("│") == [" 1       ", " 2026-11-29 10:00:01Z ", " Boom: no [red]luck[/red]"]
    assert run.code == Exit.DEAD


def test_json_output_is_the_apis_json(jobsvc: JobsvcRunner, canned: Callable[..., list[httpx.Request]]) -> None:
    body = job_json(future_field={"a": [1, "ü"]})
    canned(lambda request: httpx.Response(200, json=body))
    run = jobsvc("get", "job-1", "--json")
    assert run.json() == body and run.out.count("\n") == 1 and "ü" in run.out


@pytest.mark.parametrize(("interactive", "waits"), [(False, ["60", "60", "60"]), (True, ["5", "5", "5"])])
def test_submit_wait_polls_in_short_steps_only_under_a_spinner(
    jobsvc: JobsvcRunner, canned: Callable[..., list[httpx.Request]], monkeypatch: pytest.MonkeyPatch, interactive: bool, waits: list[str]
) -> None:
    states = iter(["pending", "running", "running", "succeeded"])
    seen = canned(lambda request: httpx.Response(202 if request.method == "POST" else 200, json=job_json(state=next(states))))
    monkeypatch.setattr(clientcli.Output, "interactive", property(lambda self: interactive))
    run = jobsvc("submit", "echo", "--wait")
    assert (run.code, [r.url.params.get("wait") for r in seen[1:]]) == (Exit.OK, waits)
    assert "state     succeeded" in run.out
