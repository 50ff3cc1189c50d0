"""Hooks through which the service reports what happens to jobs (metrics, logs).

The core never imports prometheus: :class:`~jobsvc.metrics.PrometheusObserver` implements
this protocol.
"""

from __future__ import annotations

from typing import Any, Protocol

from ..models import Job, Outcome

__all__ = ["NullObserver", "Observer"]


class Observer(Protocol):
    def job_event(self, event: str, job: Job, **details: Any) -> None:
        """``event``: submitted, started, succeeded, retrying, dead, cancelled, released,
        rescued, redriven, fenced. ``job`` is the job as it is after the event."""

    def attempt_finished(self, job: Job, outcome: Outcome, seconds: float) -> None:
        """An attempt ran to an outcome in ``seconds`` (its job as written)."""


class NullObserver:
    def job_event(self, event: str, job: Job, **details: Any) -> None:
        pass

    def attempt_finished(self, job: Job, outcome: Outcome, seconds: float) -> None:
        pass
