"""A store that times its public calls: the service's view of the store, for metrics.

:class:`InstrumentedStore` wraps the store :func:`~jobsvc.service.open_service` uses and
reports every public call to the observer (``store_operation``): its operation name, how
long it took on trio's clock, and whether it raised StoreUnavailable. It holds no SQL and
changes nothing: each call goes straight to the wrapped store.
``tests/obs`` checks that every public coroutine of :class:`~jobsvc.store.Store` is
wrapped here, so a new store operation cannot go untimed by mistake.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import TypeVar

import trio

from ..errors import StoreUnavailable
from ..models import Job, JobState
from ..store import AttemptKey, ClaimRequest, ClaimResult, Counts, Finished, InsertResult, Store, Tx
from .observer import Observer

__all__ = ["InstrumentedStore"]

T = TypeVar("T")


class InstrumentedStore(Store):
    """``inner``, with each public call timed and reported to ``observer``."""

    def __init__(self, inner: Store, observer: Observer) -> None:
        self.inner = inner
        self._observer = observer
        self.exclusive = inner.exclusive
        self.kind = inner.kind

    async def _timed(self, operation: str, call: Awaitable[T]) -> T:
        started = trio.current_time()
        unavailable = False
        try:
            return await call
        except StoreUnavailable:
            unavailable = True
            raise
        finally:
            self._observer.store_operation(operation, trio.current_time() - started, unavailable=unavailable)

    # -- the transaction runners: only the inherited defaults would use them --------------

    async def _write(self, fn: Callable[[Tx], T], *, durable: bool = False) -> T:
        return await self.inner._write(fn, durable=durable)

    async def _read(self, fn: Callable[[Tx], T]) -> T:
        return await self.inner._read(fn)

    # -- the contract, timed -----------------------------------------------------------

    async def insert(self, jobs: Sequence[Job]) -> list[InsertResult]:
        return await self._timed("insert", self.inner.insert(jobs))

    async def insert_and_claim(self, jobs: Sequence[Job], claim: ClaimRequest) -> tuple[list[InsertResult], ClaimResult]:
        return await self._timed("insert_and_claim", self.inner.insert_and_claim(jobs, claim))

    async def find(self, jobs: Sequence[Job]) -> list[Job | None]:
        return await self._timed("find", self.inner.find(jobs))

    async def get(self, job_id: str) -> Job | None:
        return await self._timed("get", self.inner.get(job_id))

    async def list_jobs(
        self,
        *,
        states: Collection[JobState] = (),
        task: str | None = None,
        after: int | None = None,
        limit: int = 100,
        tenant: str | None = None,
    ) -> list[Job]:
        return await self._timed("list", self.inner.list_jobs(states=states, task=task, after=after, limit=limit, tenant=tenant))

    async def claim(self, *, owner: str, now: float, lease: float, limit: int, tasks: Collection[str] | None = None) -> ClaimResult:
        return await self._timed("claim", self.inner.claim(owner=owner, now=now, lease=lease, limit=limit, tasks=tasks))

    async def record(self, finished: Sequence[Finished]) -> list[Job | None]:
        return await self._timed("record", self.inner.record(finished))

    async def modify(self, job_id: str, change: Callable[[Job], Job], *, tenant: str | None = None) -> Job:
        return await self._timed("modify", self.inner.modify(job_id, change, tenant=tenant))

    async def heartbeat(self, *, owner: str, now: float, lease: float, held: Collection[AttemptKey]) -> dict[AttemptKey, bool]:
        return await self._timed("heartbeat", self.inner.heartbeat(owner=owner, now=now, lease=lease, held=held))

    async def rescue(self, *, now: float, max_rescues: int, expired_only: bool = True) -> list[Job]:
        return await self._timed("rescue", self.inner.rescue(now=now, max_rescues=max_rescues, expired_only=expired_only))

    async def next_run_at(self, *, tasks: Collection[str] | None = None) -> float | None:
        return await self._timed("next_run_at", self.inner.next_run_at(tasks=tasks))

    async def counts(self, *, tenant: str | None = None) -> Counts:
        return await self._timed("counts", self.inner.counts(tenant=tenant))

    async def prune(self, *, finished_before: float) -> int:
        return await self._timed("prune", self.inner.prune(finished_before=finished_before))

    async def ping(self) -> None:
        await self._timed("ping", self.inner.ping())

    # -- not timed: waiting is not an operation ----------------------------------------

    async def wait_for_work(self) -> None:
        await self.inner.wait_for_work()

    async def aclose(self) -> None:
        await self.inner.aclose()

    def statistics(self) -> dict[str, int]:
        return self.inner.statistics()

    @property
    def is_reporter(self) -> bool:
        return self.inner.is_reporter
