"""Prometheus metrics: an Observer for the service and the ``GET /metrics`` text.

Each service gets its own CollectorRegistry (never the global one), so tests start fresh.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from .models import Job, JobState, Outcome

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

    def job_event(self, event: str, job: Job, **details: Any) -> None:
        self.events.labels(event=event, task=job.task).inc()

    def attempt_finished(self, job: Job, outcome: Outcome, seconds: float) -> None:
        self.attempts.labels(task=job.task, outcome=job.state.value).observe(seconds)

    def render(self, counts: dict[JobState, int]) -> bytes:
        for state, n in counts.items():
            self.jobs.labels(state=state.value).set(n)
        return generate_latest(self.registry)
