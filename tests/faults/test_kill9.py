"""Scenario 1: the kill -9 campaign on SQLite (RELIABILITY.md T1).

Several concurrent submitters (trio + httpx) send jobs with a client-chosen id and a unique
Idempotency-Key each and record every try; meanwhile the service is killed with SIGKILL at
random moments and restarted at once on the same file (a new port each time). Tries that
died after the request may have left are *ambiguous* and are retried with the same key
after the restart; what they resolve to is recorded (200: it had been stored; 202: it had
not). The ``runlog`` task records every execution in an fsynced side file.

Checked afterwards: every acknowledged job exists, is final and (if it succeeded) ran at
least once; nothing is in the store that was not acknowledged; a job ran more often than its
recorded attempts only if it was rescued (``rescues`` > 0, at most one extra run per
rescue); ``PRAGMA integrity_check`` is ok after every kill and at the end; no 500, no
traceback, every 503 is problem+json with Retry-After.
"""

from __future__ import annotations

import json
import random
import signal
import statistics
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from fault_tasks import read_runs
from faultkit import (
    FINAL_STATES,
    History,
    Target,
    integrity,
    params,
    query,
    seed,
    sqlite_url,
    state_counts,
    stop_gracefully,
    submit_all,
    traceback_count,
    wait_all_final,
)

pytestmark = [
    pytest.mark.faults,
    pytest.mark.e2e,
    pytest.mark.filterwarnings("ignore:Async generator 'httpx._content.ByteStream.__aiter__' was garbage collected:ResourceWarning"),
]

FLAGS = (
    "--workers", "8", "--backoff-base", "0.05", "--backoff-cap", "2", "--lease", "5", "--heartbeat", "1",
    "--max-rescues", "3", "--grace", "5", "--max-attempts", "5",
)  # fmt: skip


async def _ready(url: str, timeout: float) -> float | None:
    """Seconds until GET /ready answers 200 (None: not within ``timeout``)."""
    t0 = time.monotonic()
    async with httpx.AsyncClient(timeout=2) as client:
        while time.monotonic() - t0 < timeout:
            try:
                if (await client.get(f"{url}/ready")).status_code == 200:
                    return time.monotonic() - t0
            except httpx.HTTPError:
                pass
            await trio.sleep(0.02)
    return None


