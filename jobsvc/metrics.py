"""Prometheus metrics: an Observer for the service, and the ``GET /metrics`` text.

Each service gets its own CollectorRegistry (never the global one), so tests start fresh.
The names, labels and meanings are listed in ``docs/operations.md`` ("Metrics"):

* per instance, from the service's observer hooks: ``jobsvc_jobs_submitted_total``,
  ``jobsvc_attempts_started_total``, ``jobsvc_job_outcomes_total``,
  ``jobsvc_attempt_duration_seconds``, ``jobsvc_queue_wait_seconds``, the HTTP metrics
  (from :mod:`jobsvc.middleware`) and the store operation metrics (from
  :class:`~jobsvc.service.instrumented.InstrumentedStore`);
* per instance, read at scrape time: ``jobsvc_workers``, ``jobsvc_workers_busy``,
  ``jobsvc_handler_threads_abandoned``, ``jobsvc_handlers_stuck``, ``jobsvc_handler_processes``,
  ``jobsvc_store_reporter``, ``jobsvc_build_info``, ``process_*``, ``python_*``;
* store-wide, read at scrape time and exported **only by the reporter** (one instance per
  store, see ``Store.is_reporter``), so that ``sum()`` over instances counts each job once:
  ``jobsvc_queue_jobs``, ``jobsvc_queue_oldest_due_age_seconds``. They come from counts
  the store keeps up to date (no scan of the jobs).
"""

from __future__ import annotations

import bisect
import itertools
import logging
import math
import platform
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import attrs
from prometheus_client import (
    CollectorRegistry,
    Gauge,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from . import __version__
from .errors import StoreUnavailable
from .models import Job, JobState, Outcome
from .service.observer import NullObserver, Observer, Observers

if TYPE_CHECKING:
    from .service import JobService

__all__ = ["CONTENT_TYPE", "OUTCOMES", "PrometheusObserver", "Snapshot", "metrics_of", "scrape"]

log = logging.getLogger("jobsvc.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Job event -> the ``outcome`` label of jobsvc_job_outcomes_total.
OUTCOMES = {
    "succeeded": "succeeded",
    "retrying": "retried",
    "dead": "dead",
    "cancelled": "cancelled",
    "rescued": "rescued",
    "released": "released",
    "fenced": "fenced",
    "redriven": "redriven",
}
#: HTTP methods counted by name; any other is counted as "other" (labels stay bounded).
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

ATTEMPT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
WAIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 21600, 86400)
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
STORE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


@attrs.frozen(kw_only=True)
class Snapshot:
    """What ``/metrics`` reads from the service at scrape time."""

    workers: int
    busy: int  #: attempts queued or running
    reporter: bool
    abandoned_threads: int = 0  #: threads of cancelled sync handlers still running
    stuck_handlers: int = 0  #: async handlers written off for ignoring their cancellation
    handler_processes: int = 0  #: worker processes alive for process=True handlers
    #: store-wide jobs by task and state (None: not the reporter, or the store is down)
    queue: Mapping[str, Mapping[JobState, int]] | None = None
    oldest_due_age: float = 0.0


class _ScrapeCollector:
    """The gauges read at scrape time, from the last :class:`Snapshot`."""

    def __init__(self) -> None:
        self.snapshot = Snapshot(workers=0, busy=0, reporter=False)

    def describe(self) -> Iterator[Metric]:
        return self._families(Snapshot(workers=0, busy=0, reporter=False))

    def collect(self) -> Iterator[Metric]:
        return self._families(self.snapshot)

    @staticmethod
    def _families(snap: Snapshot) -> Iterator[Metric]:
        yield GaugeMetricFamily("jobsvc_workers", "Configured workers of this instance", value=snap.workers)
        yield GaugeMetricFamily("jobsvc_workers_busy", "Attempts queued or running on this instance", value=snap.busy)
        yield GaugeMetricFamily(
            "jobsvc_handler_threads_abandoned",
            "Threads of cancelled plain-def handlers still running their function on this instance",
            value=snap.abandoned_threads,
        )
        yield GaugeMetricFamily(
            "jobsvc_handlers_stuck",
            "Async handlers written off for ignoring their cancellation, still running on this instance",
            value=snap.stuck_handlers,
        )
        yield GaugeMetricFamily(
            "jobsvc_handler_processes", "Worker processes alive for process=True handlers on this instance",
            value=snap.handler_processes,
        )
        yield GaugeMetricFamily(
            "jobsvc_store_reporter",
            "1 on the instance that exports the store-wide gauges (jobsvc_queue_*), else 0",
            value=int(snap.reporter),
        )
        jobs = GaugeMetricFamily(
            "jobsvc_queue_jobs", "Store-wide jobs by state and task (only on the reporter)", labels=("state", "task")
        )
        age = GaugeMetricFamily(
            "jobsvc_queue_oldest_due_age_seconds",
            "Store-wide age of the oldest due job not running, 0 if none (only on the reporter)",
        )
        if snap.queue is not None:
            for task in sorted(snap.queue):
                for state in JobState:
                    jobs.add_metric((state.value, task), snap.queue[task].get(state, 0))
            age.add_metric((), snap.oldest_due_age)
        yield jobs
        yield age


class _Counter:
    """A labelled counter of the service's own events, kept as plain numbers.

    Every observer hook runs on the service's trio thread, and so does the scrape: the lock
    that prometheus_client takes for every increment buys nothing here, and it was the
    largest part of the metrics' cost per job. The series appear in the order first seen,
    as prometheus_client's would."""

    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...]) -> None:
        self.name, self.documentation, self.labelnames = name, documentation, labelnames
        self.values: dict[tuple[str, ...], float] = {}

    def inc(self, labels: tuple[str, ...], amount: float = 1) -> None:
        self.values[labels] = self.values.get(labels, 0) + amount

    def family(self) -> Metric:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, value in self.values.items():
            family.add_metric(labels, value)
        return family


