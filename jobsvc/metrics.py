"""Prometheus metrics: an Observer for the service and the ``GET /metrics`` text.

Each service gets its own CollectorRegistry (never the global one), so tests start fresh.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from .models import JobState

__all__ = ["CONTENT_TYPE", "PrometheusObserver"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class PrometheusObserver:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.events = Counter(
            "jobsvc_job_events",
            "Job lifecycle events (submitted, succeeded, retrying, dead, cancelled, rescued, released, redriven, fenced)",
            ("event", "task"),
            registry=self.registry,
        )
        self.attempts = Histogram(
            "jobsvc_attempt_seconds",
            "Duration of job attempts by outcome",
            ("task", "outcome"),
            registry=self.registry,
        )
        self.jobs = Gauge("jobsvc_jobs", "Jobs in the store by state", ("state",), registry=self.registry)

    def job_event(self, event: str, task: str) -> None:
        self.events.labels(event=event, task=task).inc()

    def attempt_finished(self, task: str, outcome: str, seconds: float) -> None:
        self.attempts.labels(task=task, outcome=outcome).observe(seconds)

    def render(self, counts: dict[JobState, int]) -> bytes:
        for state, n in counts.items():
            self.jobs.labels(state=state.value).set(n)
        return generate_latest(self.registry)
