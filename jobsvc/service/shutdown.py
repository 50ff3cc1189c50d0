"""The service's one shutdown state.

::

    serving --begin()--> draining --(grace passes, or force())--> handlers cancelled
       |                    |
       |                    |- no new submissions (503), no new claims, /ready 503;
       |                    |  running handlers get ``grace`` seconds to finish
       |                    '- the HTTP listener stays open ``drain_delay`` seconds more
       |                       (``http_stop()`` returns then; at once on force())
       '- (a shutdown during start-up skips straight to stopped)

The drain delay is for load balancers: an instance that keeps answering 503 on ``/ready``
and on submissions for a few seconds is seen leaving by their health checks, instead of
refusing connections that were already routed to it. The job drain does not wait for it:
it starts at ``begin()``.

Every part reads this one object: the HTTP layer refuses submissions while it is
draining, the runner stops claiming, and the workers' cancel scope gets its deadline from
it. ``stopped`` is set once every part has stopped and every outcome is written.
"""

from __future__ import annotations

import enum
import math

import attrs
import trio

from ..errors import ServiceUnavailable

__all__ = ["Phase", "Shutdown"]


class Phase(enum.Enum):
    SERVING = "serving"
    DRAINING = "draining"  #: no new work; running handlers get the grace period
    STOPPING = "stopping"  #: forced: running handlers are cancelled now


@attrs.define(eq=False)
class Shutdown:
    grace: float  #: seconds running handlers get to finish once draining begins
    #: seconds the HTTP listener keeps answering (503 on /ready and submissions) after begin()
    drain_delay: float = 0.0
    phase: Phase = Phase.SERVING
    #: trio time at which running handlers are cancelled (inf while serving)
    deadline: float = math.inf
    requested: trio.Event = attrs.field(factory=trio.Event)  #: set when draining begins
    stopped: trio.Event = attrs.field(factory=trio.Event)  #: set when everything has stopped
    forced: trio.Event = attrs.field(factory=trio.Event)  #: set by force()
    #: trio time at which begin() was called (inf while serving)
    begun_at: float = math.inf
    #: trio time at which force() was called (inf unless forced)
    forced_at: float = math.inf
    #: set when every attempt's outcome is written and every part has stopped but for the
    #: handlers written off for ignoring their cancellation (then ``stopped`` waits for them)
    settled: trio.Event = attrs.field(factory=trio.Event)
    _scopes: list[tuple[trio.CancelScope, float]] = attrs.field(factory=list)

    @property
    def stop_budget(self) -> float:
        """Seconds a graceful stop may take: the job drain and the HTTP drain delay overlap,
        but each may use all of its time, so plan for the sum."""
        return self.grace + self.drain_delay

    @property
    def cancels_at(self) -> float:
        """Trio time at which running handlers are (or were) cancelled: the end of the grace,
        or the second signal if that came first; inf while serving."""
        return min(self.begun_at + self.grace, self.forced_at)

    @property
    def draining(self) -> bool:
        return self.phase is not Phase.SERVING

    def attach(self, scope: trio.CancelScope, *, slack: float = 0.0) -> None:
        """Let ``scope`` be cancelled at the deadline (plus ``slack`` seconds)."""
        self._scopes.append((scope, slack))
        scope.deadline = self.deadline + slack

    def begin(self) -> None:
        """Graceful: stop taking work now; running handlers get ``grace`` seconds. Idempotent."""
        if self.phase is not Phase.SERVING:
            return
        self.phase = Phase.DRAINING
        self.begun_at = trio.current_time()
        self._move_deadline(self.begun_at + self.grace)
        self.requested.set()

    def force(self) -> None:
        """Immediate: cancel running handlers now (their jobs are still handed back)."""
        self.begin()
        if self.phase is not Phase.STOPPING:
            self.forced_at = trio.current_time()
        self.phase = Phase.STOPPING
        self._move_deadline(-math.inf)
        self.forced.set()

    async def http_stop(self) -> None:
        """Return when the HTTP server should stop listening: ``drain_delay`` seconds after
        :meth:`begin`, or at once on :meth:`force`. hypercorn's ``shutdown_trigger``."""
        await self.requested.wait()
        with trio.move_on_at(self.begun_at + self.drain_delay):
            await self.forced.wait()

    async def overdue(self, *, after_grace: float, after_force: float) -> None:
        """Return when the service should have stopped by now: ``after_grace`` seconds past
        the end of a graceful stop (:attr:`stop_budget` after :meth:`begin`), or
        ``after_force`` seconds past :meth:`force`. (Whether it has stopped is for the caller
        to check: ``stopped``.)"""
        await self.requested.wait()
        with trio.move_on_at(self.begun_at + self.stop_budget + after_grace) as grace_passed:
            await self.forced.wait()
        if not grace_passed.cancelled_caught:
            await trio.sleep(after_force)

    def _move_deadline(self, deadline: float) -> None:
        self.deadline = deadline
        for scope, slack in self._scopes:
            scope.deadline = deadline + slack

    def check_accepting(self) -> None:
        if self.draining:
            raise ServiceUnavailable("the service is shutting down; retry on another instance or later")
