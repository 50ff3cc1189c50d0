"""Scenario 4: PostgreSQL stopped and restarted mid-load (RELIABILITY.md T3), on a
throwaway cluster of our own (never the shared server on 5432).

Two or three ``jobsvc serve`` instances share one database; submitters spread jobs over
them (client-chosen ids, one Idempotency-Key each, retried on 503 and on transport errors);
while they run, the cluster is stopped with ``pg_ctl stop -m fast`` or ``-m immediate``
(a crash: asynchronously committed claims and outcomes may be forgotten), kept down a few
seconds, and started again.

Checked: during an outage submissions get 503 problem+json with Retry-After (never a 500,
never a 2xx for a job not stored); every acknowledged job ends ``succeeded``; a job runs
more often than its recorded attempts only if it was rescued; no lease token is used by two
executions; each instance is ready again (and work is claimed again) soon after PostgreSQL
accepts connections, without a restart of its own; SIGTERM at the end exits 0.
"""

from __future__ import annotations

import json
import random
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import trio
from fault_tasks import read_runs
from faultkit import (
    FINAL_STATES,
    History,
    PgCluster,
    Target,
    fault_env,
    find_pg_bindir,
    params,
    seed,
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

LEASE, HEARTBEAT = 10.0, 2.0
FLAGS = (
    "--workers", "8", "--lease", str(LEASE), "--heartbeat", str(HEARTBEAT), "--poll", "0.5", "--max-rescues", "3",
    "--backoff-base", "0.05", "--backoff-cap", "1", "--grace", "5",
)  # fmt: skip


def pg(url: str, sql: str, args: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        cur = conn.execute(sql, args)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else []


async def _open_count(url: str) -> dict[str, int] | None:
    try:
        rows = await trio.to_thread.run_sync(pg, url, "SELECT state, count(*) FROM jobs GROUP BY state")
    except psycopg.Error:
        return None
    return {state: int(n) for state, n in rows}


async def test_pg_outage(tmp_path: Path, procs: Any, report: Any) -> None:
    r = report("4", "PostgreSQL stopped and restarted mid-load")
    p = params("pg")
    bindir = find_pg_bindir()
    if not r.check("PostgreSQL server binaries (initdb, pg_ctl) found", bindir is not None, "install PostgreSQL (Debian: apt-get install postgresql)"):
        r.finish()
    assert bindir is not None
    rng = random.Random(seed() + 4)
    cluster = PgCluster(bindir)
    try:
        await trio.to_thread.run_sync(cluster.init)
        await trio.to_thread.run_sync(cluster.start)
        r.observe("cluster", f"{cluster.version()} on 127.0.0.1:{cluster.port} (data in {cluster.base})")
        await trio.to_thread.run_sync(pg, cluster.url(), "CREATE DATABASE jobsvc")
        url = cluster.url("jobsvc")
        migrated = await trio.to_thread.run_sync(
            lambda: subprocess.run([sys.executable, "-m", "jobsvc", "migrate", "--db", url], capture_output=True, text=True, timeout=60, env=fault_env(), check=False)
        )
        assert migrated.returncode == 0, migrated.stderr
        instances = await trio.to_thread.run_sync(lambda: [procs.start(url, *FLAGS, name=f"pg-{i}") for i in range(p["instances"])])
        target = Target([s.url for s in instances])
        runlog = tmp_path / "runs.log"
        history = History(tmp_path / "history.jsonl")
        n_jobs = p["jobs"]
        jobs = [
            (f"key-{i:06d}", {"task": "runlog", "id": f"pg-{i:06d}", "payload": {"path": str(runlog), "seconds": round(rng.uniform(0.01, 0.05), 3)}})
            for i in range(n_jobs)
        ]
        cycles: list[tuple[str, float]] = list(p["cycles"])
        thresholds = [int(n_jobs * (0.1 + 0.75 * k / max(1, len(cycles)))) for k in range(len(cycles))]
        outages: list[dict[str, Any]] = []

        async def outage() -> None:
            async with httpx.AsyncClient(timeout=3) as client:
                for (mode, down), threshold in zip(cycles, thresholds, strict=True):
                    with trio.move_on_after(120):
                        while len(history.accepted) < threshold:  # noqa: ASYNC110 - bounded poll of the client's progress
                            await trio.sleep(0.01)
                    info: dict[str, Any] = {"mode": mode, "down_s": down, "acked_before": len(history.accepted)}
                    t0 = time.monotonic()
                    info["stop_took"] = round(await trio.to_thread.run_sync(cluster.stop, mode), 2)
                    t_stopped = time.time()
                    ready_codes: Counter[str] = Counter()
                    ready_latency: list[float] = []

                    async def probe_ready(s: Any, ready_codes: Counter[str] = ready_codes, ready_latency: list[float] = ready_latency) -> None:
                        t1 = time.monotonic()
                        try:
                            ready_codes[str((await client.get(f"{s.url}/ready", timeout=15)).status_code)] += 1
                        except httpx.HTTPError as exc:
                            ready_codes[type(exc).__name__] += 1
                        ready_latency.append(time.monotonic() - t1)

                    while time.monotonic() - t0 < down:
                        async with trio.open_nursery() as probes:
                            for s in instances:
                                probes.start_soon(probe_ready, s)
                        await trio.sleep(0.25)
                    info["ready_during_outage"] = dict(ready_codes)
                    info["ready_latency_during_outage_max_s"] = round(max(ready_latency), 2) if ready_latency else None
                    info["t_start_called"] = time.time()
                    await trio.to_thread.run_sync(cluster.start)
                    t_up = time.time()
                    info["t_stopped"], info["t_up"] = t_stopped, t_up
                    ready_after = []
                    for s in instances:
                        t1 = time.monotonic()
                        ok = None
                        while time.monotonic() - t1 < 30:
                            try:
                                if (await client.get(f"{s.url}/ready")).status_code == 200:
                                    ok = time.time() - t_up
                                    break
                            except httpx.HTTPError:
                                pass
                            await trio.sleep(0.05)
                        ready_after.append(None if ok is None else round(ok, 2))
                    info["ready_after_pg_up"] = ready_after
                    outages.append(info)

        t_start = time.monotonic()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(outage)
            await submit_all(target, jobs, history, concurrency=p["concurrency"], deadline=120 + n_jobs * 0.05, timeout=15.0)
        submitted_in = time.monotonic() - t_start
        done, drain_s, last = await wait_all_final(lambda: _open_count(url), timeout=p["drain"], interval=0.5)
        alive = [s.proc.poll() is None for s in instances]
        stops = [await trio.to_thread.run_sync(stop_gracefully, s, 20.0) for s in instances]
        rows = await trio.to_thread.run_sync(pg, url, "SELECT id, state, attempts, rescues, errors FROM jobs")
    finally:
        procs.close()
        pg_log = cluster.log()
        await trio.to_thread.run_sync(cluster.destroy)

    # ------------------------------------------------------------------ analysis
    stored = {row[0]: row for row in rows}
    acked_ids = set(history.accepted.values())
    runs = read_runs(runlog)
    lost = sorted(acked_ids - set(stored))
    phantoms = sorted(set(stored) - acked_ids)
    not_final = sorted(i for i in acked_ids if i in stored and stored[i][1] not in FINAL_STATES)
    states = Counter(stored[i][1] for i in acked_ids if i in stored)
    extra = {i: len(runs.get(i, [])) - stored[i][2] for i in acked_ids if i in stored}
    duplicated = sorted(i for i, n in extra.items() if n > 0)
    unexplained = sorted(i for i in duplicated if extra[i] > stored[i][3])
    token_reuse = sorted(i for i, rs in runs.items() if len({run.token for run in rs}) != len(rs))
    never_ran = sorted(i for i in acked_ids if i in stored and stored[i][1] == "succeeded" and not any(run.outcome == "ok" for run in runs.get(i, [])))
    dead_reasons = Counter(json.loads(stored[i][4])[-1]["type"] for i in acked_ids if i in stored and stored[i][1] == "dead" and json.loads(stored[i][4]))
    # during each outage: what the submissions got (sent after the stop, answered before the restart)
    during: Counter[str] = Counter()
    refusal_latency: list[float] = []
    first_ack_after: list[float | None] = []
    first_run_after: list[float | None] = []
    all_starts = sorted(run.start for rs in runs.values() for run in rs)
    for info in outages:
        for t in history.tries:
            if info["t_stopped"] < t.t_send and t.t_recv < info["t_start_called"]:  # PG down all along
                during[t.outcome.split(":")[0]] += 1
                if t.outcome == "503":
                    refusal_latency.append(t.t_recv - t.t_send)
        acks = [t.t_recv for t in history.tries if t.outcome in ("200", "202") and t.t_send > info["t_up"]]
        first_ack_after.append(round(min(acks) - info["t_up"], 2) if acks else None)
        starts = [s for s in all_starts if s > info["t_up"]]
        first_run_after.append(round(starts[0] - info["t_up"], 2) if starts else None)
    ready_all = [x for info in outages for x in info["ready_after_pg_up"]]

    r.acked = len(acked_ids)
    r.lost = len(lost)
    r.duplicated = len(duplicated)
    if ready_all and None not in ready_all:
        r.recover = f"PG up -> every instance /ready 200: median {statistics.median(ready_all):.2f} s, max {max(ready_all):.2f} s"
    else:
        r.recover = f"some instance never ready again: {ready_all}"
    r.observe("setup", f"{p['instances']} instances, {n_jobs} jobs, {p['concurrency']} submitters, outages {cycles}, flags {' '.join(FLAGS)}")
    r.observe("outages", [{k: v for k, v in info.items() if not k.startswith("t_")} for info in outages])
    r.observe("submission tries answered during the outages", dict(during))
    if refusal_latency:
        r.observe("latency of the 503s during the outages", f"{len(refusal_latency)}: median {statistics.median(refusal_latency):.2f} s, max {max(refusal_latency):.2f} s")
    r.observe("first acknowledgement after PG came back (s, per outage)", first_ack_after)
    r.observe("first execution started after PG came back (s, per outage)", first_run_after)
    r.observe("submission", f"all {n_jobs} tried in {submitted_in:.1f} s; tries by outcome {dict(history.statuses())}")
    r.observe("ambiguous submissions", f"{len(history.ambiguous_keys)} keys; resolved as {dict(history.ambiguous_resolution())}")
    r.observe("final states", dict(states))
    r.observe("dead-letter reasons", dict(dead_reasons))
    r.observe("runs", f"{sum(len(v) for v in runs.values())} executions of {len(runs)} jobs; {len(duplicated)} jobs ran more than their attempts; rescued jobs {sum(1 for i in acked_ids if i in stored and stored[i][3] > 0)}")
    r.observe("drain", f"{drain_s:.1f} s, all final {done}, last counts {last}")
    r.observe("instances alive at the end / SIGTERM exit codes", f"{alive} / {[(c, round(s, 2)) for c, s in stops]}")
    r.observe("tracebacks in the instances' logs", sum(traceback_count(s.log()) for s in instances))
    r.server_log("all instances", "\n".join(s.log() for s in instances))
    r.logs["PostgreSQL (throwaway cluster)"] = [line for line in pg_log.splitlines() if "FATAL" in line or "PANIC" in line or "shutdown" in line or "ready to accept" in line][:12]

    r.check("no 500, no traceback, every 503 is problem+json with Retry-After", not history.bad, history.bad[:5])
    r.check("every submission resolved in the end", not history.gave_up, history.gave_up[:10])
    r.check("the outages were seen: submissions got 503 (or could not connect) while PG was down", any(k in during for k in ("503", "ambiguous", "refused")) or not during, dict(during))
    ready_lat = [info["ready_latency_during_outage_max_s"] for info in outages if info["ready_latency_during_outage_max_s"] is not None]
    r.check("/ready answers 503 within 2.5 s during an outage", all(set(info["ready_during_outage"]) <= {"503"} for info in outages) and all(x <= 2.5 for x in ready_lat), [(info["ready_during_outage"], info["ready_latency_during_outage_max_s"]) for info in outages])
    r.check("submissions are refused (503) within 6 s during an outage", not refusal_latency or max(refusal_latency) <= 6.0, f"max {max(refusal_latency):.2f} s" if refusal_latency else "no 503 seen")
    r.check("no 2xx answered while PG was down", not any(k in during for k in ("200", "202")), dict(during))
    r.check("lost = 0: every acknowledged job is in the database", not lost, lost[:10])
    r.check("every acknowledged job succeeded", done and set(states) == {"succeeded"}, f"{dict(states)} not final {not_final[:5]}")
    r.check("nothing in the database that was never acknowledged", not phantoms, phantoms[:10])
    r.check("every job that succeeded ran at least once", not never_ran, never_ran[:10])
    r.check("a job ran more than its attempts only if rescued (<= one extra run per rescue)", not unexplained, [(i, extra[i], stored[i][3]) for i in unexplained[:10]])
    r.check("no lease token used by two executions", not token_reuse, token_reuse[:10])
    r.check("every instance ready again within 15 s of PG accepting connections, without a restart", bool(ready_all) and None not in ready_all and max(ready_all) <= 15, ready_all)
    r.check("work claimed again within 5 s of PG accepting connections", all(x is not None and x <= 5 for x in first_run_after), first_run_after)
    r.check("every instance survived and exits 0 on SIGTERM", all(alive) and all(c == 0 for c, _ in stops), f"alive {alive}, exits {stops}")
    r.finish()
