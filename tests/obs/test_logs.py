"""Structured logs: job events, handler ctx.log lines, the access log, X-Request-ID, and
hostile values in both renderers."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import trio
from helpers import json_lines
from obstasks import HOSTILE

from jobsvc import models
from jobsvc.app import create_app
from jobsvc.clock import TrioClock
from jobsvc.logs import MAX_VALUE, configure_logging, escape
from jobsvc.models import Job
from jobsvc.service import JobService, LogObserver
from jobsvc.store import MemoryStore

Capture = Callable[..., io.StringIO]
ServiceFactory = Callable[..., Any]
HEX32 = re.compile(r"[0-9a-f]{32}")


@asynccontextmanager
async def http(service: JobService) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(service), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
        yield client


def events(records: list[dict[str, Any]], job_id: str) -> list[dict[str, Any]]:
    return [r for r in records if r.get("job_id") == job_id]


async def test_job_events_are_json_lines_with_their_fields(
    capture_logs: Capture, start_service: ServiceFactory, clock: TrioClock, autojump_clock: Any
) -> None:
    """Each job event is one JSON line with job_id, task and attempt, and request_id when it
    happens inside a request (submitted, cancelled, redriven), none when it does not."""
    out = capture_logs("json")
    store = MemoryStore()
    then = clock.now() - 100
    await store.insert([models.claim(Job(id="orphan", task="echo", payload="secret-payload", max_attempts=3, run_at=then, created_at=then, updated_at=then), owner="gone", now=then, lease=5)])
    service: JobService = await start_service(store=store)
    async with http(service) as client:
        headers = {"X-Request-ID": "req-1"}
        await client.post("/jobs", json={"task": "flaky", "id": "flaky", "payload": {"fail_times": 1}}, headers=headers)
        await client.post("/jobs", json={"task": "permanent", "id": "perm", "payload": "secret-payload"}, headers={"X-Request-ID": "req-2"})
        await client.get("/jobs/flaky?wait=10")
        await client.post("/jobs/perm/retry", headers={"X-Request-ID": "req-3"})
        await client.get("/jobs/perm?wait=10")
        await client.post("/jobs", json={"task": "nap", "id": "cancelme", "payload": {"seconds": 60}})
        await trio.sleep(1)
        await client.post("/jobs/cancelme/cancel", headers={"X-Request-ID": "req-4"})
        await client.get("/jobs/cancelme?wait=10")
        await client.post("/jobs", json={"task": "noop", "id": "later", "delay": 3600})
        await client.post("/jobs/later/cancel", headers={"X-Request-ID": "req-5"})
        await client.post("/jobs", json={"task": "nap", "id": "releaseme", "payload": {"seconds": 60}})
        await trio.sleep(1)
        service.begin_shutdown()
        await service.stopped.wait()
    records = json_lines(out.getvalue())
    assert "secret-payload" not in out.getvalue()

    def seen(job_id: str) -> list[tuple[Any, ...]]:
        return [
            (r["event"], r["attempt"], "generated" if HEX32.fullmatch(r.get("request_id", "")) else r.get("request_id"))
            for r in events(records, job_id)
            if r["logger"] == "jobsvc.job"
        ]

    assert seen("flaky") == [
        ("job.submitted", 1, "req-1"),  # claimed at insert: its first attempt is under way
        ("job.started", 1, None),
        ("job.retry_scheduled", 1, None),
        ("job.started", 2, None),
        ("job.succeeded", 2, None),
    ]
    assert seen("perm") == [
        ("job.submitted", 1, "req-2"),
        ("job.started", 1, None),
        ("job.dead", 1, None),
        ("job.redriven", 0, "req-3"),
        ("job.started", 1, None),
        ("job.dead", 1, None),
    ]
    assert seen("orphan") == [("job.rescued", 1, None), ("job.started", 1, None), ("job.succeeded", 1, None)]
    # cancelled by its handler's end (in the worker), after the request that asked for it
    assert seen("cancelme") == [("job.submitted", 1, "generated"), ("job.started", 1, None), ("job.cancelled", 1, None)]
    assert seen("later") == [("job.submitted", 0, "generated"), ("job.cancelled", 0, "req-5")]  # waiting: at once
    assert seen("releaseme") == [("job.submitted", 1, "generated"), ("job.started", 1, None), ("job.released", 1, None)]
    by_event = {(r["job_id"], r["event"]): r for r in records if r.get("logger") == "jobsvc.job"}
    retry = by_event[("flaky", "job.retry_scheduled")]
    assert (retry["task"], retry["delay"], retry["error_type"], retry["error"], retry["level"]) == ("flaky", 1.0, "Boom", "failure 1 of 1", "info")
    assert by_event[("perm", "job.dead")]["level"] == "warning"
    assert by_event[("perm", "job.dead")]["error_type"] == "PermanentError"
    assert by_event[("orphan", "job.started")]["wait_ms"] == pytest.approx(100_000)
    assert by_event[("cancelme", "job.cancelled")]["duration_ms"] == 1000
    assert by_event[("orphan", "job.rescued")]["level"] == "warning"
    for record in records:
        assert {"timestamp", "level", "logger", "event"} <= set(record), record
        assert record["timestamp"].endswith("Z")


def test_fenced_event_is_logged_with_the_claimed_attempt(capture_logs: Capture) -> None:
    """A fenced outcome is a warning about the attempt that lost its job."""
    out = capture_logs("json")
    job = models.claim(Job(id="j", task="t", payload=None, max_attempts=3, run_at=0, created_at=0, updated_at=0), owner="o", now=0, lease=5)
    LogObserver().job_event("fenced", job)
    [record] = json_lines(out.getvalue())
    assert {k: record[k] for k in ("event", "level", "job_id", "task", "attempt")} == {
        "event": "job.fenced", "level": "warning", "job_id": "j", "task": "t", "attempt": 1,
    }


async def test_handler_ctx_log_lines_carry_the_job_fields(capture_logs: Capture, service: JobService, autojump_clock: Any) -> None:
    """A handler's ctx.log.info("...", args) is one JSON line with job_id, task and attempt."""
    out = capture_logs("json")
    async with http(service) as client:
        await client.post("/jobs", json={"task": "chatty", "id": "talker"})
        assert (await client.get("/jobs/talker?wait=10")).json()["state"] == "succeeded"
    [line] = [r for r in json_lines(out.getvalue()) if r["event"].startswith("working")]
    assert {k: line[k] for k in ("event", "job_id", "task", "attempt", "logger", "level")} == {
        "event": "working on it: step 1 of 1", "job_id": "talker", "task": "chatty", "attempt": 1,
        "logger": "jobsvc.job", "level": "info",
    }


