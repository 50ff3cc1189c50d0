"""A worker process for ``@task(..., process=True)`` handlers: ``python -m jobsvc.worker_process FD``.

It reads requests from the connection on file descriptor FD (a socket the service made),
calls handlers one at a time and answers each; it ends when the connection closes. The
first message is ``("init", sys.path, log level, log format)`` from the service, so task
modules import here as they do there. SIGINT is ignored: the service decides when to stop
(it kills the process when an attempt is cancelled).
"""

from __future__ import annotations

import importlib
import logging
import multiprocessing.connection
import signal
import sys
from typing import Any

from . import codec
from .tasks import JobContext, PermanentError, TaskSpec

__all__ = ["serve"]


def _describe(exc: BaseException) -> str:
    try:
        return str(exc) or repr(exc)
    except Exception:  # noqa: BLE001 - a broken __str__ must not take the process down
        return f"<{type(exc).__name__} with an unprintable message>"


def _call(specs: dict[tuple[str, str], TaskSpec], module_name: str, task_name: str, payload: Any, fields: dict[str, Any]) -> Any:
    spec = specs.get((module_name, task_name))
    if spec is None:
        module = importlib.import_module(module_name)
        spec = next(v for v in vars(module).values() if isinstance(v, TaskSpec) and v.name == task_name)
        specs[(module_name, task_name)] = spec
    value = payload if spec.payload is None else codec.structure(payload, spec.payload, path="$.payload")
    extra = {"job_id": fields["job_id"], "task": fields["task"], "attempt": fields["attempt"]}
    ctx = JobContext(**fields, log=logging.LoggerAdapter(logging.getLogger("jobsvc.job"), extra))
    result = spec.fn(value, ctx)
    codec.check_json_result(result)
    return result


def serve(conn: multiprocessing.connection.Connection) -> None:
    """Answer requests until the connection closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    specs: dict[tuple[str, str], TaskSpec] = {}
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message[0] == "init":
            _, path, level, fmt = message
            sys.path[:] = path
            try:
                from .logs import configure_logging

                configure_logging(level, fmt)
            except Exception:  # noqa: BLE001 - logging is a nicety here
                logging.basicConfig(level=str(level).upper())
            continue
        _, module_name, task_name, payload, fields = message
        try:
            reply: tuple[Any, ...] = ("ok", _call(specs, module_name, task_name, payload, fields))
        except BaseException as exc:  # noqa: BLE001 - every failure goes back to the service
            reply = ("error", type(exc).__name__, _describe(exc), isinstance(exc, PermanentError))
        try:
            conn.send(reply)
        except (OSError, ValueError):
            return


if __name__ == "__main__":  # pragma: no cover - the service starts it
    serve(multiprocessing.connection.Connection(int(sys.argv[1])))
