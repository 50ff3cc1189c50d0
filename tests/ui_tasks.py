"""Task handlers for the dashboard's browser test (``jobsvc serve --tasks ui_tasks``, with
``tests/`` on ``PYTHONPATH``)."""

from __future__ import annotations

import attrs
import trio

from jobsvc.tasks import JobContext, PermanentError, task

__all__ = ["Toggle", "toggle"]


@attrs.frozen
class Toggle:
    path: str  #: the job succeeds once this file exists


@task("toggle", payload=Toggle, max_attempts=1)
async def toggle(payload: Toggle, ctx: JobContext) -> dict[str, str]:
    """Dead at once while ``path`` is missing (an error message holding HTML); succeeds once
    it exists: a test creates the file, then retries the job from the dashboard."""
    if not await trio.Path(payload.path).exists():
        raise PermanentError(f"<b>missing</b> <img src=x onerror=\"window.__pwned='error'\"> {payload.path}")
    return {"found": payload.path}
