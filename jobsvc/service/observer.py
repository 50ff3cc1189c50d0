"""Hooks through which the service reports what happens (metrics, logs).

The core calls an :class:`Observer`; it never imports prometheus (that is
:class:`~jobsvc.metrics.PrometheusObserver`) nor structlog (:mod:`jobsvc.logs` only renders
the records of the standard ``logging`` module). :func:`~jobsvc.service.open_service` always
puts a :class:`LogObserver` in front of the observer it is given, so every way of running
the service logs the same job events.

Job events (``job_event``), with the job as it is after the event:

=========== ============================================================================
submitted   a submission created the job (a replay creates nothing: no event)
started     a worker starts the handler; details: ``waited`` (seconds since run_at)
succeeded   written as succeeded; details: ``seconds`` (the handler's run time)
retrying    the attempt failed and another is scheduled (run_at is when); ``seconds``
dead        dead-lettered: failed with no attempts left, a PermanentError, or the
            ``--max-rescues``-th rescue (WorkerLost); ``seconds`` when a handler ran
cancelled   cancelled (a waiting job at once; a running one when its handler stopped)
released    handed back to pending without burning the attempt (shutdown)
rescued     a lost owner's job handed back to pending (crash, lease expired)
redriven    replayed from the dead-letter queue (``POST /jobs/{id}/retry``)
fenced      the attempt had lost its job: its outcome was discarded (job as claimed)
=========== ============================================================================
"""

from __future__ import annotations

import logging
from typing import Any, Protocol, TypeVar

from ..models import Job, JobState, Outcome

__all__ = ["JOB_LOGGER", "LogObserver", "NullObserver", "Observer", "Observers"]

T = TypeVar("T")

#: The logger of the job events and of the handlers' ``ctx.log`` lines.
JOB_LOGGER = "jobsvc.job"


class Observer(Protocol):
    def job_event(self, event: str, job: Job, **details: Any) -> None:
        """A job event (see the module docstring)."""

    def attempt_finished(self, job: Job, outcome: Outcome, seconds: float) -> None:
        """A handler ran to an outcome in ``seconds`` (``job`` as claimed). Not called for an
        attempt handed back unfinished (released at shutdown)."""

    def store_operation(self, operation: str, seconds: float, *, unavailable: bool) -> None:
        """A store call took ``seconds``; ``unavailable``: it raised StoreUnavailable."""

    def http_request(self, method: str, route: str, status: int, seconds: float) -> None:
        """An HTTP request was answered (``route``: the route template, or "unmatched")."""


class NullObserver:
    def job_event(self, event: str, job: Job, **details: Any) -> None:
        pass

    def attempt_finished(self, job: Job, outcome: Outcome, seconds: float) -> None:
        pass

    def store_operation(self, operation: str, seconds: float, *, unavailable: bool) -> None:
        pass

    def http_request(self, method: str, route: str, status: int, seconds: float) -> None:
        pass


class Observers:
    """Several observers as one: every hook is called on each, in order."""

    def __init__(self, *observers: Observer) -> None:
        self.observers = observers

    def find(self, kind: type[T]) -> T | None:
        """The first observer of type ``kind`` (looking into nested Observers), if any."""
        for observer in self.observers:
            if isinstance(observer, kind):
                return observer
            if isinstance(observer, Observers) and (found := observer.find(kind)) is not None:
                return found
        return None

    def job_event(self, event: str, job: Job, **details: Any) -> None:
        for observer in self.observers:
            observer.job_event(event, job, **details)

    def attempt_finished(self, job: Job, outcome: Outcome, seconds: float) -> None:
        for observer in self.observers:
            observer.attempt_finished(job, outcome, seconds)

    def store_operation(self, operation: str, seconds: float, *, unavailable: bool) -> None:
        for observer in self.observers:
            observer.store_operation(operation, seconds, unavailable=unavailable)

    def http_request(self, method: str, route: str, status: int, seconds: float) -> None:
        for observer in self.observers:
            observer.http_request(method, route, status, seconds)


#: Internal event -> (log event, level).
_LOG_EVENTS = {
    "submitted": ("job.submitted", logging.INFO),
    "started": ("job.started", logging.INFO),
    "succeeded": ("job.succeeded", logging.INFO),
    "retrying": ("job.retry_scheduled", logging.INFO),
    "dead": ("job.dead", logging.WARNING),
    "cancelled": ("job.cancelled", logging.INFO),
    "released": ("job.released", logging.INFO),
    "rescued": ("job.rescued", logging.WARNING),
    "redriven": ("job.redriven", logging.INFO),
    "fenced": ("job.fenced", logging.WARNING),
}


class LogObserver(NullObserver):
    """Logs every job event as one record of the ``jobsvc.job`` logger (standard logging),
    message ``job.<event>``, with ``job_id``, ``task`` and ``attempt`` (and ``tenant``,
    ``delay``, ``duration_ms``, ``wait_ms``, ``error_type``, ``error`` where they apply) as
    extra fields.
    The request id, when the event happens inside a request, comes from the context
    (:mod:`jobsvc.logs`). Payloads and results are never logged.

    ``attempt`` is the number of the attempt the event is about: for ``released`` and
    ``rescued`` the attempt handed back (which the job no longer counts), for
    ``submitted``, ``cancelled`` and ``redriven`` the attempts the job has made so far.
    """

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._log = logger or logging.getLogger(JOB_LOGGER)

    def job_event(self, event: str, job: Job, **details: Any) -> None:
        name, level = _LOG_EVENTS.get(event, (f"job.{event}", logging.INFO))
        if not self._log.isEnabledFor(level):
            return
        attempt = job.attempts
        if event in ("released", "rescued") and job.state is JobState.PENDING:
            attempt += 1  # the attempt handed back is no longer counted by the job
        extra: dict[str, Any] = {"job_id": job.id, "task": job.task, "attempt": attempt}
        if job.tenant is not None:
            extra["tenant"] = job.tenant
        if event in ("retrying", "dead") and job.errors:
            last = job.errors[-1]
            extra.update(attempt=last.attempt, error_type=last.type, error=last.message)
        if event == "retrying":
            extra["delay"] = round(max(0.0, job.run_at - job.updated_at), 3)
        if (seconds := details.get("seconds")) is not None:
            extra["duration_ms"] = round(seconds * 1000, 3)
        if (waited := details.get("waited")) is not None:
            extra["wait_ms"] = round(waited * 1000, 3)
        self._log.log(level, name, extra=extra)
