"""jobsvc side by side with what a user would build instead, in one run.

    python bench/peers.py [--quick] [--json FILE] [--md FILE] [--only NAME,...]

What runs, in this order, each on 127.0.0.1 and bounded in count and time:

1. **Floors** (:func:`floor`): ``floor_app`` (parse the JSON body, answer 202) under hypercorn's
   trio worker (the most a jobsvc-shaped app can do on jobsvc's HTTP server) and under uvicorn
   (reference). wrk saturates ``POST /jobs``: requests/s answered 2xx, latency percentiles.
2. **Targets**: jobsvc on SQLite and on PostgreSQL (black-box ``python -m jobsvc serve``), and
   the peers dramatiq (Redis), arq (Redis) and procrastinate (PostgreSQL), each with its own
   worker process(es) and a uvicorn front. For each:

   * *submission* (:func:`submission_and_end_to_end`): wrk saturates ``POST /jobs`` with
     ``{"task": "noop"}`` for D seconds: accepted (2xx) jobs/s, p50/p90/p99 latency, non-2xx
     responses and socket errors, CPU % of one core of every process of the target;
   * *end to end*, from the same run: jobs finished when wrk stopped (share of the accepted
     ones), seconds from then until every accepted job finished, and end-to-end jobs/s =
     accepted / (load start .. all finished). "Accepted" is counted by the target itself
     (all jobs it finished), which also catches requests wrk abandoned at the end of its window;
   * *drain* (:func:`drain`): N jobs enqueued while no worker runs, then the worker(s) start:
     seconds from starting them until all N finished (start-up included), jobs/s, and jobs/s
     counted from the first completion seen.

Completion counts are polled every 50 ms, or every 10x the counting call's duration when that is
longer, and the moment a count was reached is interpolated between two polls
(:func:`load.time_to_count`). One line per finished part is printed on stderr; the markdown goes to stdout (and ``--md``), the raw numbers to ``--json``.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NoReturn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from load import HOST, CpuMeter, Proc, free_port, spawn, time_to_count, wait_until, wrk  # noqa: E402
from report import (  # noqa: E402
    SHARED_CORES_NOTE,
    col,
    get,
    machine,
    machine_section,
    one_line,
    percent,
    ratio,
    section,
    speed_probe,
    table,
    times,
)
from targets import (  # noqa: E402
    BENCH_DIR,
    ArqTarget,
    DramatiqTarget,
    Env,
    JobsvcTarget,
    ProcrastinateTarget,
    Target,
)

__all__ = ["FLOORS", "Params", "drain", "floor", "main", "render", "submission_and_end_to_end"]

BODY = '{"task": "noop"}'
POLL = 0.05


@dataclass(frozen=True)
class Params:
    """Counts and durations of one run."""

    connections: int = 50
    duration: float = 10.0  #: seconds of wrk load per submission run
    drain_jobs: int = 20_000
    finish_timeout: float = 300.0  #: longest wait for jobs to finish after the load
    procrastinate_concurrency: int = 1
    arq_poll_delay: float | None = None  #: None: arq's default (0.5 s)


FULL = Params()
QUICK = Params(duration=2.0, drain_jobs=2_000, finish_timeout=60.0)


def _progress(message: str) -> None:
    print(f"[peers {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _latency(result: Any) -> dict[str, float | None]:
    return {f"{p}_ms": result.latency_ms.get(p) for p in ("p50", "p90", "p99")}


# -- floors ----------------------------------------------------------------------------------


def _hypercorn_trio(port: int) -> list[str]:
    return [sys.executable, "-m", "hypercorn", "--worker-class", "trio", "--workers", "1", "--bind", f"{HOST}:{port}", "floor_app:app"]


def _uvicorn(port: int) -> list[str]:
    return [sys.executable, "-m", "uvicorn", "floor_app:app", "--host", HOST, "--port", str(port), "--log-level", "warning", "--no-access-log"]


#: name -> (argv for a port, what it is)
FLOORS: dict[str, tuple[Callable[[int], list[str]], str]] = {
    "hypercorn-trio": (_hypercorn_trio, "hypercorn --worker-class trio --workers 1 floor_app:app"),
    "uvicorn": (_uvicorn, "uvicorn floor_app:app, 1 process, loop/http 'auto' (uvloop + httptools), --no-access-log"),
}


def floor(env: Env, name: str, params: Params) -> dict[str, Any]:
    """wrk saturating the floor app on server ``name``: 2xx requests/s, latency, errors, CPU."""
    make_argv, what = FLOORS[name]
    port = free_port()
    with spawn(f"floor-{name}", make_argv(port), log_dir=env.workdir, port=port, env=env.child_env(), cwd=BENCH_DIR) as proc:
        meter = CpuMeter(proc.pid)
        meter.start()
        result = wrk(f"{proc.url}/jobs", body=BODY, connections=params.connections, duration=params.duration)
        cpu = meter.stop()
        proc.ensure_alive()
    return {
        "server": what,
        "requests_per_s": round(result.ok_per_s, 1),
        **_latency(result),
        "non_2xx": result.non_2xx,
        "socket_errors": sum(result.socket_errors.values()),
        "cpu_percent": round(cpu, 1),
        "wrk": result.summary(),
    }


# -- targets ---------------------------------------------------------------------------------


def _counter(target: Target, procs: list[Proc]) -> Callable[[], int]:
    """``target.finished``, raising first if one of ``procs`` has died."""

    def count() -> int:
        for proc in procs:
            proc.ensure_alive()
        return target.finished()

    return count


def _wait_finished(target: Target, procs: list[Proc], k: int, since: float, params: Params, start_count: int = 0) -> dict[str, Any]:
    counter = _counter(target, procs)
    return time_to_count(counter, k, since=since, start_count=start_count, timeout=params.finish_timeout, what=f"{target.name}: jobs finished", interval=POLL)


def submission_and_end_to_end(target: Target, params: Params) -> dict[str, Any]:
    """One wrk run against ``POST /jobs``; see the module docstring for what is measured."""
    target.reset()
    with target.serve() as running:
        meters = {proc.name: CpuMeter(proc.pid) for proc in running.procs}
        for meter in meters.values():
            meter.start()
        t0 = time.monotonic()
        result = wrk(f"{running.url}/jobs", body=BODY, connections=params.connections, duration=params.duration)
        t_stop = time.monotonic()
        cpu = {name: round(meter.stop(), 1) for name, meter in meters.items()}
        done_at_stop = target.finished()
        submission = {
            "accepted_per_s": round(result.ok_per_s, 1),
            **_latency(result),
            "non_2xx": result.non_2xx,
            "socket_errors": sum(result.socket_errors.values()),
            "cpu_percent": cpu,
            "wrk": result.summary(),
        }
        try:
            timing = _wait_finished(target, running.procs, result.ok, t_stop, params, start_count=done_at_stop)
            t_all = t_stop + float(timing["seconds"])
            # Requests in flight when wrk stopped may have been accepted too: wait for those.
            if target.unfinished() > 0:
                t_all = wait_until(lambda: target.unfinished() == 0, timeout=params.finish_timeout, interval=POLL, what=f"{target.name}: every accepted job finished")
        except TimeoutError as exc:
            return {"submission": submission, "end_to_end": {"error": str(exc), "finished": target.finished(), "unfinished": target.unfinished()}}
        accepted = target.finished()
        store_stats = target.store_stats() if isinstance(target, JobsvcTarget) else None
    end_to_end = {
        "accepted": accepted,
        "wrk_2xx": result.ok,
        "finished_in_window": done_at_stop,
        "share_in_window": round(done_at_stop / accepted, 3) if accepted else None,
        "seconds_after_load": round(t_all - t_stop, 2),
        "seconds_total": round(t_all - t0, 2),
        "jobs_per_s": round(accepted / (t_all - t0), 1),
        "longest_count_ms": round(timing["longest_call_ms"], 1),
    }
    if store_stats and accepted:
        # jobsvc's writer: operations (inserts, claims, outcomes...) and commits per job, over
        # the whole run (start-up and the /stats polls' nothing included)
        end_to_end["store_operations_per_job"] = round(store_stats.get("operations", 0) / accepted, 2)
        end_to_end["store_commits_per_job"] = round(store_stats.get("commits", 0) / accepted, 3)
    return {"submission": submission, "end_to_end": end_to_end}


def drain(target: Target, params: Params) -> dict[str, Any]:
    """N jobs enqueued with no worker running, then the workers start; time until all finished."""
    n = params.drain_jobs
    target.reset()
    t_fill = time.monotonic()
    target.prefill(n)
    fill_s = time.monotonic() - t_fill
    t0 = time.monotonic()
    with target.workers() as procs:
        timing = _wait_finished(target, procs, n, t0, params)
    seconds, first_s, first_n = timing["seconds"], timing["first_nonzero_s"], timing["first_nonzero_count"]
    after_first = (n - first_n) / (seconds - first_s) if first_n < n and seconds > first_s else None
    return {
        "jobs": n,
        "prefill_s": round(fill_s, 2),
        "seconds": round(seconds, 2),
        "jobs_per_s": round(n / seconds, 1),
        "first_seen_after_s": round(first_s, 2),
        "first_seen_count": first_n,
        "jobs_per_s_after_first": round(after_first, 1) if after_first else None,
        "longest_count_ms": round(timing["longest_call_ms"], 1),
    }


def run_target(target: Target, params: Params) -> dict[str, Any]:
    """Every scenario on one target; a failure is recorded with its message, never raised."""
    entry: dict[str, Any] = {}
    try:
        with target:
            entry["settings"] = target.settings()
            entry.update(submission_and_end_to_end(target, params))
            _progress(f"{target.name}: submission {entry['submission']['accepted_per_s']:,.0f}/s")
            entry["drain"] = drain(target, params)
            _progress(f"{target.name}: drain {entry['drain']['jobs_per_s']:,.0f}/s")
    except Exception as exc:  # noqa: BLE001 - reported, and the next target still runs
        entry["error"] = f"{type(exc).__name__}: {exc}"
        _progress(f"{target.name}: FAILED {entry['error']}")
    return entry


# -- report ----------------------------------------------------------------------------------

JOBSVC = ("jobsvc-sqlite", "jobsvc-postgres", "jobsvc-sqlite-w8", "jobsvc-sqlite-w32")
PEERS = ("dramatiq", "arq", "procrastinate")


def _cpu(per_process: dict[str, float] | None) -> str:
    return ", ".join(f"{name} {cpu:.0f}" for name, cpu in (per_process or {}).items()) or "-"


FLOOR_COLUMNS = [
    col("2xx req/s", "requests_per_s"),
    col("p50 ms", "p50_ms"),
    col("p90 ms", "p90_ms"),
    col("p99 ms", "p99_ms"),
    col("non-2xx", "non_2xx"),
    col("socket errors", "socket_errors"),
    col("server CPU %", "cpu_percent"),
]
SUBMISSION_COLUMNS = [
    col("accepted jobs/s", "submission", "accepted_per_s"),
    col("p50 ms", "submission", "p50_ms"),
    col("p90 ms", "submission", "p90_ms"),
    col("p99 ms", "submission", "p99_ms"),
    col("non-2xx", "submission", "non_2xx"),
    col("socket errors", "submission", "socket_errors"),
    col("CPU % of one core, per process", "submission", "cpu_percent", show=_cpu),
]
END_TO_END_COLUMNS = [
    col("accepted", "end_to_end", "accepted"),
    col("finished within the load", "end_to_end", "finished_in_window"),
    col("share", "end_to_end", "share_in_window", show=percent),
    col("s after the load until all finished", "end_to_end", "seconds_after_load"),
    col("end-to-end jobs/s", "end_to_end", "jobs_per_s"),
]
DRAIN_COLUMNS = [
    col("s from worker start until all finished", "drain", "seconds"),
    col("jobs/s", "drain", "jobs_per_s"),
    col("first completion seen at s", "drain", "first_seen_after_s"),
    col("jobs/s after it", "drain", "jobs_per_s_after_first"),
]
#: What the ratio table compares: column header -> path to a jobs/s figure.
RATIOS = {"submission": ("submission", "accepted_per_s"), "end to end": ("end_to_end", "jobs_per_s"), "drain": ("drain", "jobs_per_s")}


def _ratio_rows(floors: dict[str, Any], targets: dict[str, Any]) -> list[tuple[Any, ...]]:
    rows: list[tuple[Any, ...]] = []
    for j in (n for n in JOBSVC if n in targets):
        for peer in (n for n in PEERS if n in targets):
            rows.append((f"{j} / {peer}", *(times(ratio(get(targets[j], *path), get(targets[peer], *path))) for path in RATIOS.values())))
        for name, entry in floors.items():
            share = ratio(get(targets[j], *RATIOS["submission"]), entry.get("requests_per_s"))
            rows.append((f"{j} / {name} floor", times(share), "", ""))
    return rows


def _failures(floors: dict[str, Any], targets: dict[str, Any]) -> list[str]:
    errors = [(n, e["error"]) for n, e in {**floors, **targets}.items() if "error" in e]
    errors += [(n, e["end_to_end"]["error"]) for n, e in targets.items() if get(e, "end_to_end", "error")]
    return ["", "### Failures", ""] + [f"- {n}: {one_line(e)}" for n, e in errors] if errors else []


def render(results: dict[str, Any]) -> str:
    """The markdown section: machine, one table per scenario, ratios, settings, failures."""
    params, floors, targets = results["params"], results["floors"], results["targets"]
    quick = " (QUICK run: tiny counts and durations, noisy; do not quote)" if results["quick"] else ""
    out = [f"## jobsvc vs peers{quick}", "", *machine_section(results["machine"]), "", SHARED_CORES_NOTE, ""]
    out.append(
        f"wrk: {params['connections']} connections, 2 threads, {params['duration']:g} s per run, body `{BODY}`. "
        f"Drain: {params['drain_jobs']:,} jobs. Completions are polled every {POLL * 1000:.0f} ms, or every 10x the counting call's "
        "duration when that is longer (jobsvc's GET /stats under load); the moment a count was reached is interpolated between polls."
    )
    out += section("### Floors: the HTTP server alone (parse the JSON body, answer 202)", "server", floors, FLOOR_COLUMNS)
    out += section("### Submission: wrk saturating POST /jobs", "target", targets, SUBMISSION_COLUMNS)
    out += section("### End to end: the same run, until every accepted job finished", "target", targets, END_TO_END_COLUMNS)
    writer = [
        f"- {name}: {e2e['store_operations_per_job']} store operations and {e2e['store_commits_per_job']} commits per job"
        for name, entry in targets.items()
        if (e2e := entry.get("end_to_end") or {}).get("store_operations_per_job") is not None
    ]
    if writer:
        out += ["", "jobsvc's writer over the same run (`GET /stats` `store_stats`: inserts, claims, outcomes, heartbeats; one operation may carry many jobs):", "", *writer]
    out += section(f"### Drain: {params['drain_jobs']:,} jobs waiting, then the workers start (start-up included)", "target", targets, DRAIN_COLUMNS)
    out += ["", "### jobsvc / peer, jobs/s (above 1.00x: jobsvc is faster)", ""]
    out += table(["ratio", *RATIOS], _ratio_rows(floors, targets))
    out += ["", "### Settings", ""]
    out += [f"- {name}, {key}: {value}" for name, entry in targets.items() for key, value in (entry.get("settings") or {}).items()]
    out += _failures(floors, targets)
    return "\n".join(out) + "\n"


# -- entry point -----------------------------------------------------------------------------


def _targets(env: Env, params: Params) -> dict[str, Callable[[], Target]]:
    return {
        "jobsvc-sqlite": lambda: JobsvcTarget(env, "sqlite"),
        "jobsvc-postgres": lambda: JobsvcTarget(env, "postgres"),
        "jobsvc-sqlite-w8": lambda: JobsvcTarget(env, "sqlite", workers=8),
        "jobsvc-sqlite-w32": lambda: JobsvcTarget(env, "sqlite", workers=32),
        "dramatiq": lambda: DramatiqTarget(env),
        "arq": lambda: ArqTarget(env, poll_delay=params.arq_poll_delay),
        "procrastinate": lambda: ProcrastinateTarget(env, concurrency=params.procrastinate_concurrency),
    }


def _on_sigterm(signum: int, frame: object) -> NoReturn:
    raise KeyboardInterrupt  # unwinds every with-block: processes stopped, databases dropped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny counts and durations (a smoke run, about a minute)")
    parser.add_argument("--json", type=Path, help="write the raw numbers here")
    parser.add_argument("--md", type=Path, help="write the markdown section here")
    parser.add_argument("--only", help="comma-separated floors/targets to run (default: all)")
    parser.add_argument("--duration", type=float, help="seconds of load per wrk run")
    parser.add_argument("--drain-jobs", type=int, help="jobs in the drain scenario")
    parser.add_argument("--procrastinate-concurrency", type=int, help="procrastinate worker --concurrency (default 1, its own default)")
    parser.add_argument("--arq-poll-delay", type=float, help="arq worker poll_delay in seconds (default: arq's 0.5)")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/11", help="an otherwise empty Redis database")
    parser.add_argument("--pg-url", default="postgresql://root@127.0.0.1:5432/postgres", help="PostgreSQL database to create throwaway databases from")
    args = parser.parse_args(argv)
    params = QUICK if args.quick else FULL
    overrides = {"duration": args.duration, "drain_jobs": args.drain_jobs, "procrastinate_concurrency": args.procrastinate_concurrency, "arq_poll_delay": args.arq_poll_delay}
    params = Params(**{**asdict(params), **{k: v for k, v in overrides.items() if v is not None}})
    signal.signal(signal.SIGTERM, _on_sigterm)
    with tempfile.TemporaryDirectory(prefix="jobsvc-bench-") as tmp:
        env = Env(Path(tmp), redis_url=args.redis_url, pg_admin_url=args.pg_url)
        env.export()
        makers = _targets(env, params)
        only = set(args.only.split(",")) if args.only else set(FLOORS) | set(makers) - {"jobsvc-sqlite-w8", "jobsvc-sqlite-w32"}
        unknown = only - set(FLOORS) - set(makers)
        if unknown:
            parser.error(f"unknown names {sorted(unknown)}; choose from {sorted(FLOORS) + sorted(makers)}")
        results: dict[str, Any] = {
            "quick": args.quick,
            "machine": machine(redis_url=args.redis_url, pg_url=args.pg_url),
            "params": asdict(params),
            "floors": {},
            "targets": {},
        }
        for name in (n for n in FLOORS if n in only):
            try:
                results["floors"][name] = floor(env, name, params)
                _progress(f"floor {name}: {results['floors'][name]['requests_per_s']:,.0f} req/s")
            except Exception as exc:  # noqa: BLE001 - reported, and the rest still runs
                results["floors"][name] = {"error": f"{type(exc).__name__}: {exc}"}
                _progress(f"floor {name}: FAILED {exc}")
        for name, make in makers.items():
            if name in only:
                results["targets"][name] = run_target(make(), params)
        results["machine"]["speed probe at end (ms)"] = speed_probe()
    markdown = render(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    if args.md:
        args.md.write_text(markdown)
    print(markdown)
    failed = [n for n, e in {**results["floors"], **results["targets"]}.items() if "error" in e]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
