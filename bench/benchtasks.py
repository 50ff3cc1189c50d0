"""Task module for ``bench/engine.py``: ``jobsvc serve --tasks benchtasks`` with
``PYTHONPATH=bench``.

``stamp`` returns ``time.time()`` read first thing in its handler; with the client's send time
in the payload, ``result - payload["sent"]`` is the submission-to-handler-start latency.
"""

from __future__ import annotations

import time
from typing import Any

from jobsvc.tasks import JobContext, task

__all__ = ["stamp"]


@task("stamp")
async def stamp(payload: Any, ctx: JobContext) -> float:
    """Returns the wall-clock time at which the handler started."""
    return time.time()
