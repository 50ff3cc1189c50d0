"""This instance's recent activity: a ring of per-minute counters fed by the observer hooks.

:class:`Activity` is an :class:`~jobsvc.service.observer.Observer` (as
:class:`~jobsvc.metrics.PrometheusObserver` is): each job event adds one to a counter of
the current minute, so a page view costs nothing but reading 60 small buckets. It knows
only what *this* process saw since it started (its submissions, its workers' outcomes),
not the other instances sharing a PostgreSQL store; the overview says so.

Counters are kept per tenant (``job.tenant`` once jobs carry one; ``None`` before), so a
key bound to a tenant sees its own tenant's activity only; at most :data:`MAX_TENANTS`
rings are kept (the least recently active one is dropped first).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import attrs

from ..clock import Clock
from ..models import Job
from ..service.observer import NullObserver, Observer, Observers

__all__ = ["EVENTS", "MINUTES", "Activity", "Minute", "Summary", "attach_activity"]

#: Minutes kept.
MINUTES = 60
MAX_TENANTS = 1024
#: The job events counted (see ``jobsvc.service.observer``).
EVENTS = ("submitted", "started", "succeeded", "retrying", "dead", "cancelled")


@attrs.frozen
class Minute:
    start: float  #: epoch seconds of the minute's start
    counts: dict[str, int]


@attrs.frozen
class Summary:
    """The last hour, for the overview."""

    since: float  #: when this instance started counting
    minutes: list[Minute]  #: oldest first, MINUTES of them, the current minute last
    totals: dict[str, int]

    @property
    def finished_per_minute(self) -> float:
        """Jobs that reached a final state (succeeded, dead, cancelled), per minute."""
        t = self.totals
        return (t["succeeded"] + t["dead"] + t["cancelled"]) / MINUTES

    @property
    def failed_attempts(self) -> int:
        return self.totals["retrying"] + self.totals["dead"]

    @property
    def failure_rate(self) -> float | None:
        """Failed attempts / attempts that ended (succeeded or failed); None: none ended."""
        ended = self.totals["succeeded"] + self.failed_attempts
        return None if ended == 0 else self.failed_attempts / ended

    def as_json(self) -> dict[str, Any]:
        rate = self.failure_rate
        return {
            "totals": self.totals,
            "finished_per_minute": round(self.finished_per_minute, 2),
            "failed_attempts": self.failed_attempts,
            "failure_rate": None if rate is None else round(rate, 4),
        }


class _Ring:
    def __init__(self) -> None:
        self.minute = [-1] * MINUTES  #: the minute number each slot holds
        self.counts = [dict.fromkeys(EVENTS, 0) for _ in range(MINUTES)]

    def add(self, minute: int, event: str) -> None:
        slot = minute % MINUTES
        if self.minute[slot] != minute:
            self.minute[slot] = minute
            self.counts[slot] = dict.fromkeys(EVENTS, 0)
        self.counts[slot][event] += 1

    def last_hour(self, now_minute: int) -> list[Minute]:
        minutes = []
        for m in range(now_minute - MINUTES + 1, now_minute + 1):
            slot = m % MINUTES
            counts = dict(self.counts[slot]) if self.minute[slot] == m else dict.fromkeys(EVENTS, 0)
            minutes.append(Minute(start=m * 60.0, counts=counts))
        return minutes


class Activity(NullObserver):
    """Per-minute counters of job events, per tenant. O(1) per event, O(60) per read."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self.since = clock.now()
        self._rings: OrderedDict[str | None, _Ring] = OrderedDict()

    def job_event(self, event: str, job: Job, **details: Any) -> None:
        if event not in EVENTS:
            return
        tenant = getattr(job, "tenant", None)
        minute = int(self._clock.now() // 60)
        for key in {None, tenant}:  # the instance-wide ring, and the tenant's
            ring = self._rings.get(key)
            if ring is None:
                ring = self._rings[key] = _Ring()
                if len(self._rings) > MAX_TENANTS:
                    self._rings.popitem(last=False)
            else:
                self._rings.move_to_end(key)
            ring.add(minute, event)

    def summary(self, tenant: str | None = None) -> Summary:
        """The last hour, instance-wide (``tenant=None``) or of one tenant."""
        now_minute = int(self._clock.now() // 60)
        ring = self._rings.get(tenant)
        minutes = ring.last_hour(now_minute) if ring is not None else _Ring().last_hour(now_minute)
        totals = dict.fromkeys(EVENTS, 0)
        for minute in minutes:
            for event, n in minute.counts.items():
                totals[event] += n
        return Summary(since=self.since, minutes=minutes, totals=totals)


def attach_activity(observer: Observer, clock: Clock) -> Activity | None:
    """The :class:`Activity` among the service's observers, added if there is none yet.

    ``open_service`` hands every part of the service the same :class:`Observers`, so an
    observer appended to it sees every job event from then on. None when the service's
    observer is not an ``Observers`` (a service built by hand in a test)."""
    if not isinstance(observer, Observers):
        return None
    found = observer.find(Activity)
    if found is not None:
        return found
    activity = Activity(clock)
    observer.observers = (*observer.observers, activity)
    return activity
