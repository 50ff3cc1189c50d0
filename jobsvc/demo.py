"""The seed service's simulation, for ``make run``: watch retries and the dead-letter queue.

* ``email``   payload: a string (``"send welcome email"``). Fails at random with probability
  ``JOBSVC_DEMO_FAILURE_RATE`` (default 0.5, as in the seed), 3 attempts with backoff of
  1 s then 2 s (plus jitter), then the dead-letter queue.
* ``report``  payload ``{"pages": N}``: takes about N * 0.1 s, then succeeds.
"""

from __future__ import annotations

import os

import attrs
import trio

from .retry import Backoff
from .tasks import JobContext, task

__all__ = ["email", "report"]


def failure_rate() -> float:
    raw = os.environ.get("JOBSVC_DEMO_FAILURE_RATE", "0.5")
    try:
        rate = float(raw)
    except ValueError:
        raise ValueError(f"JOBSVC_DEMO_FAILURE_RATE must be a number between 0 and 1, not {raw!r}") from None
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"JOBSVC_DEMO_FAILURE_RATE must be between 0 and 1, not {rate}")
    return rate


class NetworkIssue(Exception):
    """The simulated failure: "Job processing failed. Network issues?"."""


@task("email", payload=str, max_attempts=3, backoff=Backoff(base=1.0, cap=8.0))
async def email(payload: str, ctx: JobContext) -> dict[str, str]:
    """Simulated email: fails at random (JOBSVC_DEMO_FAILURE_RATE, default 50 %)."""
    await trio.sleep(0.05)
    if ctx.rng(0.0, 1.0) < failure_rate():  # the service's random source: tests pin it
        raise NetworkIssue("Job processing failed. Network issues?")
    ctx.log.info("email sent: %s", payload)
    return {"sent": payload}


@attrs.frozen
class ReportPayload:
    pages: int = attrs.field(validator=[attrs.validators.ge(1), attrs.validators.le(100)])


@task("report", payload=ReportPayload, timeout=30)
async def report(payload: ReportPayload, ctx: JobContext) -> dict[str, int]:
    """Simulated report: about 0.1 s per page."""
    await trio.sleep(payload.pages * 0.1)
    return {"pages": payload.pages}
