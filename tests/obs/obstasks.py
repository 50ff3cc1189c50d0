"""Task handlers for the observability tests (``--tasks obstasks``; tests/obs on the path)."""

from __future__ import annotations

from typing import Any

from jobsvc.tasks import JobContext, PermanentError, task

#: A handler error message that tries to forge a log line, clear the screen and flood the log.
HOSTILE = 'bad\n{"event": "forged", "level": "critical"}\r\x1b[2J\x1b[H\x1b]0;owned\x07\u2028' + "A" * 250_000


@task("chatty", max_attempts=1)
async def chatty(payload: Any, ctx: JobContext) -> str:
    """Logs one line through ctx.log (never the payload), then succeeds."""
    ctx.log.info("working on it: step %d of %d", 1, 1)
    return "done"


@task("hostile", max_attempts=1)
async def hostile(payload: Any, ctx: JobContext) -> None:
    """Logs the hostile message through ctx.log, then fails with it."""
    ctx.log.warning("upstream said: %s", HOSTILE)
    raise PermanentError(HOSTILE)
