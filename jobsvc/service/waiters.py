"""Long-poll wake-ups: ``GET /jobs/{id}?wait=S`` waits here until its job is final."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import trio

__all__ = ["Waiters"]


class Watch:
    """One waiter's view of one job: registered before its first read, so a change made
    between that read and the wait is not missed."""

    def __init__(self, waiters: Waiters, job_id: str) -> None:
        self._waiters = waiters
        self._job_id = job_id
        self._event = waiters._event(job_id)

    async def wait(self, until: float) -> None:
        """Until the job may have changed (notified), or trio time ``until``."""
        with trio.move_on_at(until):
            await self._event.wait()
        self._event = self._waiters._event(self._job_id)


class Waiters:
    def __init__(self) -> None:
        self._events: dict[str, trio.Event] = {}
        self._watching: dict[str, int] = {}

    def __len__(self) -> int:
        """Jobs being watched."""
        return len(self._watching)

    def _event(self, job_id: str) -> trio.Event:
        return self._events.setdefault(job_id, trio.Event())

    @contextmanager
    def watch(self, job_id: str) -> Iterator[Watch]:
        self._watching[job_id] = self._watching.get(job_id, 0) + 1
        try:
            yield Watch(self, job_id)
        finally:
            self._watching[job_id] -= 1
            if not self._watching[job_id]:
                del self._watching[job_id]
                self._events.pop(job_id, None)

    def notify(self, job_id: str) -> None:
        """``job_id`` reached a final state (or may have): wake its waiters."""
        event = self._events.pop(job_id, None)
        if event is not None:
            event.set()

    def notify_all(self) -> None:
        for job_id in list(self._events):
            self.notify(job_id)
