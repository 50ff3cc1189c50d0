"""Scenario 6: misbehaving handlers (RELIABILITY.md T5, R5, R6).

One job per misbehaviour (``fault_tasks``): handlers that raise every kind of exception
(Exception subclasses, SystemExit, KeyboardInterrupt, GeneratorExit, a bare BaseException,
an exception whose ``__str__`` raises, an exception group), return a non-JSON value, wait
forever (the per-attempt timeout must end them), block a worker thread with
``trio.to_thread.run_sync(time.sleep, S)``, block the event loop itself for a moment, return
a 10 MiB result, raise a 10 MiB message full of newlines and ANSI escapes.

Expected: the service stays up and keeps running other jobs; each job ends as documented (a
failed attempt with the exception's type, then retried or dead-lettered; messages cut to
2 KiB; never a traceback in a response); an attempt ends at its deadline; the log stays
readable (no 10 MiB lines, no raw escape sequences); a SIGTERM with a blocked handler still
exits within ``--grace`` plus a few seconds.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from faultkit import (
    leaks_traceback,
    params,
    query,
    rss_kib,
    sqlite_url,
    stop_gracefully,
    traceback_count,
)

pytestmark = [
    pytest.mark.faults,
    pytest.mark.e2e,
    pytest.mark.filterwarnings("ignore:Async generator 'httpx._content.ByteStream.__aiter__' was garbage collected:ResourceWarning"),
]

TIMEOUT = 2.0  #: --timeout: the per-attempt deadline
#: task -> the error type each failed attempt must record (None: not a failure)
RAISERS = {
    "raise_exception": "ValueError",
    "raise_custom": "CustomError",
    "raise_systemexit": "SystemExit",
    "raise_keyboardinterrupt": "KeyboardInterrupt",
    "raise_generatorexit": "GeneratorExit",
    "raise_baseexception": "NotAnException",
    "raise_unprintable": "Unprintable",
    "raise_group": "ExceptionGroup",
    "bad_result": "TypeError",
    "sleep_forever": "Timeout",
}


async def _health_latency(client: httpx.AsyncClient, url: str, samples: list[tuple[float, float, str]], stop: trio.Event) -> None:
    while not stop.is_set():
        t0 = time.monotonic()
        try:
            outcome = str((await client.get(f"{url}/health", timeout=30)).status_code)
        except httpx.HTTPError as exc:
            outcome = type(exc).__name__
        samples.append((t0, time.monotonic() - t0, outcome))
        await trio.sleep(0.1)


async def test_bad_handlers(tmp_path: Path, procs: Any, report: Any) -> None:
    r = report("6", "misbehaving handlers")
    p = params("handlers")
    db = tmp_path / "jobs.db"
    grace = p["grace"]
    flags = ("--workers", "8", "--timeout", str(TIMEOUT), "--grace", str(grace), "--backoff-base", "0.05", "--backoff-cap", "0.2")
    server = await trio.to_thread.run_sync(lambda: procs.start(sqlite_url(db), *flags, name="handlers"))
    r.observe("setup", f"flags {' '.join(flags)}; block_thread sleeps {p['block']:g} s in a thread; huge values {p['huge_mib']:g} MiB")
    bad_bodies: list[str] = []
    jobs: dict[str, str] = {}
    submitted_at: dict[str, float] = {}
    health: list[tuple[float, float, str]] = []
    stop = trio.Event()
    rss_before = rss_kib(server.pid)
    log_before = len(server.log())

    async with httpx.AsyncClient(timeout=60) as client:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_health_latency, client, server.url, health, stop)
            specs: list[tuple[str, Any]] = [(name, None) for name in RAISERS]
            specs += [
                ("block_thread", {"seconds": p["block"]}),
                ("block_loop", {"seconds": 1.5}),
                ("huge_result", {"mib": p["huge_mib"]}),
                ("huge_error", {"mib": p["huge_mib"]}),
            ]
            for name, payload in specs:
                body: dict[str, Any] = {"task": name}
                if payload is not None:
                    body["payload"] = payload
                response = await client.post(f"{server.url}/jobs", json=body)
                if leaks_traceback(response.content):
                    bad_bodies.append(f"submit {name}: {response.text[:200]!r}")
                assert response.status_code == 202, (name, response.status_code, response.text[:300])
                jobs[name] = response.json()["id"]
                submitted_at[name] = time.monotonic()
            # well-behaved jobs alongside
            noop_ids = []
            for _ in range(20):
                response = await client.post(f"{server.url}/jobs", json={"task": "noop"})
                noop_ids.append(response.json()["id"])
            t_noops = time.monotonic()

            final: dict[str, dict[str, Any]] = {}
            took: dict[str, float] = {}
            get_info: dict[str, Any] = {}

            async def follow(name: str) -> None:
                deadline = time.monotonic() + p["block"] + 30
                while time.monotonic() < deadline:
                    t0 = time.monotonic()
                    try:
                        response = await client.get(f"{server.url}/jobs/{jobs[name]}?wait=10")
                    except httpx.HTTPError as exc:
                        get_info[name] = f"GET failed: {type(exc).__name__}"
                        await trio.sleep(0.5)
                        continue
                    if leaks_traceback(response.content[:100000]) and name not in ("huge_error",):
                        bad_bodies.append(f"GET {name}: traceback in the response")
                    job = response.json()
                    if job["state"] in ("succeeded", "dead", "cancelled"):
                        final[name] = job
                        took[name] = time.monotonic() - submitted_at[name]
                        get_info[name] = f"{len(response.content)} bytes in {time.monotonic() - t0:.2f} s"
                        return

            async with trio.open_nursery() as followers:
                for name in jobs:
                    followers.start_soon(follow, name)
                noops_done: list[float] = []

                async def follow_noops() -> None:
                    for job_id in noop_ids:
                        await client.get(f"{server.url}/jobs/{job_id}?wait=20")
                    noops_done.append(time.monotonic() - t_noops)

                followers.start_soon(follow_noops)
            rss_peak = rss_kib(server.pid)
            stop.set()
        alive_after_phase1 = server.proc.poll() is None

        # shutdown with a handler blocked in a thread (and a cancellable one beside it)
        blocked = (await client.post(f"{server.url}/jobs", json={"task": "block_thread", "payload": {"seconds": p["block"]}})).json()["id"]
        sleeper = (await client.post(f"{server.url}/jobs", json={"task": "sleep", "payload": {"seconds": 600}, "timeout": 900})).json()["id"]
        await trio.sleep(0.5)
    log_phase1 = server.log()[log_before:]
    code, stop_s = await trio.to_thread.run_sync(stop_gracefully, server, grace + p["block"] + 10)
    log = server.log()
    try:
        after = {row[0]: row[1:] for row in await trio.to_thread.run_sync(query, db, "SELECT id, state, attempts FROM jobs WHERE id IN (?, ?)", (blocked, sleeper))}
        running_left = (await trio.to_thread.run_sync(query, db, "SELECT count(*) FROM jobs WHERE state = 'running'"))[0][0]
    except sqlite3.Error as exc:
        after, running_left = {"error": str(exc)}, -1

    # ------------------------------------------------------------------ analysis
    def errors_of(name: str) -> list[str]:
        return [e["type"] for e in final.get(name, {}).get("errors", [])]

    table = {}
    for name in jobs:
        job = final.get(name)
        if job is None:
            table[name] = "NOT FINAL within the bound"
            continue
        msgs = [len(e["message"]) for e in job.get("errors", [])]
        result_size = len(job["result"]) if isinstance(job.get("result"), str) else None
        table[name] = (
            f"{job['state']} after {took[name]:.1f} s, attempts {job['attempts']}, errors {errors_of(name)}, "
            f"message lengths {msgs}" + (f", result {result_size} chars" if result_size else "") + f"; GET: {get_info.get(name)}"
        )
    stall = [(round(lat, 2), outcome) for _, lat, outcome in health if lat > 0.5 or outcome != "200"]
    log_lines = log_phase1.splitlines()
    longest = max((len(line) for line in log_lines), default=0)
    esc_lines = sum(1 for line in log_lines if "\x1b" in line)
    forged = sum(1 for line in log_lines if line.startswith("2099-01-01") or line.startswith('  File "/etc/passwd"'))
    r.acked = len(jobs) + 20
    r.recover = f"SIGTERM with a blocked thread: {'exit ' + str(code) if code is not None else 'NO EXIT'} after {stop_s:.1f} s (grace {grace:g} s)"
    for name, line in table.items():
        r.observe(f"job {name}", line)
    r.observe("20 noop jobs beside them", f"all final after {noops_done[0]:.1f} s" if noops_done else "not all final")
    r.observe("/health slower than 0.5 s or failing (latency s, outcome)", stall[:20])
    r.observe("server RSS MiB before / after the huge values", f"{(rss_before or 0) // 1024} / {(rss_peak or 0) // 1024}")
    r.observe("server log during the phase", f"{len(log_phase1)} bytes, {len(log_lines)} lines, longest line {longest} chars, {esc_lines} lines with raw ESC, {forged} forged lines (a handler's message printed as if it were a log line / traceback)")
    r.observe("shutdown with block_thread and a 600 s sleep running", f"exit {code} after {stop_s:.1f} s; then block_thread {after.get(blocked)}, sleep {after.get(sleeper)} (state, attempts); {running_left} left running")
    r.observe("tracebacks in the server log", traceback_count(log))
    r.server_log("misbehaving handlers", log)
    r.note("every job name above is a task in tests/faults/fault_tasks.py")
    if forged:
        r.note("the 'Traceback' and 'CRITICAL ... forged log line' lines in the log below are not jobsvc's: they are huge_error's exception message, logged verbatim (newlines and ANSI escapes included) by the 'attempt N failed' info line")

    r.check("no traceback in any response", not bad_bodies, bad_bodies[:3])
    r.check("the service stayed up", alive_after_phase1)
    for name, expected in RAISERS.items():
        job = final.get(name)
        types = errors_of(name)
        ok = job is not None and job["state"] == "dead" and job["attempts"] == 2 and types == [expected, expected]
        r.check(f"{name}: dead after 2 failed attempts recorded as {expected}", ok, table[name])
    job = final.get("sleep_forever")
    r.check("sleep_forever: each attempt ended at its deadline", job is not None and took["sleep_forever"] <= 2 * TIMEOUT + 3, table["sleep_forever"])
    job = final.get("block_thread")
    # RELIABILITY.md T5(b): an uncancellable handler is reported stuck (here: written off,
    # its outcome decided) at most 2 s after its deadline
    r.check(f"block_thread: written off as a Timeout by its deadline ({TIMEOUT:g} s) + 2 s", job is not None and took["block_thread"] <= TIMEOUT + 2 and errors_of("block_thread") == ["Timeout"], table["block_thread"])
    r.check("block_thread: an error line names the written-off handler", "(task block_thread): the handler still runs" in log_phase1)
    job = final.get("huge_error")
    r.check("huge_error: dead, stored messages cut to 2 KiB", job is not None and job["state"] == "dead" and all(len(e["message"]) <= 2048 for e in job["errors"]), table["huge_error"])
    r.check("the log stays readable: no line over 64 KiB, no raw ESC, no forged lines", longest <= 65536 and esc_lines == 0 and forged == 0, f"longest {longest}, ESC lines {esc_lines}, forged {forged}")
    job = final.get("huge_result")
    r.check("huge_result: ends as documented (succeeded with its result, or failed with a clear error)", job is not None, table["huge_result"])
    r.check("block_loop: ends (succeeded)", (final.get("block_loop") or {}).get("state") == "succeeded", table["block_loop"])
    r.check("well-behaved jobs still run beside them (20 noops final within 10 s)", bool(noops_done) and noops_done[0] <= 10, noops_done)
    r.check(f"SIGTERM with a handler blocked in a thread: exit 0 within grace ({grace:g} s) + 3 s", code == 0 and stop_s <= grace + 3, f"exit {code} after {stop_s:.1f} s")
    r.check("nothing left running after the shutdown", running_left == 0, running_left)
    r.finish()
