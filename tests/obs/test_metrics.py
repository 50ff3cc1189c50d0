"""Metrics: exact values after known outcomes (virtual time), HTTP route templates, the
store-wide gauges only on the reporter, store operations timed and their errors counted."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import trio
from helpers import Metrics
from hypothesis import given
from hypothesis import strategies as st

from jobsvc import models
from jobsvc.app import create_app
from jobsvc.clock import TrioClock
from jobsvc.errors import StoreUnavailable
from jobsvc.metrics import PrometheusObserver, Snapshot
from jobsvc.models import Job, JobState
from jobsvc.service import JobService, NullObserver
from jobsvc.service.instrumented import InstrumentedStore
from jobsvc.store import MemoryStore, Store

ServiceFactory = Callable[..., Any]


@asynccontextmanager
async def http(service: JobService) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(service), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
        yield client


async def scrape(client: httpx.AsyncClient) -> Metrics:
    r = await client.get("/metrics")
    assert r.status_code == 200, r.text
    return Metrics(r.text)


async def final(client: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    body: dict[str, Any] = (await client.get(f"/jobs/{job_id}", params={"wait": 60})).json()
    return body


async def submit(client: httpx.AsyncClient, body: dict[str, Any]) -> str:
    r = await client.post("/jobs", json=body)
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def orphan(clock: TrioClock) -> Job:
    """A job claimed 100 s ago by a process that is gone (left running in the store)."""
    then = clock.now() - 100
    job = Job(id="orphan", task="echo", payload=1, max_attempts=3, run_at=then, created_at=then, updated_at=then)
    return models.claim(job, owner="gone", now=then, lease=5)


async def test_exact_metric_values_after_known_outcomes(start_service: ServiceFactory, clock: TrioClock, autojump_clock: Any) -> None:
    """succeeded, retried then succeeded, dead (twice: redriven in between), cancelled while
    running (after exactly 2 s), released at shutdown, rescued at start: every counter,
    the attempt-duration and queue-wait histograms, and the scrape-time gauges."""
    store = MemoryStore()
    await store.insert([orphan(clock)])  # rescued by the recovery at start (the store is exclusive)
    service: JobService = await start_service(store=store)
    async with http(service) as client:
        assert (await final(client, "orphan"))["state"] == "succeeded"
        ok = await submit(client, {"task": "noop"})
        flaky = await submit(client, {"task": "flaky", "payload": {"fail_times": 1}})
        permanent = await submit(client, {"task": "permanent"})
        assert [(await final(client, j))["state"] for j in (ok, flaky, permanent)] == ["succeeded", "succeeded", "dead"]
        assert trio.current_time() == 1  # flaky's retry: after exactly 1 s (jitter at its ceiling)
        assert (await client.post(f"/jobs/{permanent}/retry")).status_code == 200
        assert (await final(client, permanent))["state"] == "dead"

        cancel_me = await submit(client, {"task": "nap", "payload": {"seconds": 60}})
        await trio.sleep(2)
        assert (await client.post(f"/jobs/{cancel_me}/cancel")).status_code == 202
        assert (await final(client, cancel_me))["state"] == "cancelled"

        release_me = await submit(client, {"task": "nap", "payload": {"seconds": 600}})
        await trio.sleep(1)
        busy = await scrape(client)
        service.begin_shutdown()
        await service.stopped.wait()
        assert trio.current_time() == 1 + 2 + 1 + 5  # released at the end of the 5 s grace
        assert (await client.get(f"/jobs/{release_me}")).json()["state"] == "pending"
        m = await scrape(client)  # the memory store outlives the service

    assert (busy.value("jobsvc_workers"), busy.value("jobsvc_workers_busy")) == (2, 1)
    assert (m.value("jobsvc_workers"), m.value("jobsvc_workers_busy"), m.value("jobsvc_store_reporter")) == (2, 0, 1)
    assert m.by("jobsvc_jobs_submitted_total", "task") == {"noop": 1, "flaky": 1, "permanent": 1, "nap": 2}
    assert m.by("jobsvc_attempts_started_total", "task") == {"echo": 1, "noop": 1, "flaky": 2, "permanent": 2, "nap": 2}
    outcomes = {(dict(k)["task"], dict(k)["outcome"]): v for k, v in m.series("jobsvc_job_outcomes_total").items()}
    assert outcomes == {
        ("echo", "rescued"): 1,
        ("echo", "succeeded"): 1,
        ("noop", "succeeded"): 1,
        ("flaky", "retried"): 1,
        ("flaky", "succeeded"): 1,
        ("permanent", "dead"): 2,
        ("permanent", "redriven"): 1,
        ("nap", "cancelled"): 1,
        ("nap", "released"): 1,
    }
    # handler run time of attempts that ran to an outcome: the released one did not
    assert m.by("jobsvc_attempt_duration_seconds_count", "task") == {"echo": 1, "noop": 1, "flaky": 2, "permanent": 2, "nap": 1}
    assert m.value("jobsvc_attempt_duration_seconds_sum", task="nap") == 2.0
    assert m.value("jobsvc_attempt_duration_seconds_sum", task="flaky") == 0.0
    assert m.value("jobsvc_attempt_duration_seconds_bucket", task="nap", le="1.0") == 0
    assert m.value("jobsvc_attempt_duration_seconds_bucket", task="nap", le="2.5") == 1
    # queue wait: the orphan was due 100 s before it started; the others started when due
    assert m.by("jobsvc_queue_wait_seconds_count", "task") == {"echo": 1, "noop": 1, "flaky": 2, "permanent": 2, "nap": 2}
    assert m.value("jobsvc_queue_wait_seconds_sum", task="echo") == pytest.approx(100)
    assert m.value("jobsvc_queue_wait_seconds_bucket", task="echo", le="60.0") == 0
    assert m.value("jobsvc_queue_wait_seconds_bucket", task="echo", le="120.0") == 1
    for task, n in {"noop": 1, "flaky": 2, "permanent": 2, "nap": 2}.items():
        assert m.value("jobsvc_queue_wait_seconds_bucket", task=task, le="0.005") == n, task
    # store-wide gauges (this instance is the reporter): jobs by state and task
    queue = {(dict(k)["task"], dict(k)["state"]): v for k, v in m.series("jobsvc_queue_jobs").items() if v}
    assert queue == {
        ("echo", "succeeded"): 1,
        ("noop", "succeeded"): 1,
        ("flaky", "succeeded"): 1,
        ("permanent", "dead"): 1,
        ("nap", "cancelled"): 1,
        ("nap", "pending"): 1,
    }
    assert len(m.series("jobsvc_queue_jobs")) == 5 * len(JobState)  # zeros included, per task
    # the released job has been due since it was submitted (t=3); it is t=9 now
    assert m.value("jobsvc_queue_oldest_due_age_seconds") == pytest.approx(6.0)
    assert m.by("jobsvc_build_info", "version") == {__import__("jobsvc").__version__: 1}
    assert m.value("process_virtual_memory_bytes") is not None
    assert any(name == "python_info" for name, _ in m.samples)
    assert "_created" not in m.text


async def test_http_metrics_use_route_templates(service: JobService) -> None:
    """Requests are counted under their route template, never the raw path; unknown paths
    are "unmatched"; a method nobody uses is "other" (labels stay bounded)."""
    async with http(service) as client:
        assert (await client.get("/jobs/abc")).status_code == 404
        assert (await client.get("/jobs/def")).status_code == 404
        assert (await client.post("/jobs/abc")).status_code == 405
        assert (await client.get("/no/such/path/123")).status_code == 404
        assert (await client.request("BREW", "/jobs")).status_code == 405
        await client.get("/health")
        m = await scrape(client)
    requests = {tuple(dict(k)[x] for x in ("method", "route", "status")): v for k, v in m.series("jobsvc_http_requests_total").items()}
    assert requests == {
        ("GET", "/jobs/{job_id}", "404"): 2,
        ("POST", "/jobs/{job_id}", "405"): 1,
        ("GET", "unmatched", "404"): 1,
        ("other", "/jobs", "405"): 1,
        ("GET", "/health", "200"): 1,
    }
    assert m.value("jobsvc_http_request_duration_seconds_count", method="GET", route="/jobs/{job_id}") == 2
    assert "abc" not in m.text and "/no/such" not in m.text


class NotReporter(MemoryStore):
    """A store whose instance is not the metrics reporter (as a second PostgreSQL instance)."""

    @property
    def is_reporter(self) -> bool:
        return False


async def test_only_the_reporter_exports_the_store_wide_gauges(start_service: ServiceFactory) -> None:
    """jobsvc_store_reporter is 0 and no jobsvc_queue_* sample is exported (so a sum over
    instances counts each job once); the per-instance metrics are all there."""
    service = await start_service(store=NotReporter())
    async with http(service) as client:
        job = await submit(client, {"task": "noop"})
        await final(client, job)
        m = await scrape(client)
    assert m.value("jobsvc_store_reporter") == 0
    assert m.series("jobsvc_queue_jobs") == {} and m.series("jobsvc_queue_oldest_due_age_seconds") == {}
    assert "# TYPE jobsvc_queue_jobs gauge" in m.text
    assert m.value("jobsvc_job_outcomes_total", task="noop", outcome="succeeded") == 1
    # the scrape did not read the store-wide figures (next_run_at is read for nothing else)
    assert m.value("jobsvc_store_operation_duration_seconds_count", operation="next_run_at") is None


async def test_the_metrics_spec_names_exactly_what_metrics_exports(service: JobService) -> None:
    """deploy/metrics-spec.md, which every Grafana panel and alert expression is checked
    against (tests/deploy), names the jobsvc_ families a real /metrics exports, no more and
    no fewer, with their types; and its process_*/python_* rows are exported too. So the
    dashboard and the alerts name only metrics that exist."""
    import re

    from deploy.deploy_support import spec_metrics

    async with http(service) as client:
        await final(client, await submit(client, {"task": "noop"}))
        text = (await scrape(client)).text
    exported = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE))
    spec, prefixes = spec_metrics()
    ours = {name: kind for name, kind in exported.items() if name.startswith("jobsvc_")}
    assert set(ours) == set(spec), f"exported, not in the spec: {sorted(set(ours) - set(spec))}; in the spec, not exported: {sorted(set(spec) - set(ours))}"
    assert {name: kind for name, kind in ours.items() if spec[name] != kind} == {}
    assert prefixes and all(any(name.startswith(prefix) for name in exported) for prefix in prefixes)


def test_snapshot_rendering_of_a_reporter() -> None:
    """The scrape-time gauges come from the snapshot: every state of every task, and the age."""
    text = PrometheusObserver().render(
        Snapshot(workers=4, busy=3, reporter=True, queue={"a": {JobState.PENDING: 7}}, oldest_due_age=2.5)
    ).decode()
    m = Metrics(text)
    assert m.by("jobsvc_queue_jobs", "state", task="a") == {s.value: (7 if s is JobState.PENDING else 0) for s in JobState}
    assert (m.value("jobsvc_queue_oldest_due_age_seconds"), m.value("jobsvc_workers"), m.value("jobsvc_workers_busy")) == (2.5, 4, 3)


def test_every_store_operation_is_wrapped() -> None:
    """InstrumentedStore overrides every public coroutine of Store, so a new store operation
    cannot go untimed by mistake."""
    public = {name for name, fn in vars(Store).items() if not name.startswith("_") and inspect.iscoroutinefunction(fn)}
    assert public, "Store has public coroutines"
    assert public <= set(vars(InstrumentedStore)), public - set(vars(InstrumentedStore))
    assert "is_reporter" in vars(InstrumentedStore)


class Recording(NullObserver):
    def __init__(self) -> None:
        self.calls: list[tuple[str, float, bool]] = []

    def store_operation(self, operation: str, seconds: float, *, unavailable: bool) -> None:
        self.calls.append((operation, seconds, unavailable))


class Slow(MemoryStore):
    """Every read takes 0.25 s; get() of "down" raises StoreUnavailable."""

    async def _read(self, fn: Any) -> Any:
        await trio.sleep(0.25)
        return await super()._read(fn)

    async def get(self, job_id: str) -> Job | None:
        if job_id == "down":
            await trio.sleep(0.5)
            raise StoreUnavailable("connection refused")
        return await super().get(job_id)


async def test_store_calls_are_timed_and_their_failures_counted(autojump_clock: Any) -> None:
    """Each call reports its operation, its duration on trio's clock and whether the store
    was unavailable; other errors are not store errors."""
    observer = Recording()
    store = InstrumentedStore(Slow(), observer)
    await store.counts()
    assert await store.get("nope") is None
    with pytest.raises(StoreUnavailable):
        await store.get("down")
    await store.list_jobs(limit=5)
    assert observer.calls == [("counts", 0.25, False), ("get", 0.25, False), ("get", 0.5, True), ("list", 0.25, False)]
    assert (store.kind, store.exclusive, store.is_reporter, store.statistics()) == ("memory", True, True, {})


async def test_store_metrics_by_operation(service: JobService, autojump_clock: Any) -> None:
    """The service's store calls show in jobsvc_store_operation_duration_seconds by operation."""
    async with http(service) as client:
        job = await submit(client, {"task": "noop"})
        await final(client, job)
        await client.get("/jobs")
        m = await scrape(client)
    ops = m.by("jobsvc_store_operation_duration_seconds_count", "operation")
    assert {"insert", "record", "get", "list", "counts", "next_run_at", "rescue"} <= set(ops), ops
    assert m.series("jobsvc_store_errors_total") == {}


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["a", "b"]),
            st.one_of(st.sampled_from([0.0, 0.005, 0.0050001, 1.0, 3600.0, 3600.5]), st.floats(0, 10_000, allow_nan=False)),
        ),
        max_size=30,
    )
)
def test_the_event_metrics_render_as_prometheus_client_would(observations: list[tuple[str, float]]) -> None:
    """jobsvc keeps its event counters and histograms as plain numbers (no lock per
    increment); their text is the text prometheus_client's Counter and Histogram give for the
    same observations: the same bucket for a value on a bound, the same cumulative counts,
    sums, names, labels and order."""
    from prometheus_client import (
        CollectorRegistry,
        Counter,
        Histogram,
        disable_created_metrics,
        generate_latest,
    )

    from jobsvc import metrics as m

    disable_created_metrics()  # type: ignore[no-untyped-call]  # as PrometheusObserver does (process-wide)
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    counter = m._Counter("x_events_total", "Events", ("task", "kind"))
    histogram = m._Histogram("x_seconds", "Seconds", ("task",), m.ATTEMPT_BUCKETS)
    ours.register(m._Collector([counter, histogram]))
    their_counter = Counter("x_events_total", "Events", ("task", "kind"), registry=theirs)
    their_histogram = Histogram("x_seconds", "Seconds", ("task",), buckets=m.ATTEMPT_BUCKETS, registry=theirs)
    for task, value in observations:
        counter.inc((task, "k"))
        histogram.observe((task,), value)
        their_counter.labels(task, "k").inc()
        their_histogram.labels(task).observe(value)
    assert generate_latest(ours).decode() == generate_latest(theirs).decode()