class _Histogram:
    """A labelled histogram kept as plain numbers (see :class:`_Counter`): per series, a count
    per bucket (an observation goes to the first bucket whose upper bound is >= it, as in
    prometheus_client) and the sum; the cumulative buckets are made at scrape time."""

    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...], buckets: Iterable[float]) -> None:
        self.name, self.documentation, self.labelnames = name, documentation, labelnames
        self.bounds = tuple(float(b) for b in buckets)
        self._les: list[str] = [floatToGoString(b) for b in (*self.bounds, math.inf)]  # type: ignore[no-untyped-call]
        #: labels -> [count in bucket 0, ..., count above the last bound, sum]
        self.values: dict[tuple[str, ...], list[float]] = {}

    def observe(self, labels: tuple[str, ...], amount: float) -> None:
        counts = self.values.get(labels)
        if counts is None:
            counts = self.values[labels] = [0] * (len(self.bounds) + 2)
        counts[bisect.bisect_left(self.bounds, amount)] += 1
        counts[-1] += amount

    def family(self) -> Metric:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, counts in self.values.items():
            buckets = list(zip(self._les, itertools.accumulate(counts[:-1]), strict=True))
            family.add_metric(labels, buckets, sum_value=counts[-1])
        return family


class _Collector:
    """The event counters and histograms, for the registry."""

    def __init__(self, metrics: list[_Counter | _Histogram]) -> None:
        self.metrics = metrics

    def describe(self) -> Iterator[Metric]:
        return self.collect()

    def collect(self) -> Iterator[Metric]:
        return (metric.family() for metric in self.metrics)