async def test_access_log_and_request_ids(capture_logs: Capture, service: JobService) -> None:
    """One http.request line per request with method, route, path, status, duration_ms and
    request_id; a sane X-Request-ID is used and echoed, an insane one is replaced by a
    generated one, which is echoed too."""
    out = capture_logs("json")
    async with http(service) as client:
        ok = await client.get("/jobs/nope", params={"token": "hunter2"}, headers={"X-Request-ID": "abc-123", "Authorization": "Bearer hunter2"})
        long = await client.get("/health", headers={"X-Request-ID": "x" * 129})
        ctrl = await client.get("/health", headers={"X-Request-ID": "a b"})
        none = await client.get("/no/such")
    assert ok.headers["x-request-id"] == "abc-123"
    for r in (long, ctrl, none):
        assert HEX32.fullmatch(r.headers["x-request-id"]), r.headers
    assert len({long.headers["x-request-id"], ctrl.headers["x-request-id"], none.headers["x-request-id"]}) == 3
    access = [r for r in json_lines(out.getvalue()) if r["event"] == "http.request"]
    assert [(r["method"], r["route"], r["path"], r["status"], r["request_id"]) for r in access] == [
        ("GET", "/jobs/{job_id}", "/jobs/nope", 404, "abc-123"),
        ("GET", "/health", "/health", 200, long.headers["x-request-id"]),
        ("GET", "/health", "/health", 200, ctrl.headers["x-request-id"]),
        ("GET", "unmatched", "/no/such", 404, none.headers["x-request-id"]),
    ]
    assert all(isinstance(r["duration_ms"], float) and r["logger"] == "jobsvc.access" for r in access)
    ours = [line for line in out.getvalue().splitlines() if '"logger": "jobsvc' in line]
    assert ours and not any("hunter2" in line for line in ours)  # (the test's httpx client logs its URLs)


