"""Helpers shared by the in-process tests (importable from any test module)."""

from __future__ import annotations

from typing import Any

import trio

from jobsvc.config import Settings
from jobsvc.service import JobService, open_service

__all__ = ["serve_until_shutdown"]


async def serve_until_shutdown(
    settings: Settings,
    *,
    task_status: trio.TaskStatus[JobService] = trio.TASK_STATUS_IGNORED,
    **kwargs: Any,
) -> None:
    """open_service, hand the service over, and drain once its shutdown is requested."""
    async with open_service(settings, **kwargs) as service:
        task_status.started(service)
        await service.shutdown.requested.wait()
