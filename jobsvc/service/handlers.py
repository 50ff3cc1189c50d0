"""How a task's handler is called: on the event loop, in a thread, or in a worker process.

* ``async def`` handlers run on the event loop, beside the HTTP server: they must await
  their I/O and never block.
* A plain ``def`` handler runs in a thread (a limiter of its own, as many threads as
  workers). Its attempt can always end on time: when it is cancelled (its timeout, a
  client's cancel, the end of the shutdown grace), the await returns at once and the thread
  is *abandoned*: Python cannot stop a thread, so it runs on until the function returns and
  its result is thrown away. Abandoned threads are counted until they end
  (``Handlers.abandoned``; /stats and the metrics show it), and they keep their place in the
  limiter meanwhile, so a handler that never returns shrinks the thread pool instead of
  growing it.
* ``@task(..., process=True)`` runs a plain ``def`` handler in a small pool of worker
  processes (CPU-bound work gets a GIL of its own). A cancelled attempt's process is killed
  and replaced: such a handler can always be stopped, even in the middle of C code.

Whatever the kind, a handler's exception is its attempt's failure; for a process handler
it arrives as :class:`HandlerFailed`, carrying the original type's name.
"""

from __future__ import annotations

import logging
import multiprocessing.connection
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from functools import partial
from typing import Any

import attrs
import trio

from ..tasks import JobContext, TaskSpec

__all__ = ["HandlerFailed", "Handlers", "ProcessPool"]

log = logging.getLogger("jobsvc")


class HandlerFailed(Exception):
    """A handler in a worker process raised ``type_name``: ``message``."""

    def __init__(self, type_name: str, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.type_name = type_name
        self.permanent = permanent


class Handlers:
    def __init__(self, *, workers: int, processes: int | None = None, log_level: str = "info", log_format: str = "json") -> None:
        self._threads = trio.CapacityLimiter(workers)
        self._lock = threading.Lock()
        self._abandoned = 0
        self._pool = ProcessPool(processes or os.cpu_count() or 1, log_level=log_level, log_format=log_format)

    @property
    def abandoned(self) -> int:
        """Threads of cancelled attempts still running their handler."""
        return self._abandoned

    @property
    def processes(self) -> int:
        """Worker processes alive."""
        return self._pool.alive

    async def call(self, spec: TaskSpec, payload: Any, ctx: JobContext) -> Any:
        """Call the handler of ``spec`` with a payload already validated (async and thread
        handlers) or as the JSON the job holds (process handlers, which validate it there)."""
        if spec.kind == "async":
            return await spec(payload, ctx)
        if spec.kind == "process":
            return await self._pool.call(spec, payload, ctx)
        return await self._in_thread(partial(spec.fn, payload, ctx), ctx)

    async def _in_thread(self, fn: Callable[[], Any], ctx: JobContext) -> Any:
        state = {"returned": False, "abandoned": False}

        def run() -> Any:
            try:
                return fn()
            finally:
                with self._lock:
                    state["returned"] = True
                    if state["abandoned"]:
                        self._abandoned -= 1

        try:
            return await trio.to_thread.run_sync(run, abandon_on_cancel=True, limiter=self._threads)
        except trio.Cancelled:
            with self._lock:
                if not state["returned"]:
                    state["abandoned"] = True
                    self._abandoned += 1
                    log.warning("job %s: its handler's thread did not stop; abandoned (it runs on until it returns)", ctx.job_id)
            raise

    def close(self) -> None:
        """Kill the worker processes (threads cannot be stopped: abandoned ones run on)."""
        self._pool.close()


@attrs.define(eq=False)
class _Worker:
    process: subprocess.Popen[bytes]
    conn: multiprocessing.connection.Connection


class ProcessPool:
    """Worker processes (``python -m jobsvc.worker_process``: a fresh interpreter, nothing of
    the service's event loop in it), started on first use, one call at a time each."""

    def __init__(self, size: int, *, log_level: str = "info", log_format: str = "json") -> None:
        self.size = size
        self._slots = trio.Semaphore(size)
        self._idle: list[_Worker] = []
        self._all: set[_Worker] = set()
        self._logging = (log_level, log_format)

    @property
    def alive(self) -> int:
        return sum(1 for w in self._all if w.process.poll() is None)

    def _start(self) -> _Worker:
        ours, theirs = socket.socketpair()
        with theirs:
            process = subprocess.Popen(
                [sys.executable, "-m", "jobsvc.worker_process", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
            )
        conn = multiprocessing.connection.Connection(ours.detach())
        conn.send(("init", list(sys.path), *self._logging))
        worker = _Worker(process, conn)
        self._all.add(worker)
        return worker

    def _kill(self, worker: _Worker) -> None:
        self._all.discard(worker)
        worker.conn.close()
        if worker.process.poll() is None:
            worker.process.kill()
        worker.process.wait(timeout=5)

    async def call(self, spec: TaskSpec, payload: Any, ctx: JobContext) -> Any:
        request = ("call", spec.fn.__module__, spec.name, payload, _context_fields(ctx))
        async with self._slots:
            worker = self._idle.pop() if self._idle else await trio.to_thread.run_sync(self._start)
            done = False
            try:
                worker.conn.send(request)
                reply = await trio.to_thread.run_sync(worker.conn.recv, abandon_on_cancel=True)
                done = True
            finally:
                if done:
                    self._idle.append(worker)
                else:  # cancelled (or the process died): kill it, a new one takes its place
                    self._kill(worker)
        if reply[0] == "ok":
            return reply[1]
        raise HandlerFailed(reply[1], reply[2], permanent=reply[3])

    def close(self) -> None:
        for worker in list(self._all):
            self._kill(worker)
        self._idle.clear()


def _context_fields(ctx: JobContext) -> dict[str, Any]:
    return {"job_id": ctx.job_id, "task": ctx.task, "attempt": ctx.attempt, "max_attempts": ctx.max_attempts, "lease_token": ctx.lease_token}
