"""jobsvc-only scenarios behind the engine targets, black-box, on SQLite and PostgreSQL.

    python bench/engine.py [--quick] [--json FILE] [--md FILE] [--stores sqlite,postgres]
                           [--only latency,backlog,idle-counts]

Every scenario runs ``python -m jobsvc serve`` (8 workers) on a fresh database and is
parameterised by counts (:class:`Params`; ``--quick`` runs them small):

* *latency at half capacity* (:func:`latency_at_half`): wrk saturates ``POST /jobs`` (noop) for
  ``saturation_s`` seconds to find the accepted jobs/s R; once those jobs are done, an
  open-loop client (raw trio sockets, in this process) sends ``stamp`` jobs at R/2 for ``paced_s``
  seconds, each carrying its send time; ``stamp`` (``benchtasks.py``) returns ``time.time()``
  at handler start, so latency = handler start - client send, p50/p99/max in ms. The same
  client also times each answer (send to the last byte of the 202), and then paces the
  hypercorn trio floor (``floor_app``: parse the body, answer 202; no store) at the same
  rate: the answer times the bare server gets from this machine at that rate, the reference
  for jobsvc's. Both servers' CPU (% of one core) over the paced run is reported too: requests
  that come one at a time cost a server more CPU each than wrk's 50 connections do (no
  group commit to share, one scheduler round per request), so half of wrk's rate is not
  half of a core. And the server's ``insert`` histogram (``GET /metrics``) read before and
  after the paced run gives how many submissions' durable inserts took over 10 and 25 ms:
  a submission is answered, and its job claimed, only once its insert committed, so a
  commit that stalls on the disk's fsync delays every submission that arrives meanwhile.
  After a latency run, :mod:`fsync_probe` times ``fsync_probe_s`` seconds of durable
  one-row commits in the same work directory without jobsvc (the machine section lists it):
  what the disk does to those commits on its own.
* *big backlog drain* (:func:`backlog_drain`): ``backlog_big`` vs ``backlog_small`` due noop
  jobs stored while no server runs; the server starts; seconds from its port answering until
  the first ``first_k`` jobs finished, jobs/s, and the ratio big/small.
* *idle CPU* and *counts cost* (:func:`scheduled`): ``rows_small`` vs ``rows_big`` noop jobs
  scheduled an hour ahead (nothing due), stored while no server runs and settled
  (:meth:`JobsvcTarget.settle`: PostgreSQL vacuumed, analyzed and checkpointed, SQLite's WAL
  checkpointed), the server started with ``--max-pending 10``; its
  CPU % of one core over ``idle_window_s`` seconds, then the mean time of ``requests``
  sequential ``GET /ready``, ``GET /metrics`` and ``POST /jobs`` (answered 429) over one
  keep-alive connection, and the ratio big/small.

Finished jobs are counted from ``GET /stats``, polled every 50 ms or every 10x that call's own
duration when it is slower (it counts rows); the time a count was crossed is interpolated
between two polls (:func:`load.time_to_count`), and the report gives the longest ``/stats`` call.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, NoReturn

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fsync_probe  # noqa: E402
import httpx  # noqa: E402
import trio  # noqa: E402
from load import CpuMeter, Proc, cpu_percent, free_port, spawn, time_to_count, wait_until, wrk  # noqa: E402
from peers import FLOORS  # noqa: E402
from report import (  # noqa: E402
    SHARED_CORES_NOTE,
    col,
    machine,
    machine_section,
    one_line,
    ratio,
    section,
    speed_probe,
    table,
    times,
)
from targets import BENCH_DIR, Env, JobsvcTarget  # noqa: E402

__all__ = ["Params", "backlog_drain", "latency_at_half", "main", "render", "scheduled"]

POLL = 0.05
#: A paced client that fell further behind its schedule than this did not keep the pace.
LAG_WARNING_MS = 50
STAMP_FLAGS = ("--tasks", "benchtasks")
#: The paced client does not reuse a connection idle this long: jobsvc (hypercorn) closes
#: keep-alive connections idle for 5 s, and a request sent as it does so is lost.
MAX_IDLE_S = 2.0


@dataclass(frozen=True)
class Params:
    """Counts and durations of one run."""

    connections: int = 50
    saturation_s: float = 20.0  #: wrk run that finds the saturating rate
    paced_s: float = 20.0  #: open-loop run at half that rate
    backlog_small: int = 20_000
    backlog_big: int = 1_000_000
    first_k: int = 20_000
    rows_small: int = 1_000
    rows_big: int = 1_000_000
    idle_window_s: float = 10.0
    idle_settle_s: float = 2.0  #: wait after start-up before the CPU window opens
    requests: int = 200  #: per endpoint, in the counts-cost scenario
    finish_timeout: float = 600.0
    fsync_probe_s: float = 10.0  #: bench/fsync_probe.py at 400 commits/s, after a latency run


FULL = Params()
QUICK = Params(
    saturation_s=2.0, paced_s=3.0, backlog_small=2_000, backlog_big=20_000, first_k=2_000,
    rows_small=1_000, rows_big=20_000, idle_window_s=2.0, idle_settle_s=0.5, requests=20, finish_timeout=60.0,
    fsync_probe_s=2.0,
)


def _progress(message: str) -> None:
    print(f"[engine {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile ``q`` (0..100) of ``values``."""
    ordered = sorted(values)
    rank = min(len(ordered), max(1, math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


def _all_done(target: JobsvcTarget, timeout: float) -> float:
    return wait_until(lambda: target.unfinished() == 0, timeout=timeout, interval=POLL, what=f"{target.name}: every job finished")


# -- latency at half capacity ----------------------------------------------------------------


class _Connection:
    """One keep-alive HTTP/1.1 connection of the paced client: a raw trio socket stream with
    just enough parsing for jobsvc's answers (a status line, Content-Length, a body). httpx
    needs about a millisecond of CPU per request on this machine, and the client shares
    the server's two cores: at a few hundred requests per second it fell seconds behind
    its own schedule, so the measured latency was the client's, not the server's."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = b""
        self.idle_since = trio.current_time()
        self.closing = False  #: the server said ``Connection: close`` (hypercorn: after 1,000 requests)

    async def _read_until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                raise ConnectionError("the server closed the connection")
            self.buffer += chunk
        head, _, self.buffer = self.buffer.partition(marker)
        return head

    async def post(self, request: bytes) -> str:
        """Send one request; return the answer's status code."""
        await self.stream.send_all(request)
        head = await self._read_until(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
        length = int(headers.get("content-length", 0))
        self.closing = headers.get("connection", "").lower() == "close"
        while len(self.buffer) < length:
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                raise ConnectionError("the server closed the connection")
            self.buffer += chunk
        self.buffer = self.buffer[length:]
        return status_line.split(" ", 2)[1]


def _stamp_request(port: int, sent: float) -> bytes:
    body = json.dumps({"task": "stamp", "payload": {"sent": sent}}).encode()
    head = f"POST /jobs HTTP/1.1\r\nHost: localhost:{port}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


async def _paced(url: str, *, rate: float, seconds: float) -> dict[str, Any]:
    """Open loop: job i is sent at t0 + i / rate whatever the earlier ones are doing, on an
    idle keep-alive connection (a new one when all are busy)."""
    port = int(url.rsplit(":", 1)[1])
    n = max(1, int(rate * seconds))
    statuses: Counter[str] = Counter()
    lags: list[float] = []
    answers: list[float] = []  #: seconds from send to the whole answer, of the 2xx ones
    idle: list[_Connection] = []

    async def connection() -> _Connection:
        while idle:
            conn = idle.pop()
            if trio.current_time() - conn.idle_since < MAX_IDLE_S:
                return conn
            await conn.stream.aclose()  # the server may be closing it right now
        return _Connection(await trio.open_tcp_stream("127.0.0.1", port))

    async def send(due: float) -> None:
        conn = await connection()
        lags.append(trio.current_time() - due)  # how late the request leaves
        try:
            sent = trio.current_time()
            status = await conn.post(_stamp_request(port, time.time()))
            statuses[status] += 1
            if status.startswith("2"):
                answers.append(trio.current_time() - sent)
        except (OSError, ConnectionError, trio.BrokenResourceError) as exc:
            statuses[type(exc).__name__] += 1
            await conn.stream.aclose()
        else:
            if conn.closing:
                await conn.stream.aclose()
                return
            conn.idle_since = trio.current_time()
            idle.append(conn)

    t0 = trio.current_time() + 0.05
    try:
        async with trio.open_nursery() as nursery:
            for i in range(n):
                due = t0 + i / rate
                await trio.sleep_until(due)
                nursery.start_soon(send, due)
    finally:
        for conn in idle:
            await conn.stream.aclose()
    ms = [a * 1000 for a in answers] or [math.nan]
    return {
        "sent": n,
        "statuses": dict(statuses),
        "max_send_lag_ms": round(max(lags) * 1000, 1),
        "connections": len(idle),
        "answer_p50_ms": round(_percentile(ms, 50), 2),
        "answer_p99_ms": round(_percentile(ms, 99), 2),
    }


def _paced_server(proc: Proc, *, rate: float, seconds: float) -> dict[str, Any]:
    """:func:`_paced` against ``proc``, with the server's CPU (% of one core) meanwhile."""
    meter = CpuMeter(proc.pid)
    meter.start()
    paced = trio.run(partial(_paced, proc.url, rate=rate, seconds=seconds))
    return {**paced, "cpu_percent": round(meter.stop(), 1)}


def _paced_floor(env: Env, *, rate: float, seconds: float) -> dict[str, Any]:
    """The same open-loop client against the hypercorn trio floor (``floor_app``)."""
    port = free_port()
    make_argv, _ = FLOORS["hypercorn-trio"]
    with spawn("floor-hypercorn-trio-paced", make_argv(port), log_dir=env.workdir, port=port, env=env.child_env(), cwd=BENCH_DIR) as proc:
        return _paced_server(proc, rate=rate, seconds=seconds)


def _insert_histogram(url: str) -> dict[float, float]:
    """The server's ``insert`` durations from ``GET /metrics``: bucket upper bound (s) ->
    cumulative count. A submission answers after its insert commits, so the inserts that
    took long are the store's share of the latency tail."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", timeout=30).raise_for_status().text
    out: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "jobsvc_store_operation_duration_seconds":
            for sample in family.samples:
                if sample.name.endswith("_bucket") and sample.labels.get("operation") == "insert":
                    out[float(sample.labels["le"])] = sample.value
    return out


def _slow_inserts(before: dict[float, float], after: dict[float, float]) -> dict[str, int]:
    """Inserts between two readings, and how many of them took over 10 and over 25 ms."""

    def over(le: float) -> int:
        return int((after[math.inf] - after[le]) - (before.get(math.inf, 0) - before.get(le, 0)))

    return {"inserts": int(after[math.inf] - before.get(math.inf, 0)), "inserts_over_10ms": over(0.01), "inserts_over_25ms": over(0.025)}


def _stamp_latencies_ms(url: str) -> list[float]:
    """handler start - client send of every succeeded ``stamp`` job, in ms (keyset pages)."""
    out: list[float] = []
    with httpx.Client(base_url=url, timeout=60) as client:
        path: str | None = "/jobs?task=stamp&state=succeeded&limit=1000"
        while path:
            body = client.get(path).raise_for_status().json()
            out.extend((job["result"] - job["payload"]["sent"]) * 1000 for job in body["jobs"])
            path = body["next"]
    return out


def latency_at_half(target: JobsvcTarget, params: Params) -> dict[str, Any]:
    """Saturating rate first, then stamp jobs at half of it; submission-to-handler-start latency."""
    target.reset()
    with target.server(*STAMP_FLAGS) as proc:
        saturated = wrk(f"{proc.url}/jobs", body='{"task": "noop"}', connections=params.connections, duration=params.saturation_s)
        _all_done(target, params.finish_timeout)
        rate = saturated.ok_per_s / 2
        if rate <= 0:
            raise RuntimeError(f"{target.name}: no job accepted while saturating: {saturated.raw}")
        inserts_before = _insert_histogram(proc.url)
        paced = _paced_server(proc, rate=rate, seconds=params.paced_s)
        slow_inserts = _slow_inserts(inserts_before, _insert_histogram(proc.url))
        _all_done(target, params.finish_timeout)
        latencies = _stamp_latencies_ms(proc.url)
    if not latencies:
        raise RuntimeError(f"{target.name}: no stamp job succeeded ({paced['statuses']})")
    floor = _paced_floor(target.env, rate=rate, seconds=params.paced_s)
    return {
        "saturating_accepted_per_s": round(saturated.ok_per_s, 1),
        "saturating_p99_ms": saturated.latency_ms.get("p99"),
        "paced_rate_per_s": round(rate, 1),
        **paced,
        **slow_inserts,
        "measured": len(latencies),
        "p50_ms": round(_percentile(latencies, 50), 2),
        "p99_ms": round(_percentile(latencies, 99), 2),
        "max_ms": round(max(latencies), 2),
        "floor_answer_p50_ms": floor["answer_p50_ms"],
        "floor_answer_p99_ms": floor["answer_p99_ms"],
        "floor_statuses": floor["statuses"],
        "floor_max_send_lag_ms": floor["max_send_lag_ms"],
        "floor_cpu_percent": floor["cpu_percent"],
    }


# -- big backlog drain -----------------------------------------------------------------------


def _drain_first_k(target: JobsvcTarget, backlog: int, params: Params) -> dict[str, Any]:
    k = min(params.first_k, backlog)
    target.reset()
    t_fill = time.monotonic()
    target.prefill(backlog)
    fill_s = time.monotonic() - t_fill
    t_spawn = time.monotonic()
    with target.server():
        t_ready = time.monotonic()
        timing = time_to_count(target.finished, k, since=t_ready, timeout=params.finish_timeout, what=f"{target.name}: jobs finished")
    return {
        "backlog": backlog,
        "k": k,
        "prefill_s": round(fill_s, 1),
        "listen_s": round(t_ready - t_spawn, 2),
        "seconds": round(timing["seconds"], 2),
        "jobs_per_s": round(k / timing["seconds"], 1),
        "longest_stats_ms": round(timing["longest_call_ms"] or 0.0, 1),
    }


def backlog_drain(target: JobsvcTarget, params: Params) -> dict[str, Any]:
    """The first K jobs with a small and with a big backlog of due jobs: jobs/s, ratio big/small."""
    small = _drain_first_k(target, params.backlog_small, params)
    big = _drain_first_k(target, params.backlog_big, params)
    return {"small": small, "big": big, "ratio_big_small": ratio(big["jobs_per_s"], small["jobs_per_s"])}


# -- idle CPU and counts cost ----------------------------------------------------------------


def _timed(client: httpx.Client, method: str, path: str, n: int, **kwargs: Any) -> dict[str, Any]:
    """``n`` sequential requests after 3 warm-up ones: mean/p50/max ms and the statuses seen."""
    statuses: Counter[int] = Counter()
    times: list[float] = []
    for i in range(n + 3):
        t0 = time.perf_counter()
        response = client.request(method, path, **kwargs)
        elapsed = time.perf_counter() - t0
        if i >= 3:
            times.append(elapsed * 1000)
            statuses[response.status_code] += 1
    return {"mean_ms": round(statistics.fmean(times), 2), "p50_ms": round(_percentile(times, 50), 2), "max_ms": round(max(times), 2), "statuses": dict(statuses)}


def _admitted_before_429(client: httpx.Client, limit: int = 100) -> int:
    """Submissions accepted before the first 429 (with more than --max-pending jobs pending,
    ideally none)."""
    for i in range(limit):
        if client.post("/jobs", json={"task": "noop"}).status_code == 429:
            return i
    raise RuntimeError(f"no 429 after {limit} submissions with --max-pending 10")


def _scheduled_one(target: JobsvcTarget, rows: int, params: Params) -> dict[str, Any]:
    target.reset()
    target.prefill(rows, delay=3600.0)
    target.settle()
    t_spawn = time.monotonic()
    with target.server(max_pending=10) as proc:
        listen_s = time.monotonic() - t_spawn
        time.sleep(params.idle_settle_s)
        idle = cpu_percent(proc.pid, params.idle_window_s)
        with httpx.Client(base_url=proc.url, timeout=60) as client:
            admitted = _admitted_before_429(client)
            costs = {
                "ready": _timed(client, "GET", "/ready", params.requests),
                "metrics": _timed(client, "GET", "/metrics", params.requests),
                "post_429": _timed(client, "POST", "/jobs", params.requests, json={"task": "noop"}),
            }
    return {"rows": rows, "listen_s": round(listen_s, 2), "idle_cpu_percent": round(idle, 1), "admitted_before_429": admitted, **costs}


def scheduled(target: JobsvcTarget, params: Params) -> dict[str, Any]:
    """Small and big stores of jobs due in an hour: idle CPU, then the cost of the count reads."""
    small = _scheduled_one(target, params.rows_small, params)
    big = _scheduled_one(target, params.rows_big, params)
    ratios = {key: ratio(big[key]["mean_ms"], small[key]["mean_ms"]) for key in ("ready", "metrics", "post_429")}
    return {"small": small, "big": big, "ratio_big_small": ratios}


SCENARIOS: dict[str, Callable[[JobsvcTarget, Params], dict[str, Any]]] = {
    "latency": latency_at_half,
    "backlog": backlog_drain,
    "idle-counts": scheduled,
}


# -- report ----------------------------------------------------------------------------------


LATENCY_COLUMNS = [
    col("saturating jobs/s", "saturating_accepted_per_s"),
    col("paced jobs/s", "paced_rate_per_s"),
    col("jobs sent", "sent"),
    col("statuses", "statuses"),
    col("max client send lag ms", "max_send_lag_ms"),
    col("p50 ms", "p50_ms"),
    col("p99 ms", "p99_ms"),
    col("max ms", "max_ms"),
    ("answer p50 / p99 ms", lambda r: f"{r.get('answer_p50_ms', '')} / {r.get('answer_p99_ms', '')}"),
    col("CPU % while paced", "cpu_percent"),
    ("inserts over 10 / 25 ms", lambda r: f"{r.get('inserts_over_10ms', '')} / {r.get('inserts_over_25ms', '')} of {r.get('inserts', '')}"),
    ("hypercorn floor's answer p50 / p99 ms at the same pace", lambda r: f"{r.get('floor_answer_p50_ms', '')} / {r.get('floor_answer_p99_ms', '')}"),
    col("floor's CPU % while paced", "floor_cpu_percent"),
]
BACKLOG_COLUMNS = [
    col("backlog", "backlog"),
    col("listen s", "listen_s"),
    col("first K s, from listening", "seconds"),
    col("jobs/s", "jobs_per_s"),
    col("longest /stats ms", "longest_stats_ms"),
]
SCHEDULED_COLUMNS = [
    col("rows", "rows"),
    col("listen s", "listen_s"),
    col("idle CPU %", "idle_cpu_percent"),
    col("GET /ready ms", "ready", "mean_ms"),
    col("GET /metrics ms", "metrics", "mean_ms"),
    col("POST /jobs (429) ms", "post_429", "mean_ms"),
    col("POST statuses", "post_429", "statuses"),
    col("admitted before the first 429", "admitted_before_429"),
]


def _done(by_store: dict[str, Any], scenario: str) -> dict[str, Any]:
    """store -> the scenario's results, for the stores where it did not fail."""
    return {store: r[scenario] for store, r in by_store.items() if isinstance(r.get(scenario), dict) and "error" not in r[scenario]}


def _small_big(results: dict[str, Any]) -> dict[str, Any]:
    """One row per store and size: ``"sqlite 1,000"`` -> that run's numbers."""
    return {f"{store} {size}": r[size] for store, r in results.items() for size in ("small", "big")}


def render(results: dict[str, Any]) -> str:
    """The markdown section: machine, one table per scenario with its big/small ratios, failures."""
    p, by_store = results["params"], results["stores"]
    quick = " (QUICK run: tiny counts and durations, noisy; do not quote)" if results["quick"] else ""
    out = [f"## jobsvc engine scenarios{quick}", "", *machine_section(results["machine"]), "", SHARED_CORES_NOTE, ""]
    out.append(f"jobsvc: `{results['command']}`; the latency client is raw trio sockets (keep-alive connections) in the harness process.")
    out += section(
        f"### Latency at half capacity: wrk {p['connections']} connections for {p['saturation_s']:g} s, then {p['paced_s']:g} s open loop at half that rate",
        "store", _done(by_store, "latency"), LATENCY_COLUMNS,
    )
    lagging = [s for s, r in _done(by_store, "latency").items() if r["max_send_lag_ms"] > LAG_WARNING_MS]
    if lagging:
        out += ["", f"Warning ({', '.join(lagging)}): the client fell more than {LAG_WARNING_MS} ms behind its schedule (CPU starved): "
                "the pace was not kept, and those latencies include the client's own delays."]
    backlog = _done(by_store, "backlog")
    out += section(
        f"### Backlog drain: the first {p['first_k']:,} jobs with {p['backlog_small']:,} vs {p['backlog_big']:,} due",
        "store", _small_big(backlog), BACKLOG_COLUMNS,
    )
    out += ["", *table(["store", "jobs/s big/small"], [(s, times(r["ratio_big_small"])) for s, r in backlog.items()])]
    scheduled_runs = _done(by_store, "idle-counts")
    out += section(
        f"### Idle CPU ({p['idle_window_s']:g} s window) and counts cost ({p['requests']} sequential requests each): "
        "jobs scheduled an hour ahead, --max-pending 10",
        "store and rows", _small_big(scheduled_runs), SCHEDULED_COLUMNS,
    )
    ratios = [(s, *(times(r["ratio_big_small"][k]) for k in ("ready", "metrics", "post_429"))) for s, r in scheduled_runs.items()]
    out += ["", *table(["store", "/ready big/small", "/metrics big/small", "429 big/small"], ratios)]
    errors = [(f"{s} {name}", r["error"]) for s, rs in by_store.items() for name, r in rs.items() if isinstance(r, dict) and "error" in r]
    if errors:
        out += ["", "### Failures", ""] + [f"- {n}: {one_line(e)}" for n, e in errors]
    return "\n".join(out) + "\n"


# -- entry point -----------------------------------------------------------------------------


def _on_sigterm(signum: int, frame: object) -> NoReturn:
    raise KeyboardInterrupt  # unwinds every with-block: processes stopped, databases dropped


def run_store(env: Env, store: str, scenarios: list[str], params: Params) -> dict[str, Any]:
    """The chosen scenarios on one store; a failure is recorded with its message, never raised."""
    out: dict[str, Any] = {}
    try:
        with JobsvcTarget(env, store) as target:
            for name in scenarios:
                try:
                    out[name] = SCENARIOS[name](target, params)
                    _progress(f"{store} {name}: done")
                except Exception as exc:  # noqa: BLE001 - reported, and the next scenario still runs
                    out[name] = {"error": f"{type(exc).__name__}: {exc}"}
                    _progress(f"{store} {name}: FAILED {out[name]['error']}")
    except Exception as exc:  # noqa: BLE001 - the store itself could not be set up
        out["setup"] = {"error": f"{type(exc).__name__}: {exc}"}
        _progress(f"{store}: FAILED {out['setup']['error']}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny counts and durations (a smoke run, about a minute)")
    parser.add_argument("--json", type=Path, help="write the raw numbers here")
    parser.add_argument("--md", type=Path, help="write the markdown section here")
    parser.add_argument("--stores", default="sqlite,postgres", help="comma-separated: sqlite, postgres")
    parser.add_argument("--only", default=",".join(SCENARIOS), help=f"comma-separated scenarios: {', '.join(SCENARIOS)}")
    parser.add_argument("--pg-url", default="postgresql://root@127.0.0.1:5432/postgres", help="PostgreSQL database to create throwaway databases from")
    args = parser.parse_args(argv)
    params = QUICK if args.quick else FULL
    stores, scenarios = args.stores.split(","), args.only.split(",")
    if set(stores) - {"sqlite", "postgres"} or set(scenarios) - set(SCENARIOS):
        parser.error(f"stores are sqlite, postgres; scenarios are {', '.join(SCENARIOS)}")
    signal.signal(signal.SIGTERM, _on_sigterm)
    with tempfile.TemporaryDirectory(prefix="jobsvc-engine-") as tmp:
        env = Env(Path(tmp), pg_admin_url=args.pg_url)
        results: dict[str, Any] = {
            "quick": args.quick,
            "machine": machine(pg_url=args.pg_url if "postgres" in stores else None),
            "params": asdict(params),
            "command": JobsvcTarget(env, "sqlite").settings()["command"] + " [--tasks benchtasks] [--max-pending 10]",
            "stores": {store: run_store(env, store, scenarios, params) for store in stores},
        }
        results["machine"]["speed probe at end (ms)"] = speed_probe()
        if "latency" in scenarios:  # the disk's share of the latency tail: see bench/fsync_probe.py
            disk = fsync_probe.probe(Path(tmp) / "fsync-probe.db", 400, params.fsync_probe_s)
            results["machine"]["durable commits in the work directory at end (SQLite WAL, synchronous=FULL)"] = fsync_probe.summary(disk)
    markdown = render(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    if args.md:
        args.md.write_text(markdown)
    print(markdown)
    failed = any(isinstance(r, dict) and "error" in r for rs in results["stores"].values() for r in rs.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
