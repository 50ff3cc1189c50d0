"""``run_service``: hypercorn, the job service and the signal watcher in one nursery.

::

    trio.run(run_service, settings)
      nursery
       |- signals               SIGINT/SIGTERM -> Shutdown.begin(); a second one -> force();
       |                        SIGHUP -> read the API keys file again
       '- open_service(settings)                           (jobsvc.service)
            '- hypercorn.trio.serve(create_app(service, auth=...), shutdown_trigger=Shutdown.http_stop)

Before anything is opened, a non-loopback ``--bind`` without API keys is refused (unless
``--insecure-no-auth``, which is logged as a warning at every start, once serving), and the
keys file is read: a bad one stops the start with one line.

On the first signal /ready turns 503 and submissions get 503, the claim loop stops and the
workers get ``grace`` seconds, after which whatever still runs is cancelled and released
back to pending. hypercorn keeps answering (503s) for ``drain_delay`` seconds, so a load
balancer sees the instance leave, then stops accepting and finishes in-flight requests
(within ``grace``). The store stays open until hypercorn has answered its last request.
"""

from __future__ import annotations

import gc
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
from .auth import Authenticator
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


#: Seconds an idle keep-alive connection is kept, and (hypercorn runs the same timer from the
#: connection's start until its request's headers are in) the deadline for a request's headers:
#: a slowloris connection holds a descriptor for at most this long.
KEEP_ALIVE_TIMEOUT = 5
#: Connections the kernel holds for the listener until jobsvc accepts them (capped by
#: ``net.core.somaxconn``). hypercorn's default, 100, overflowed under a burst of short
#: connections (tests/faults/test_slow_clients.py, phase A: 300 connections opened and closed
#: at once): the kernel then drops new SYNs, and each dropped one costs its client a 1 s
#: retransmission.
LISTEN_BACKLOG = 1024


#: The cyclic garbage collector's thresholds in a serving process (Python's default: 700, 10, 10).
GC_THRESHOLD = (10_000, 10, 10)


def tune_gc() -> None:
    """Set Python's cyclic garbage collector up for a long-running server. Called once per
    process, by ``jobsvc serve`` once its modules are imported (before it opens the service)
    and by ``jobsvc.asgi:app`` once its lifespan has opened the service. It changes the
    whole process, so a program that embeds jobsvc otherwise decides for itself.

    Nearly everything a request or a job allocates is freed by reference counting within
    milliseconds. With CPython's default, a young-generation pass runs every 700 net
    allocations of tracked objects: so often under load that objects still in flight get
    promoted, and the old generation fills up until a full pass walks the whole heap, every
    request and job stalled meanwhile. Measured in a ``jobsvc serve`` (SQLite) under 10 s of
    saturating ``POST /jobs``: about 1,600 passes taking 1.3 s in all, 13 of them full passes
    of 41-63 ms each. With a young-generation pass every 10,000 net allocations: 10 passes and
    one middle one, 55 ms in all. ``gc.freeze()`` moves what start-up left alive (modules,
    classes, functions: about 52,000 objects) out of the collector's sight for good, so a full
    pass walks only what the service made since. There is no ``gc.collect()`` before it: at
    start-up one took 32 ms and found 27 unreachable objects."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)


def hypercorn_config(settings: Settings) -> HypercornConfig:
    config = HypercornConfig()
    config.bind = [settings.bind]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.include_server_header = False
    config.graceful_timeout = settings.grace
    config.read_timeout = 30  # per receive: a client that goes silent is dropped
    config.keep_alive_timeout = KEEP_ALIVE_TIMEOUT
    config.backlog = LISTEN_BACKLOG
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
    """A service that has not stopped well past its drain (the event loop blocked by a
    handler, or a part that hangs) exits, as a crash would, and its jobs are rescued.
    (A handler that merely ignores its cancellation is written off by the runner, and
    :func:`_exit_past_stuck_handlers` ends the process cleanly.) A thread timer backs this
    task up for the event loop blocked outright: then no trio task runs at all."""
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


async def _exit_past_stuck_handlers(shutdown: Shutdown, service: JobService, http_closed: trio.Event) -> None:
    """Once the shutdown has settled (every job handed back, every outcome written, the
    listener closed), handlers written off for ignoring their cancellation are all that
    keeps trio from returning: exit rather than wait for them. Nothing is lost: their jobs'
    outcomes were written when they were written off."""
    await shutdown.settled.wait()
    await http_closed.wait()
    stuck = int(service.statistics()["stuck_handlers"])
    if stuck and not shutdown.stopped.is_set():
        log.error(
            "jobsvc stopped: every job was handed back, but %d handler(s) that ignore cancellation still "
            "run; exiting without waiting for them",
            stuck,
        )
        logging.shutdown()
        os._exit(0)


async def _watch_signals(
    shutdown: Shutdown, auth: Authenticator | None = None, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        task_status.started()
        async for signum in signals:
            if signum == signal.SIGHUP:
                if auth is not None and auth.path is not None:
                    await trio.to_thread.run_sync(auth.reload)
                else:
                    log.info("SIGHUP received: no keys file to read again (--auth-file)")
            elif not shutdown.draining:
                log.info("%s received: shutting down gracefully (again to stop now)", signal.Signals(signum).name)
                shutdown.begin()
            else:
                log.warning("%s received again: stopping now", signal.Signals(signum).name)
                shutdown.force()


def log_access_control(settings: Settings, auth: Authenticator) -> None:
    """Say at start-up who may use the service; warn when anyone may."""
    if auth.enabled:
        log.info("access control: %d API keys from %s", len(auth.key_ids), auth.path)
    elif settings.insecure_no_auth:
        log.warning(
            "--insecure-no-auth: serving %s without API keys; anyone who can reach it can submit, cancel and read jobs",
            settings.bind,
        )
    else:
        log.info("no API keys configured (--auth-file): serving loopback addresses only")


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
    settings.check_exposure()
    auth = await trio.to_thread.run_sync(Authenticator.from_settings, settings)
    shutdown = Shutdown(grace=settings.grace, drain_delay=settings.drain_delay)
    async with trio.open_nursery() as nursery:
        if handle_signals:
            await nursery.start(_watch_signals, shutdown, auth)
            nursery.start_soon(_watchdog, shutdown)
        async with open_service(
            settings, registry=registry, clock=clock, rng=rng, observer=PrometheusObserver(), shutdown=shutdown
        ) as service:
            http_closed = trio.Event()
            if handle_signals:
                nursery.start_soon(_exit_past_stuck_handlers, shutdown, service, http_closed)
            if not shutdown.draining:  # not shut down while recovery waited for the store
                async with trio.open_nursery() as http:
                    # never serve past the drain deadline plus the drain delay
                    shutdown.attach(http.cancel_scope, slack=HTTP_SLACK + settings.drain_delay)
                    try:
                        binds = await http.start(
                            lambda task_status: hypercorn.trio.serve(
                                create_app(service, auth=auth),  # type: ignore[arg-type]
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
                    log_access_control(settings, auth)
                    if on_listening is not None:
                        on_listening(binds)
                    task_status.started(Running(service, binds))
            http_closed.set()
        nursery.cancel_scope.cancel()  # the signal watcher
    log.info("jobsvc stopped")
