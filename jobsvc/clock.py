"""The one seam through which jobsvc reads the time.

Two kinds of time are involved. *Sleeping and timeouts* always go through trio
(``trio.sleep``, ``trio.move_on_after``...), so trio's ``MockClock`` drives them.
*Timestamps* that are persisted (``run_at``, ``created_at``, lease expiries) are epoch
seconds read from a :class:`Clock`. :class:`TrioClock` derives epoch time from
``trio.current_time()`` so both kinds stay in step under ``autojump_clock``.

Nothing else in jobsvc calls ``time.time()``.
"""

from __future__ import annotations

import time
from typing import Protocol

import attrs
import trio

__all__ = ["Clock", "SystemClock", "TrioClock"]


class Clock(Protocol):
    def now(self) -> float:
        """Epoch seconds."""
        ...


@attrs.frozen
class SystemClock:
    """Wall-clock time; what production uses."""

    def now(self) -> float:
        return time.time()


@attrs.frozen
class TrioClock:
    """Epoch time that follows trio's clock; under MockClock it is virtual and jumps with it.

    The default epoch is 2**30 (a date in 2004): a power of two, so sums of small
    binary fractions (1, 2, 0.5 s...) stay exact and tests can compare times with ``==``.
    """

    epoch: float = float(2**30)

    def now(self) -> float:
        return self.epoch + trio.current_time()
