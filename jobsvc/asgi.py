"""``hypercorn --worker-class trio jobsvc.asgi:app``: jobsvc under the hypercorn CLI.

Settings come from ``JOBSVC_*`` environment variables (``JOBSVC_BIND`` is ignored: hypercorn
binds). The store and the workers start in the ASGI lifespan and drain at its shutdown.

Caveats, prefer ``jobsvc serve``:

* Use ``--worker-class trio`` and ``--workers 1`` with SQLite (one process owns the file);
  with PostgreSQL, several hypercorn workers are several instances and that is fine.
* hypercorn's own ``--graceful-timeout`` (default 3 s) bounds the HTTP drain; the job drain
  (``JOBSVC_GRACE``) runs after it, in the lifespan shutdown. Give your orchestrator a kill
  timeout larger than both.
* A SIGTERM sent straight to a hypercorn *worker* process (not the parent) kills it without
  a drain; its running jobs are rescued at the next start (SQLite) or when their lease
  expires (PostgreSQL).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio
from starlette.applications import Starlette

from .app import create_app
from .config import Settings
from .metrics import PrometheusObserver
from .service import JobService
from .store import open_store
from .tasks import Registry

__all__ = ["app"]


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    settings = Settings.from_sources({}, os.environ)
    registry = Registry.from_modules(settings.tasks)
    observer: PrometheusObserver = app.state.observer
    async with open_store(settings.database, migrate=settings.migrate) as store:
        service = JobService(store=store, registry=registry, settings=settings, observer=observer)
        app.state.service = service
        app.state.max_body = settings.max_body
        async with trio.open_nursery() as nursery:
            await nursery.start(service.run)
            try:
                yield
            finally:
                service.begin_shutdown()
                with trio.CancelScope(shield=True):
                    await service.stopped.wait()


app = create_app(lifespan=lifespan)