class PrometheusObserver(NullObserver):
    """The service's metrics: implements the observer hooks, renders ``/metrics``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        # The *_created series (wall-clock creation times of each counter and histogram)
        # double the series count and are used by nobody here. prometheus_client only
        # offers a process-wide switch for them.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = registry or CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        Gauge("jobsvc_build_info", "Build information", ("version", "python"), registry=self.registry).labels(
            version=__version__, python=platform.python_version()
        ).set(1)
        r = self.registry
        self.submitted = _Counter("jobsvc_jobs_submitted_total", "Jobs created by a submission (replays not counted)", ("task",))
        self.started = _Counter("jobsvc_attempts_started_total", "Handler runs started", ("task",))
        self.outcomes = _Counter(
            "jobsvc_job_outcomes_total",
            "Job outcomes: succeeded, retried, dead, cancelled, rescued, released, fenced, redriven",
            ("task", "outcome"),
        )
        self.attempt_duration = _Histogram(
            "jobsvc_attempt_duration_seconds", "Handler run time of attempts that ran to an outcome", ("task",), ATTEMPT_BUCKETS
        )
        self.queue_wait = _Histogram(
            "jobsvc_queue_wait_seconds", "From when the job was due (run_at) to when its handler started", ("task",), WAIT_BUCKETS
        )
        self.http_requests = _Counter(
            "jobsvc_http_requests_total", "HTTP requests by method, route template and status", ("method", "route", "status")
        )
        self.http_duration = _Histogram(
            "jobsvc_http_request_duration_seconds", "HTTP request duration by method and route template", ("method", "route"),
            HTTP_BUCKETS,
        )
        self.store_duration = _Histogram(
            "jobsvc_store_operation_duration_seconds", "Store call duration by operation", ("operation",), STORE_BUCKETS
        )
        self.store_errors = _Counter("jobsvc_store_errors_total", "Store calls that raised StoreUnavailable, by operation", ("operation",))
        r.register(
            _Collector([
                self.submitted, self.started, self.outcomes, self.attempt_duration, self.queue_wait,
                self.http_requests, self.http_duration, self.store_duration, self.store_errors,
            ])
        )
        self._scrape = _ScrapeCollector()
        r.register(self._scrape)

    def job_event(self, event: str, job: Job, **details: Any) -> None:
        if event == "submitted":
            self.submitted.inc((job.task,))
        elif event == "started":
            self.started.inc((job.task,))
            waited = details.get("waited")
            if waited is not None:
                self.queue_wait.observe((job.task,), waited)
        elif event in OUTCOMES:
            self.outcomes.inc((job.task, OUTCOMES[event]))

    def attempt_finished(self, job: Job, outcome: Outcome, seconds: float) -> None:
        self.attempt_duration.observe((job.task,), seconds)

    def store_operation(self, operation: str, seconds: float, *, unavailable: bool) -> None:
        self.store_duration.observe((operation,), seconds)
        if unavailable:
            self.store_errors.inc((operation,))

    def http_request(self, method: str, route: str, status: int, seconds: float) -> None:
        method = method if method in METHODS else "other"
        self.http_requests.inc((method, route, str(status)))
        self.http_duration.observe((method, route), seconds)

    # -- the text ----------------------------------------------------------------------

    def render(self, snapshot: Snapshot) -> bytes:
        """The Prometheus text exposition, with the scrape-time gauges from ``snapshot``."""
        self._scrape.snapshot = snapshot
        return generate_latest(self.registry)


def metrics_of(observer: Observer) -> PrometheusObserver | None:
    """The PrometheusObserver among a service's observers, if it has one."""
    if isinstance(observer, PrometheusObserver):
        return observer
    if isinstance(observer, Observers):
        return observer.find(PrometheusObserver)
    return None


async def scrape(service: JobService, metrics: PrometheusObserver) -> bytes:
    """Read the scrape-time figures from ``service`` and render the text. The store-wide
    ones are read only on the reporter; if the store cannot answer they are left out (the
    failure shows in ``jobsvc_store_errors_total``) and the rest is still served."""
    stats = service.statistics()
    reporter = service.is_reporter
    queue = None
    oldest = 0.0
    if reporter:
        try:
            counts = await service.counts()
            next_at = await service.next_run_at()
        except StoreUnavailable as exc:
            log.warning("metrics: store-wide gauges left out: %s", exc)
        else:
            queue = counts.by_task
            now = service.clock.now()
            oldest = max(0.0, now - next_at) if next_at is not None else 0.0
    snapshot = Snapshot(
        workers=int(stats["workers"]),
        busy=int(stats["busy_workers"]) + int(stats["channel_buffered"]),
        reporter=reporter,
        abandoned_threads=int(stats["abandoned_threads"]),
        stuck_handlers=int(stats["stuck_handlers"]),
        handler_processes=int(stats["handler_processes"]),
        queue=queue,
        oldest_due_age=oldest,
    )
    return metrics.render(snapshot)
