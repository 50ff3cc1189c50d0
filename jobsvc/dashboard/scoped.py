"""The facade as one principal sees it: every call carries the principal's tenant.

The spec (``shared-auth-spec.md``) has the facade's job methods take ``tenant=``; until the
auth branch lands they do not. :class:`Scoped` passes ``tenant`` to a method that accepts
it and, to a method that does not, only a ``None`` tenant: a principal bound to a tenant
is refused (:class:`TenantScopingUnavailable`, 403) rather than shown every tenant's jobs.
After the merge every method accepts it and nothing here needs to change.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import JobsvcError
from ..models import Job, JobState
from ..service import JobService
from ..store import Counts

__all__ = ["Scoped", "TenantScopingUnavailable", "accepts_tenant"]


class TenantScopingUnavailable(JobsvcError):
    """This build's service cannot scope reads to a tenant: a tenant-bound key is refused."""

    http_status = 403
    slug = "tenant-scoping-unavailable"


@functools.cache
def _takes_tenant(function: Callable[..., Any]) -> bool:
    return "tenant" in inspect.signature(function).parameters


def accepts_tenant(method: Callable[..., Any]) -> bool:
    """Does the (bound) facade method take a ``tenant`` keyword?"""
    return _takes_tenant(getattr(method, "__func__", method))


class Scoped:
    """``service``'s job methods with ``tenant`` bound."""

    def __init__(self, service: JobService, tenant: str | None) -> None:
        self.service = service
        self.tenant = tenant

    def _bind(self, name: str) -> Callable[..., Any]:
        method: Callable[..., Any] = getattr(self.service, name)
        if accepts_tenant(method):
            return functools.partial(method, tenant=self.tenant)
        if self.tenant is not None:
            raise TenantScopingUnavailable(
                f"this key is bound to the tenant {self.tenant!r}, and this service cannot scope {name} to a tenant"
            )
        return method

    async def get(self, job_id: str) -> Job:
        return await self._bind("get")(job_id)  # type: ignore[no-any-return]

    async def list_jobs(self, *, states: Sequence[JobState] = (), task: str | None = None, after: int | None = None, limit: int = 100) -> list[Job]:
        return await self._bind("list_jobs")(states=states, task=task, after=after, limit=limit)  # type: ignore[no-any-return]

    async def retry(self, job_id: str) -> Job:
        return await self._bind("retry")(job_id)  # type: ignore[no-any-return]

    async def cancel(self, job_id: str) -> Job:
        return await self._bind("cancel")(job_id)  # type: ignore[no-any-return]

    async def counts(self) -> Counts:
        return await self._bind("counts")()  # type: ignore[no-any-return]

    async def stats(self) -> dict[str, Any]:
        return await self._bind("stats")()  # type: ignore[no-any-return]
