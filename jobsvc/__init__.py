"""jobsvc: a durable HTTP job-processing service on Starlette, hypercorn and trio.

Layout (arrows point at what a module may import; the pure modules import no trio)::

    models   Job, JobState, the TRANSITIONS table, Outcome -> next state   (pure)
    retry    capped exponential backoff with full jitter                    (pure)
    errors   the exception tree, each with its HTTP status                  (pure)
    codec    one cattrs converter: requests, store rows, the public JSON    (pure)
    config   Settings from flags and JOBSVC_* variables                     (pure)
    clock    the one seam through which the time is read
      ^
    store/   the contract and the operations written once (base), over three dialects:
             memory, sqlite (embedded default), postgres; all SQL lives here
      ^
    tasks    @task, the registry, JobContext; builtin and demo task modules
      ^
    service/ open_service(): the runner (channel, workers, claim loop), the executor
             (one attempt -> an Outcome), the recorder (group-committed outcomes),
             maintenance (heartbeat, rescue, prune), the attempts table, the shutdown
             state, and JobService, the facade the HTTP layer calls
      ^
    auth     API keys (SHA-256 only, the keys file, reload), Principal and OPEN, limits
             per key, the token bucket (on trio's clock)
      ^
    app      the Starlette routes (create_app(service)) and ACCESS, a rule per route;
             guard: Host, browser protections, keys, scopes and rates before any route;
             middleware: request ids, access log, HTTP metrics; metrics: the
             PrometheusObserver and /metrics; logs: structlog rendering (JSON or console);
             dashboard/: the web UI mounted at /ui (pages, live updates, sessions)
      ^
    server   run_service: hypercorn + open_service + signals (SIGHUP: keys reloaded);
             asgi: the hypercorn CLI entry
      ^
    cli      ``jobsvc serve`` / ``migrate`` / ``keys``;  __main__: ``python -m jobsvc``

The public names are re-exported here.
"""

from __future__ import annotations

__version__ = "0.2.0"

import importlib
from typing import Any

#: Public name -> the module that defines it. Imported on first use (PEP 562), so that
#: ``import jobsvc.client`` does not load the server side.
_PUBLIC = {
    "Backoff": "retry",
    "Clock": "clock",
    "Job": "models",
    "JobContext": "tasks",
    "JobService": "service",
    "JobState": "models",
    "JobsvcError": "errors",
    "PermanentError": "tasks",
    "Registry": "tasks",
    "Running": "server",
    "Settings": "config",
    "Shutdown": "service",
    "Store": "store",
    "Submitted": "service",
    "SystemClock": "clock",
    "TaskSpec": "tasks",
    "TrioClock": "clock",
    "create_app": "app",
    "open_service": "service",
    "open_store": "store",
    "run_service": "server",
    "task": "tasks",
}


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        value = getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])


__all__ = [
    "Backoff",
    "Clock",
    "Job",
    "JobContext",
    "JobService",
    "JobState",
    "JobsvcError",
    "PermanentError",
    "Registry",
    "Running",
    "Settings",
    "Shutdown",
    "Store",
    "Submitted",
    "SystemClock",
    "TaskSpec",
    "TrioClock",
    "__version__",
    "create_app",
    "open_service",
    "open_store",
    "run_service",
    "task",
]
