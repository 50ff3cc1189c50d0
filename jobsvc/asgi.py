"""``hypercorn --worker-class trio jobsvc.asgi:app``: jobsvc under the hypercorn CLI.

Settings come from ``JOBSVC_*`` environment variables (``JOBSVC_BIND`` is ignored: hypercorn
binds). The service (store, workers, recorder, maintenance) is opened with
:func:`jobsvc.service.open_service` in the ASGI lifespan, the same composition root as
``jobsvc serve``, and drains at its shutdown.

Logging is set up in the lifespan as ``jobsvc serve`` sets it up (``JOBSVC_LOG_LEVEL``,
``JOBSVC_LOG_FORMAT``); hypercorn's own messages go through it too. Once the service is open,
the module-level ``app`` sets the process's garbage collector up as ``jobsvc serve`` does
(:func:`jobsvc.server.tune_gc`); an app made with ``JobsvcASGI()`` leaves it alone.

Caveats, prefer ``jobsvc serve``:

* Use ``--worker-class trio`` and ``--workers 1`` with SQLite (one process owns the file);
  with PostgreSQL, several hypercorn workers are several instances and that is fine.
* hypercorn's own ``--graceful-timeout`` (default 3 s) bounds the HTTP drain; the job drain
  (``JOBSVC_GRACE``) runs after it, in the lifespan shutdown. Give your orchestrator a kill
  timeout larger than both.
* A SIGTERM sent straight to a hypercorn *worker* process (not the parent) kills it without
  a drain; its running jobs are rescued at the next start (SQLite) or when their lease
  expires (PostgreSQL).
* Access control: hypercorn binds, so jobsvc cannot refuse a non-loopback bind at start;
  without keys (``JOBSVC_AUTH_FILE``) it answers requests that reach a loopback address
  only (403 otherwise). Set ``JOBSVC_ALLOWED_HOSTS`` to the names clients use. The keys file
  is read at start-up: restart the workers (hypercorn reloads them on SIGHUP) to re-read it.
* If start-up fails (a configuration error, a SQLite file another worker holds, the asyncio
  worker class), the module-level ``app`` prints one line, ``jobsvc: error: ...``, and ends
  its worker process with exit code 2 (1: the store cannot be reached) instead of handing
  hypercorn an exception whose traceback it would print; hypercorn then stops its other
  workers. An app made with ``JobsvcASGI()`` reports ``lifespan.startup.failed`` instead.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import trio
from starlette.applications import Starlette
from starlette.responses import JSONResponse

from .app import create_app
from .auth import Authenticator
from .config import Settings
from .errors import ConfigError, JobsvcError, StoreUnavailable
from .logs import configure_logging
from .metrics import PrometheusObserver
from .server import log_access_control, tune_gc
from .service import open_service

__all__ = ["JobsvcASGI", "app"]

Scope = dict[str, Any]


class JobsvcASGI:
    """An ASGI app whose lifespan opens the service and whose requests go to
    ``create_app(service)`` once it is open."""

    def __init__(self, *, exit_on_startup_failure: bool = False, tune_gc: bool = False) -> None:
        self.app: Starlette | None = None
        #: print one line and end the (hypercorn worker) process when start-up fails
        self.exit_on_startup_failure = exit_on_startup_failure
        #: set the process's garbage collector up as ``jobsvc serve`` does, once started
        #: (:func:`jobsvc.server.tune_gc`)
        self.tune_gc = tune_gc

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if self.app is None:  # a request before start-up completed (or after it failed)
            response = JSONResponse({"status": "unavailable", "reason": "starting"}, status_code=503, headers={"Retry-After": "1"})
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _lifespan(self, receive: Any, send: Any) -> None:
        message = await receive()
        assert message["type"] == "lifespan.startup", message
        started = False
        try:
            if not _under_trio():
                raise ConfigError("jobsvc.asgi:app runs on trio: start hypercorn with --worker-class trio")
            settings = Settings.from_sources({}, os.environ)
            configure_logging(settings.log_level, settings.log_format)  # as under `jobsvc serve`
            auth = await trio.to_thread.run_sync(Authenticator.from_settings, settings)
            log_access_control(settings, auth)
            async with open_service(settings, observer=PrometheusObserver()) as service:
                self.app = create_app(service, auth=auth)
                if self.tune_gc:
                    tune_gc()
                await send({"type": "lifespan.startup.complete"})
                started = True
                await receive()  # lifespan.shutdown
                service.begin_shutdown()
            # leaving open_service drained the workers and closed the store
        except JobsvcError as exc:  # a configuration or store problem: one clear line
            phase = "shutdown" if started else "startup"
            if not started and self.exit_on_startup_failure:
                _exit_with(exc)
            await send({"type": f"lifespan.{phase}.failed", "message": f"jobsvc: error: {exc}"})
            return
        finally:
            self.app = None
        await send({"type": "lifespan.shutdown.complete"})


def _under_trio() -> bool:
    try:
        trio.lowlevel.current_task()
    except RuntimeError:  # hypercorn's asyncio (or uvloop) worker
        return False
    return True


def _exit_with(exc: JobsvcError) -> None:  # pragma: no cover - runs in a hypercorn worker (tested as a process)
    """One line on stderr, then end this process at once: nothing is open any more (the
    service and its store were closed when start-up failed), and a raised exception would
    reach multiprocessing, which prints it with its traceback."""
    # One write of the whole line: hypercorn's workers share stderr, and print() writes the
    # text and its newline apart, so two failing workers' lines could interleave.
    sys.stderr.flush()
    os.write(2, f"jobsvc: error: {exc}\n".encode(errors="replace"))
    os._exit(1 if isinstance(exc, StoreUnavailable) else 2)


#: The hypercorn CLI entry point: ``hypercorn --worker-class trio jobsvc.asgi:app``.
app = JobsvcASGI(exit_on_startup_failure=True, tune_gc=True)
