"""Backoff: capped exponential with full jitter; pure, the RNG passed in."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jobsvc.retry import Backoff, retry_delay


@pytest.mark.parametrize(
    ("base", "cap", "attempt", "ceiling"),
    [(1.0, 300.0, 1, 1.0), (1.0, 300.0, 2, 2.0), (1.0, 300.0, 4, 8.0), (0.5, 300.0, 3, 2.0), (1.0, 10.0, 5, 10.0), (1.0, 300.0, 10_000, 300.0)],
)
def test_ceiling_doubles_and_is_capped(base: float, cap: float, attempt: int, ceiling: float) -> None:
    """The ceiling after attempt n is min(cap, base * 2**(n-1)), overflow included."""
    assert Backoff(base=base, cap=cap).ceiling(attempt) == ceiling


def test_without_jitter_the_delay_is_the_ceiling() -> None:
    """jitter=False waits exactly the ceiling."""
    assert Backoff(base=1, cap=60, jitter=False).delay(3, rng=lambda lo, hi: 0.0) == 4.0


def test_full_jitter_draws_between_zero_and_the_ceiling() -> None:
    """Full jitter asks the RNG for a value in [0, ceiling]."""
    seen = []
    delay = Backoff(base=1, cap=60).delay(3, rng=lambda lo, hi: seen.append((lo, hi)) or 1.5)
    assert (delay, seen) == (1.5, [(0.0, 4.0)])


def test_a_misbehaving_rng_is_clamped() -> None:
    """An RNG outside its range cannot push the delay beyond [0, ceiling]."""
    assert Backoff(base=1, cap=60).delay(1, rng=lambda lo, hi: 99.0) == 1.0
    assert Backoff(base=1, cap=60).delay(1, rng=lambda lo, hi: -5.0) == 0.0


def test_retry_delay_gives_up_after_max_attempts() -> None:
    """No delay (dead-letter) once the last attempt failed."""
    backoff = Backoff(base=1, cap=60, jitter=False)
    assert [retry_delay(attempt=n, max_attempts=3, backoff=backoff) for n in (1, 2, 3)] == [1.0, 2.0, None]


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf")])
def test_backoff_rejects_nonsense(bad: float) -> None:
    """Base and cap must be positive finite seconds."""
    with pytest.raises(ValueError, match="positive"):
        Backoff(base=bad)


@given(st.integers(1, 200), st.floats(0.001, 100), st.floats(0.001, 1000), st.integers(0, 2**32))
def test_jittered_delays_stay_in_range(attempt: int, base: float, cap: float, seed: int) -> None:
    """For any attempt, delay is within [0, min(cap, base*2**(n-1))]."""
    backoff = Backoff(base=base, cap=max(cap, base))
    delay = backoff.delay(attempt, rng=random.Random(seed).uniform)
    assert 0.0 <= delay <= backoff.ceiling(attempt) <= backoff.cap
