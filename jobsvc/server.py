"""``run_service``: hypercorn, the job service and the signal watcher in one nursery.

::

    trio.run(run_service, settings)
      nursery
       |- signals               SIGINT/SIGTERM -> Shutdown.begin(); a second one -> force()
       '- open_service(settings)                           (jobsvc.service)
            '- hypercorn.trio.serve(create_app(service), shutdown_trigger=Shutdown.http_stop)

On the first signal /ready turns 503 and submissions get 503, the claim loop stops and the
workers get ``grace`` seconds, after which whatever still runs is cancelled and released
back to pending. hypercorn keeps answering (503s) for ``drain_delay`` seconds, so a load
balancer sees the instance leave, then stops accepting and finishes in-flight requests
(within ``grace``). The store stays open until hypercorn has answered its last request.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import threading
from collections.abc import Callable

import attrs
import hypercorn.trio
import trio
from hypercorn.config import Config as HypercornConfig

from .app import create_app
from .clock import Clock
from .config import Settings
from .errors import ConfigError, unwrap
from .metrics import PrometheusObserver
from .retry import Rng
from .service import JobService, Shutdown, open_service
from .tasks import Registry

__all__ = ["Running", "hypercorn_config", "run_service"]

log = logging.getLogger("jobsvc")

#: How long after the drain deadline hypercorn may still take to close its connections.
HTTP_SLACK = 1.0
#: A service still not stopped this long after its graceful stop should have ended (grace +
#: drain delay after the first signal), or after a second signal, has a handler that ignores cancellation: the process exits (exit code 3).
STOP_SLACK, FORCE_SLACK = 10.0, 5.0
EXIT_STUCK = 3


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


def _exit_stuck() -> None:
    log.error(
        "jobsvc did not stop: a job handler ignores cancellation (blocking code in an async handler?); "
        "exiting now with code %d; its job will be rescued (at the next start on SQLite, when its lease "
        "expires on PostgreSQL)",
        EXIT_STUCK,
    )
    logging.shutdown()
    os._exit(EXIT_STUCK)


async def _watchdog(shutdown: Shutdown) -> None:
    """A handler stuck in code that ignores cancellation (``trio.to_thread.run_sync`` without
    ``abandon_on_cancel``, a blocking call in an ``async def``) must not keep the process past
    its drain: exit, as a crash would, and let the job be rescued. A thread timer backs this
    task up for a handler that blocks the event loop itself (then no signal gets through
    either)."""
    await shutdown.requested.wait()
    stopped = threading.Event()
    def backstop_fired() -> None:
        if not stopped.is_set():
            _exit_stuck()

    backstop = threading.Timer(shutdown.stop_budget + STOP_SLACK + FORCE_SLACK, backstop_fired)
    backstop.daemon = True
    backstop.start()
    try:
        await shutdown.overdue(after_grace=STOP_SLACK, after_force=FORCE_SLACK)
        if not shutdown.stopped.is_set():
            _exit_stuck()
    finally:
        stopped.set()
        backstop.cancel()


async def _watch_signals(shutdown: Shutdown, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()
        async for signum in signals:
            if not shutdown.draining:
                log.info("%s received: shutting down gracefully (again to stop now)", signal.Signals(signum).name)
                shutdown.begin()
            else:
                log.warning("%s received again: stopping now", signal.Signals(signum).name)
                shutdown.force()


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
    shutdown = Shutdown(grace=settings.grace, drain_delay=settings.drain_delay)
    async with trio.open_nursery() as nursery:
        if handle_signals:
            await nursery.start(_watch_signals, shutdown)
            nursery.start_soon(_watchdog, shutdown)
        async with open_service(
            settings, registry=registry, clock=clock, rng=rng, observer=PrometheusObserver(), shutdown=shutdown
        ) as service:
            if not shutdown.draining:  # not shut down while recovery waited for the store
                async with trio.open_nursery() as http:
                    # never serve past the drain deadline plus the drain delay
                    shutdown.attach(http.cancel_scope, slack=HTTP_SLACK + settings.drain_delay)
                    try:
                        binds = await http.start(
                            lambda task_status: hypercorn.trio.serve(
                                create_app(service),  # type: ignore[arg-type]
                                hypercorn_config(settings),
                                shutdown_trigger=shutdown.http_stop,
                                task_status=task_status,
                            )
                        )
                    except (OSError, BaseExceptionGroup) as exc:
                        error = unwrap(exc)
                        if not isinstance(error, OSError):
                            raise
                        shutdown.force()
                        raise ConfigError(f"cannot listen on {settings.bind}: {error.strerror or error}") from None
                    log.info(
                        "jobsvc serving on %s (store: %s, %d workers, tasks: %s)",
                        ", ".join(binds), service.statistics()["store"], settings.workers, ", ".join(service.task_names()),
                    )
                    if on_listening is not None:
                        on_listening(binds)
                    task_status.started(Running(service, binds))
        nursery.cancel_scope.cancel()  # the signal watcher
    log.info("jobsvc stopped")
