"""Run one attempt of a job and say how it ended: an :data:`~jobsvc.models.Outcome` value.

Whatever the handler raises is contained and becomes a :class:`~jobsvc.models.Failed`
outcome: ``Exception`` and also ``SystemExit``, ``KeyboardInterrupt``, ``GeneratorExit`` or
any other ``BaseException`` a handler (or a library it calls) raises, so no job can take
the service down. The one thing that passes through is the cancellation of an enclosing
scope (the shutdown deadline): the worker hands the job back and lets it propagate.

The attempt's own cancel scope ends it early: cancelled on purpose (a client's cancel, or
the job's lease lost to another instance: ``stopped()`` is true) it is
:class:`~jobsvc.models.Cancelled`; cancelled by the runner at the attempt's time limit,
``Failed("Timeout", ...)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio

from .. import codec
from ..models import Cancelled, Failed, Job, Outcome, Succeeded
from ..tasks import JobContext, PermanentError, TaskSpec
from .handlers import HandlerFailed, Handlers

__all__ = ["run_attempt", "timed_out"]


def _holds_cancelled(exc: BaseException) -> bool:
    """A trio.Cancelled, or an exception group holding one: an enclosing scope's business."""
    if isinstance(exc, trio.Cancelled):
        return True
    return isinstance(exc, BaseExceptionGroup) and exc.subgroup(trio.Cancelled) is not None


def failure(exc: BaseException) -> Failed:
    """An exception as a failed outcome; robust to exceptions whose str() fails. A worker
    process's failure keeps the type name it had there."""
    try:
        message = str(exc) or repr(exc)
    except Exception:  # noqa: BLE001 - a broken __str__ must not take the worker down
        message = f"<{type(exc).__name__} with an unprintable message>"
    if isinstance(exc, HandlerFailed):
        return Failed(exc.type_name, message, permanent=exc.permanent)
    return Failed(type(exc).__name__, message, permanent=isinstance(exc, PermanentError))


def timed_out(seconds: float) -> Failed:
    return Failed("Timeout", f"the attempt took longer than {seconds:g}s")


async def _call(job: Job, spec: TaskSpec, ctx: JobContext, handlers: Handlers) -> Outcome:
    try:
        payload: Any = job.payload
        if spec.payload is not None and spec.kind != "process":  # a worker process validates its own
            payload = codec.structure(job.payload, spec.payload, path="$.payload")
        result = await handlers.call(spec, payload, ctx)
        codec.check_json_result(result)
    except BaseException as exc:  # noqa: BLE001 - contained: see the module docstring
        if _holds_cancelled(exc):
            raise
        return failure(exc)
    return Succeeded(result)


async def run_attempt(
    job: Job,
    spec: TaskSpec,
    ctx: JobContext,
    *,
    scope: trio.CancelScope,
    timeout: float,
    stopped: Callable[[], bool],
    handlers: Handlers,
) -> Outcome:
    """Run the attempt inside ``scope``; return how it ended. The runner cancels ``scope``
    when the attempt's ``timeout`` (seconds) is up; ``stopped()`` tells a cancel on purpose
    (a client's cancel, a lost lease) from that."""
    outcome: Outcome = Failed("Interrupted", "the attempt did not finish")
    try:
        with scope:
            outcome = await _call(job, spec, ctx, handlers)
    except BaseException as exc:  # noqa: BLE001 - see below
        # The handler's own nursery raised a group holding our scope's Cancelled and some
        # error; the scope took its Cancelled back and the rest is left: the attempt ended.
        if _holds_cancelled(exc) or not scope.cancel_called:
            raise  # an enclosing scope's cancellation (shutdown): not ours to contain
        return Cancelled() if stopped() else timed_out(timeout)
    if scope.cancelled_caught:
        return Cancelled() if stopped() else timed_out(timeout)
    return outcome
