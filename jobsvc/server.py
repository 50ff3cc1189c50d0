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

import logging
import random
import signal
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
        nursery.cancel_scope.cancel()  # the signal watcher
    log.info("jobsvc stopped")