async def test_a_500_still_carries_the_request_id_and_is_logged(capture_logs: Capture, service: JobService, monkeypatch: pytest.MonkeyPatch) -> None:
    """An unexpected error: the 500 answer (made by Starlette's error middleware) echoes the
    request id, the error line and the access line carry it, the metric counts a 500."""
    out = capture_logs("json")

    async def broken(job_id: str, *, tenant: str | None = None) -> Job:
        raise RuntimeError("boom")

    monkeypatch.setattr(service, "get", broken)
    async with http(service) as client:
        r = await client.get("/jobs/x", headers={"X-Request-ID": "req-500"})
        metrics = (await client.get("/metrics")).text
    assert (r.status_code, r.headers["x-request-id"]) == (500, "req-500")
    records = [r for r in json_lines(out.getvalue()) if r.get("request_id") == "req-500"]
    assert [(r["event"], r["level"]) for r in records] == [("unhandled error on GET /jobs/x", "error"), ("http.request", "info")]
    assert "RuntimeError: boom" in records[0]["exception"]
    assert records[1]["status"] == 500
    assert 'jobsvc_http_requests_total{method="GET",route="/jobs/{job_id}",status="500"} 1.0' in metrics


@pytest.mark.parametrize("fmt", ["json", "console"])
async def test_hostile_error_message_is_escaped_and_cut(capture_logs: Capture, service: JobService, fmt: str, autojump_clock: Any) -> None:
    """A handler error message with a newline, a fake JSON record, a carriage return,
    terminal escape sequences, a line separator and 250 kB: in both renderers it forges no
    line, moves no cursor and is cut to a bounded size."""
    out = capture_logs(fmt)
    async with http(service) as client:
        await client.post("/jobs", json={"task": "hostile", "id": "evil"})
        assert (await client.get("/jobs/evil?wait=10")).json()["state"] == "dead"
    text = out.getvalue()
    for bad in ("\x1b", "\r", "\x07", "\u2028"):
        assert bad not in text, repr(bad)
    lines = text.splitlines()
    assert all(len(line) < 4 * MAX_VALUE for line in lines), max(map(len, lines))
    mentions = [line for line in lines if "evil" in line and "upstream said" in line or "job.dead" in line]
    assert len(mentions) == 2, lines
    assert not any("forged" in line and "evil" not in line for line in lines)
    if fmt == "json":
        records = json_lines(text)
        assert not any(r.get("event") == "forged" for r in records)
        said = next(r for r in records if r["event"].startswith("upstream said"))
        assert said["event"].startswith("upstream said: " + HOSTILE[:60])
        assert said["event"].endswith(f"...[{len('upstream said: ') + len(HOSTILE) - MAX_VALUE} more characters]")
        dead = next(r for r in records if r["event"] == "job.dead")
        assert dead["error"].startswith(HOSTILE[:60]) and len(dead["error"]) <= MAX_VALUE
    else:
        said = next(line for line in lines if "upstream said" in line)
        assert 'bad\\n{"event": "forged", "level": "critical"}\\r\\x1b[2J\\x1b[H\\x1b]0;owned\\x07\\u2028AAA' in said
        assert all(re.match(r"\d{4}-\d\d-\d\dT", line) for line in lines), lines


