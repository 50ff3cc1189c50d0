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
    app      the Starlette routes (create_app(service)); metrics
      ^
    server   run_service: hypercorn + open_service + signals;  asgi: the hypercorn CLI entry
      ^
    cli      ``jobsvc serve`` / ``jobsvc migrate``;  __main__: ``python -m jobsvc``

The public names are re-exported here.
"""

from __future__ import annotations

__version__ = "0.2.0"

from .app import create_app
from .clock import Clock, SystemClock, TrioClock
from .config import Settings
from .errors import JobsvcError
from .models import Job, JobState
from .retry import Backoff
from .server import Running, run_service
from .service import JobService, Shutdown, Submitted, open_service
from .store import Store, open_store
from .tasks import JobContext, PermanentError, Registry, TaskSpec, task

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