async def test_kill9_campaign(tmp_path: Path, procs: Any, report: Any) -> None:
    r = report("1", "kill -9 campaign (SQLite)")
    p = params("kill9")
    n_jobs, n_kills = p["jobs"], p["kills"]
    rng = random.Random(seed())
    db = tmp_path / "jobs.db"
    runlog = tmp_path / "runs.log"
    history = History(tmp_path / "history.jsonl")
    r.observe("setup", f"{n_jobs} jobs (5-50 ms each, 5% fail their first attempt), {p['concurrency']} submitters, {n_kills} SIGKILLs, flags {' '.join(FLAGS)}")

    server = await trio.to_thread.run_sync(lambda: procs.start(sqlite_url(db), *FLAGS, name="kill9"))
    incarnations = [server]
    target = Target([server.url])
    jobs = []
    for i in range(n_jobs):
        payload = {"path": str(runlog), "seconds": round(rng.uniform(0.005, 0.05), 3), "fail_attempts": int(rng.random() < 0.05)}
        jobs.append((f"key-{i:06d}", {"task": "runlog", "id": f"k9-{i:06d}", "payload": payload}))
    thresholds = sorted(rng.sample(range(max(1, n_jobs // 20), max(2, n_jobs * 19 // 20)), n_kills))
    kills: list[dict[str, Any]] = []

    async def killer() -> None:
        nonlocal server
        for threshold in thresholds:
            with trio.move_on_after(120):
                while len(history.accepted) < threshold:  # noqa: ASYNC110 - bounded poll of the client's progress
                    await trio.sleep(0.005)
            await trio.sleep(rng.uniform(0, 0.2))
            info: dict[str, Any] = {"acked_before": len(history.accepted), "t_kill": time.time()}
            t0 = time.monotonic()
            target.down = True
            server.send(signal.SIGKILL)
            await trio.to_thread.run_sync(server.proc.wait, 10)
            info["at_kill"] = dict(await trio.to_thread.run_sync(query, db, "SELECT state, count(*) FROM jobs GROUP BY state"))
            info["running_ids"] = [row[0] for row in await trio.to_thread.run_sync(query, db, "SELECT id FROM jobs WHERE state = 'running'")]
            info["integrity"] = await trio.to_thread.run_sync(integrity, db)
            new = await trio.to_thread.run_sync(lambda: procs.start(sqlite_url(db), *FLAGS, name="kill9"))
            info["listening_after"] = time.monotonic() - t0
            info["t_listening"] = time.time()
            target.set([new.url])
            ready = await _ready(new.url, 30)
            info["ready_after"] = None if ready is None else time.monotonic() - t0
            server = new
            incarnations.append(new)
            kills.append(info)

    t_start = time.monotonic()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(killer)
        await submit_all(target, jobs, history, concurrency=p["concurrency"], deadline=60 + n_jobs * 0.05)
    submitted_in = time.monotonic() - t_start
    done, drain_s, last_counts = await wait_all_final(lambda: state_counts(server.url), timeout=p["drain"])
    code, stop_s = await trio.to_thread.run_sync(stop_gracefully, server, 15.0)

    # ------------------------------------------------------------------ analysis
    rows = await trio.to_thread.run_sync(query, db, "SELECT id, state, attempts, rescues, errors FROM jobs")
    stored = {row[0]: row for row in rows}
    acked_ids = set(history.accepted.values())
    runs = read_runs(runlog)
    lost = sorted(acked_ids - set(stored))
    phantoms = sorted(set(stored) - acked_ids)
    not_final = sorted(i for i in acked_ids if i in stored and stored[i][1] not in FINAL_STATES)
    states = Counter(stored[i][1] for i in acked_ids if i in stored)
    never_ran = sorted(i for i in acked_ids if i in stored and stored[i][1] == "succeeded" and not any(run.outcome == "ok" for run in runs.get(i, [])))
    extra = {i: len(runs.get(i, [])) - stored[i][2] for i in acked_ids if i in stored}
    duplicated = sorted(i for i, n in extra.items() if n > 0)
    unexplained = sorted(i for i in duplicated if extra[i] > stored[i][3])  # more extra runs than rescues
    double_effect = sorted(i for i in acked_ids if sum(run.outcome == "ok" for run in runs.get(i, [])) > 1)
    rescued = sorted(i for i in acked_ids if i in stored and stored[i][3] > 0)
    dead_reasons = Counter(json.loads(stored[i][4])[-1]["type"] if json.loads(stored[i][4]) else "?" for i in acked_ids if i in stored and stored[i][1] == "dead")
    final_integrity = await trio.to_thread.run_sync(integrity, db)

    # orphans (running at a kill): how soon after the restart they ran again (a queueing
    # delay: they wait behind the older backlog), and whether jobs submitted after the
    # restart overtook them (they keep their place in the queue: they must not be overtaken)
    acked_at = {history.accepted[k]: t for k, t in history.first_ack_at.items() if k in history.accepted}
    first_start = {i: min(run.start for run in rs) for i, rs in runs.items() if rs}
    redispatch = []
    overtaken = []
    for n, info in enumerate(kills):
        next_kill = kills[n + 1]["t_kill"] if n + 1 < len(kills) else float("inf")
        for job_id in info["running_ids"]:
            # runs after the kill are the new incarnation's (it runs recovered jobs even
            # before it prints "listening on")
            later = [run.start for run in runs.get(job_id, []) if run.start > info["t_kill"]]
            if not later or min(later) > next_kill:
                continue  # not re-run before the next kill: counted there
            rerun = min(later)
            redispatch.append(rerun - info["t_kill"])
            newer = sum(1 for j, t in acked_at.items() if t > info["t_listening"] and first_start.get(j, float("inf")) < rerun)
            if newer > 8:  # --workers: a claim in flight may take a few
                overtaken.append((job_id, newer, round(rerun - info["t_kill"], 2)))

    r.acked = len(acked_ids)
    r.lost = len(lost)
    r.duplicated = len(duplicated)
    ready_times = [k["ready_after"] for k in kills if k["ready_after"] is not None]
    if ready_times:
        r.recover = f"kill -> /ready 200: median {statistics.median(ready_times):.2f} s, max {max(ready_times):.2f} s"
    r.observe("kills", [{k: v for k, v in info.items() if k not in ("running_ids", "t_kill", "t_listening")} for info in kills])
    r.observe("submission", f"{n_jobs} jobs acknowledged in {submitted_in:.1f} s; tries by outcome {dict(history.statuses())}")
    r.observe("ambiguous submissions", f"{len(history.ambiguous_keys)} keys saw an ambiguous try; resolved on retry as {dict(history.ambiguous_resolution())} (200: it had been stored, 202: it had not)")
    r.observe("final states of acknowledged jobs", dict(states))
    r.observe("dead-letter reasons", dict(dead_reasons))
    r.observe("runs", f"{sum(len(v) for v in runs.values())} executions of {len(runs)} jobs; {len(duplicated)} jobs ran more often than their recorded attempts (all rescued: {not unexplained}); {len(double_effect)} jobs succeeded twice; {len(rescued)} jobs rescued")
    if redispatch:
        r.observe("orphans re-run after a kill (kill -> first new run, restart included)", f"{len(redispatch)} orphans, median {statistics.median(redispatch):.2f} s, max {max(redispatch):.2f} s")
    r.observe("drain after the last submission", f"{drain_s:.1f} s (all final: {done}; last counts {last_counts})")
    r.observe("final graceful stop", f"exit {code} in {stop_s:.2f} s")
    tracebacks = sum(traceback_count(s.log()) for s in incarnations)
    r.observe("tracebacks in server logs", tracebacks)
    r.server_log("all incarnations", "\n".join(s.log() for s in incarnations))

    r.check("no 500, no traceback in a response, every 503 is problem+json with Retry-After", not history.bad, history.bad[:5])
    r.check("every submission resolved (acknowledged) in the end", not history.gave_up, history.gave_up[:10])
    r.check("lost = 0: every acknowledged job is in the store", not lost, lost[:10])
    r.check("every acknowledged job reached a final state", done and not not_final, f"not final: {not_final[:10]}; counts {last_counts}")
    r.check("every job that succeeded ran at least once (run log)", not never_ran, never_ran[:10])
    r.check("nothing in the store that was never acknowledged", not phantoms, phantoms[:10])
    r.check("duplicate runs only for rescued jobs, at most one extra run per rescue", not unexplained, [(i, extra[i], stored[i][3]) for i in unexplained[:10]])
    r.check("dead-lettered jobs are only WorkerLost (rescued too often)", set(dead_reasons) <= {"WorkerLost"}, dict(dead_reasons))
    bad_integrity = [(n, k["integrity"]) for n, k in enumerate(kills) if k["integrity"] != "ok"]
    r.check("PRAGMA integrity_check ok after every kill and at the end", not bad_integrity and final_integrity == "ok", f"{bad_integrity} final={final_integrity}")
    r.check(f"{n_kills} kills done, and at least one hit running jobs", len(kills) == n_kills and any(k["running_ids"] for k in kills), [k["at_kill"] for k in kills])
    mismatched = []
    for n, info in enumerate(kills):
        expect = len(info["running_ids"])
        log = incarnations[n + 1].log()
        if expect and f"recovered {expect} job(s) left running by a previous process" not in log:
            mismatched.append((n, expect))
    r.check("each restart recovered exactly the jobs left running", not mismatched, mismatched)
    r.check("every restart ready within 10 s", len(ready_times) == len(kills) and all(t <= 10 for t in ready_times), ready_times)
    r.check("orphans keep their place: not overtaken by jobs submitted after the restart", not overtaken, f"(job, newer jobs that ran first, seconds) {overtaken[:5]}")
    r.check("final SIGTERM: exit 0", code == 0, f"exit {code} after {stop_s:.2f} s")
    (tmp_path / "kills.json").write_text(json.dumps(kills, indent=1))  # for a post-mortem
    r.finish()