def test_console_lines_are_key_value(capture_logs: Capture) -> None:
    """The console renderer: timestamp, level, event, logger and key=value fields; a
    traceback's lines are indented below, its control characters escaped."""
    out = capture_logs("console")
    log = logging.getLogger("jobsvc.test")
    log.info("job.started", extra={"job_id": "j1", "task": "t", "attempt": 2})
    try:
        raise ValueError("bad\x1b[2J\nvalue")
    except ValueError:
        log.exception("oops")
    first, second, *trace = out.getvalue().splitlines()
    assert re.fullmatch(r"\S+Z \[info\s*\] job\.started\s+\[jobsvc\.test\] attempt=2 job_id=j1 task=t", first), first
    assert "[error" in second and "oops" in second
    assert trace and all(line.startswith("    ") for line in trace), trace
    assert "ValueError: bad\\x1b[2J" in "\n".join(trace)


def test_escape() -> None:
    assert escape("plain text, accents: café") == "plain text, accents: café"
    assert escape("a\nb\x1b[0m\u2028\x85\udce9\u202e") == "a\\nb\\x1b[0m\\u2028\\x85\\udce9\\u202e"
    assert escape("a\nb\tc", keep_newlines=True) == "a\nb\\tc"


def test_structlog_api_goes_through_the_same_handler(capture_logs: Capture) -> None:
    """structlog.get_logger() lines come out the same way, bounded too."""
    import structlog

    out = capture_logs("json")
    structlog.get_logger("jobsvc.custom").info("custom.event", job_id="j", size=3, blob="x" * 10_000, obj=object())
    [record] = json_lines(out.getvalue())
    assert (record["event"], record["job_id"], record["size"], record["logger"], record["level"]) == ("custom.event", "j", 3, "jobsvc.custom", "info")
    assert len(record["blob"]) < MAX_VALUE + 50 and record["obj"].startswith("<object object")


def test_auto_format_follows_the_stream(capture_logs: Capture) -> None:
    """auto: JSON on a stream that is not a terminal, console on one that is."""

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    capture_logs()  # restores the root logger afterwards
    assert configure_logging("info", "auto", stream=io.StringIO()) == "json"
    tty = Terminal()
    assert configure_logging("info", "auto", stream=tty) == "console"
    logging.getLogger("jobsvc.test").warning("hello")
    assert "hello" in tty.getvalue() and not tty.getvalue().startswith("{")
    with pytest.raises(ValueError, match="log format"):
        configure_logging("info", "xml")


def test_reconfiguring_replaces_only_our_handler(capture_logs: Capture) -> None:
    """A second configure_logging replaces the first one's handler, and leaves others be."""
    other = logging.StreamHandler(io.StringIO())
    logging.getLogger().addHandler(other)
    first = capture_logs("json")
    second = capture_logs("json")
    logging.getLogger("jobsvc.test").warning("once")
    assert first.getvalue() == "" and json.loads(second.getvalue())["event"] == "once"
    assert other in logging.getLogger().handlers


def test_hypercorn_records_come_out_once_in_our_format(capture_logs: Capture) -> None:
    """hypercorn's CLI gives its logger a plain-text handler of its own when it first logs;
    its records still come out once, through our handler only."""
    out = capture_logs("json")
    plain = io.StringIO()
    hypercorn_log = logging.getLogger("hypercorn.error")
    saved = list(hypercorn_log.handlers)
    hypercorn_log.handlers = [logging.StreamHandler(plain)]
    try:
        hypercorn_log.warning("Running on http://127.0.0.1:1 (CTRL + C to quit)")
    finally:
        hypercorn_log.handlers = saved
    assert plain.getvalue() == ""
    [record] = json_lines(out.getvalue())
    assert (record["logger"], record["event"]) == ("hypercorn.error", "Running on http://127.0.0.1:1 (CTRL + C to quit)")


def test_the_default_stream_is_stderr_as_it_is_now(capture_logs: Capture, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a stream, lines go to whatever sys.stderr is when they are written (a stream
    replaced later, as pytest's capture does, is followed, never written after closing)."""
    capture_logs()  # restores the root logger afterwards
    monkeypatch.setattr("sys.stderr", io.StringIO())
    configure_logging("info", "json")
    later = io.StringIO()
    monkeypatch.setattr("sys.stderr", later)
    logging.getLogger("jobsvc.test").warning("where am I")
    assert json.loads(later.getvalue())["event"] == "where am I"
