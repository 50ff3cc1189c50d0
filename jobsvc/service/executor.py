"""Run one attempt of a job and say how it ended: an :data:`~jobsvc.models.Outcome` value.

Whatever the handler raises is contained and becomes a :class:`~jobsvc.models.Failed`
outcome: ``Exception`` and also ``SystemExit``, ``KeyboardInterrupt``, ``GeneratorExit`` or
any other ``BaseException`` a handler (or a library it calls) raises, so no job can take
the service down. The one thing that passes through is the cancellation of an enclosing
scope (the shutdown deadline): the worker hands the job back and lets it propagate.

Two cancel scopes of the attempt's own end it early: the attempt's scope (a client's
cancel, or the job's lease lost to another instance) and the per-attempt deadline
(``Failed("Timeout", ...)``).
"""

from __future__ import annotations

from typing import Any

import trio

from .. import codec
from ..models import Cancelled, Failed, Job, Outcome, Succeeded
from ..tasks import JobContext, PermanentError, TaskSpec

__all__ = ["run_attempt"]


def _holds_cancelled(exc: BaseException) -> bool:
    """A trio.Cancelled, or an exception group holding one: an enclosing scope's business."""
    if isinstance(exc, trio.Cancelled):
        return True
    return isinstance(exc, BaseExceptionGroup) and exc.subgroup(trio.Cancelled) is not None


def failure(exc: BaseException) -> Failed:
    """An exception as a failed outcome; robust to exceptions whose str() fails."""
    try:
        message = str(exc) or repr(exc)
    except Exception:  # noqa: BLE001 - a broken __str__ must not take the worker down
        message = f"<{type(exc).__name__} with an unprintable message>"
    return Failed(type(exc).__name__, message, permanent=isinstance(exc, PermanentError))


def _timeout(seconds: float) -> Failed:
    return Failed("Timeout", f"the attempt took longer than {seconds:g}s")


async def _call(job: Job, spec: TaskSpec, ctx: JobContext) -> Outcome:
    try:
        payload: Any = job.payload if spec.payload is None else codec.structure(job.payload, spec.payload, path="$.payload")
        result = await spec(payload, ctx)
        codec.check_json_result(result)
    except BaseException as exc:  # noqa: BLE001 - contained: see the module docstring
        if _holds_cancelled(exc):
            raise
        return failure(exc)
    return Succeeded(result)


async def run_attempt(job: Job, spec: TaskSpec, ctx: JobContext, *, scope: trio.CancelScope, timeout: float) -> Outcome:
    """Run the attempt inside ``scope`` with a ``timeout``; return how it ended."""
    outcome: Outcome = Failed("Interrupted", "the attempt did not finish")
    deadline = trio.CancelScope()
    try:
        with scope:
            with trio.move_on_after(timeout) as deadline:
                outcome = await _call(job, spec, ctx)
    except BaseException as exc:  # noqa: BLE001 - see below
        # The handler's own nursery raised a group holding our scope's Cancelled and some
        # error; the scope took its Cancelled back and the rest is left: the attempt ended.
        if _holds_cancelled(exc):
            raise  # an enclosing scope's cancellation (shutdown): not ours to contain
        if scope.cancel_called:
            return Cancelled()
        if deadline.cancel_called:
            return _timeout(timeout)
        return failure(exc)  # pragma: no cover - _call contains everything else
    if scope.cancelled_caught:
        return Cancelled()
    if deadline.cancelled_caught:
        return _timeout(timeout)
    return outcome
