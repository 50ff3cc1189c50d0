"""``run_service``: one nursery running hypercorn, the job service and the signal watcher.

::

    trio.run(run_service, settings)
      open_store(settings.db)
        nursery
         |- JobService.run        dispatcher, maintenance, N workers
         |- hypercorn.trio.serve  HTTP, shutdown_trigger = service.shutdown_requested.wait
         '- signals               SIGINT/SIGTERM -> begin_shutdown; a second one -> force_stop

On the first signal /ready turns 503 and submissions get 503, hypercorn stops accepting
and finishes in-flight requests (within ``grace``), the dispatcher stops, the workers get
``grace`` seconds, and whatever still runs is cancelled and released back to pending.
"""

from __future__ import annotations

import logging
import random
import signal
from collections.abc import Callable

import attrs
import hypercorn.trio
import trio
from hypercorn.config import Config as HypercornConfig

from .app import create_app
from .clock import Clock, SystemClock
from .config import Settings
from .metrics import PrometheusObserver
from .retry import Rng
from .service import JobService
from .store import open_store
from .tasks import Registry

__all__ = ["Running", "hypercorn_config", "run_service"]

log = logging.getLogger("jobsvc")


@attrs.frozen
class Running:
    """What ``nursery.start(run_service, ...)`` hands back once the service is serving."""

    service: JobService
    binds: list[str]  #: e.g. ["http://127.0.0.1:41234"]

    @property
    def url(self) -> str:
        return self.binds[0]

    def shutdown(self) -> None:
        self.service.begin_shutdown()


def hypercorn_config(settings: Settings) -> HypercornConfig:
    config = HypercornConfig()
    config.bind = [settings.bind]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.include_server_header = False
    config.graceful_timeout = settings.grace
    config.read_timeout = 30  # per receive: a client that goes silent is dropped
    config.keep_alive_timeout = 5
    return config


async def _watch_signals(service: JobService, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()
        async for signum in signals:
            if not service.draining:
                log.info("%s received: shutting down gracefully (again to stop now)", signal.Signals(signum).name)
                service.begin_shutdown()
            else:
                log.warning("%s received again: stopping now", signal.Signals(signum).name)
                service.force_stop()


async def run_service(
    settings: Settings,
    *,
    registry: Registry | None = None,
    clock: Clock | None = None,
    rng: Rng = random.uniform,
    handle_signals: bool = False,
    on_listening: Callable[[list[str]], None] | None = None,
    task_status: trio.TaskStatus[Running] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until shut down (signal, or ``Running.shutdown()``), then drain and return."""
    registry = registry or Registry.from_modules(settings.tasks)
    observer = PrometheusObserver()
    async with open_store(settings.database, migrate=settings.migrate) as store:
        service = JobService(store=store, registry=registry, settings=settings, clock=clock or SystemClock(), rng=rng, observer=observer)
        app = create_app(service, observer=observer)
        async with trio.open_nursery() as nursery:
            if handle_signals:
                await nursery.start(_watch_signals, service)
            await nursery.start(service.run)
            if service.draining:  # shut down while recovery waited for the store
                nursery.cancel_scope.cancel()
                return
            http_done = trio.Event()

            async def serve_http(*, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
                try:
                    await hypercorn.trio.serve(
                        app,  # type: ignore[arg-type]
                        hypercorn_config(settings),
                        shutdown_trigger=service.shutdown_requested.wait,
                        task_status=task_status,
                    )
                finally:
                    http_done.set()

            binds = await nursery.start(serve_http)
            log.info("jobsvc serving on %s (store: %s, %d workers, tasks: %s)", ", ".join(binds), store.kind, settings.workers, ", ".join(registry.names()))
            if on_listening is not None:
                on_listening(binds)
            task_status.started(Running(service, binds))
            await service.stopped.wait()
            # hypercorn drains in-flight requests within the same grace; never wait past it.
            with trio.move_on_at(max(service.grace_deadline, trio.current_time()) + 1.0):
                await http_done.wait()
            nursery.cancel_scope.cancel()
    log.info("jobsvc stopped")
