"""The service's one shutdown state.

::

    serving --begin()--> draining --(grace passes, or force())--> handlers cancelled
       |                    |
       |                    '- no new submissions (503), no new claims, /ready 503;
       |                       running handlers get ``grace`` seconds to finish
       '- (a shutdown during start-up skips straight to stopped)

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
    phase: Phase = Phase.SERVING
    #: trio time at which running handlers are cancelled (inf while serving)
    deadline: float = math.inf
    requested: trio.Event = attrs.field(factory=trio.Event)  #: set when draining begins
    stopped: trio.Event = attrs.field(factory=trio.Event)  #: set when everything has stopped
    _scopes: list[tuple[trio.CancelScope, float]] = attrs.field(factory=list)

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
        self._move_deadline(trio.current_time() + self.grace)
        self.requested.set()

    def force(self) -> None:
        """Immediate: cancel running handlers now (their jobs are still handed back)."""
        self.begin()
        self.phase = Phase.STOPPING
        self._move_deadline(-math.inf)

    def _move_deadline(self, deadline: float) -> None:
        self.deadline = deadline
        for scope, slack in self._scopes:
            scope.deadline = deadline + slack

    def check_accepting(self) -> None:
        if self.draining:
            raise ServiceUnavailable("the service is shutting down; retry on another instance or later")
