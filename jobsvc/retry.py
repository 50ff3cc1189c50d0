"""Retry policy: capped exponential backoff with full jitter. Pure; the RNG is passed in.

After attempt ``n`` failed (n = 1, 2, ...), the next attempt waits a random time in
``[0, min(cap, base * 2 ** (n - 1))]`` ("full jitter": retries of jobs that failed together
spread out instead of coming back as a herd). With ``jitter=False`` it waits the ceiling
exactly. After ``max_attempts`` attempts the job is dead.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import attrs

__all__ = ["Backoff", "Rng", "retry_delay"]

#: ``rng(low, high)`` returns a float in [low, high]; ``random.uniform`` in production.
Rng = Callable[[float, float], float]


def _positive(_inst: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise ValueError(f"{attribute.name} must be a positive number of seconds, not {value!r}")


@attrs.frozen(kw_only=True)
class Backoff:
    base: float = attrs.field(default=1.0, validator=_positive)
    cap: float = attrs.field(default=300.0, validator=_positive)
    jitter: bool = True

    def ceiling(self, attempt: int) -> float:
        """The longest wait after failed attempt number ``attempt`` (1-based)."""
        try:
            return min(self.cap, self.base * 2.0 ** (max(attempt, 1) - 1))
        except OverflowError:
            return self.cap

    def delay(self, attempt: int, rng: Rng = random.uniform) -> float:
        ceiling = self.ceiling(attempt)
        if not self.jitter:
            return ceiling
        return min(ceiling, max(0.0, rng(0.0, ceiling)))


def retry_delay(*, attempt: int, max_attempts: int, backoff: Backoff, rng: Rng = random.uniform) -> float | None:
    """Seconds to wait after failed attempt ``attempt``, or None if that was the last one."""
    if attempt >= max_attempts:
        return None
    return backoff.delay(attempt, rng)
