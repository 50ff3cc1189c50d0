"""Task handlers: the ``@task`` decorator, the registry and the context a handler gets.

A task module defines handlers at module level::

    import attrs
    from jobsvc.tasks import task, JobContext

    @attrs.frozen
    class Welcome:
        to: str

    @task("welcome", payload=Welcome, max_attempts=3, timeout=10)
    async def welcome(payload: Welcome, ctx: JobContext) -> dict:
        ctx.log.info("sending to %s", payload.to)
        return {"sent": True}          # any JSON value; stored as the job's result

``jobsvc serve --tasks mymodule`` imports it and registers every ``@task`` it finds.
The payload is validated against ``payload`` (an attrs class, ``str``, ``int``, ``list[...]``
...; ``None`` accepts any JSON) when the job is submitted, so a bad payload is a 422 and
never reaches the queue. Raising any exception fails the attempt (it is retried with
backoff, then dead-lettered); raising :class:`PermanentError` dead-letters at once.

Three kinds of handler (see :mod:`jobsvc.service.handlers`):

* ``async def``: runs on the event loop, beside the HTTP server; it must await its I/O and
  never block (a blocking call stalls every job and every request, and cannot be timed out);
* a plain ``def``: runs in a thread, for blocking libraries; its attempt still ends on time
  (its timeout, a cancel, the shutdown): the thread is abandoned and runs on until it
  returns;
* ``def`` with ``process=True``: runs in a worker process, for CPU-bound work; a cancelled
  attempt's process is killed. The handler must be defined at module level.

Delivery is at-least-once: a handler may run again after a crash, so make its effects
idempotent (``ctx.job_id`` is stable).
"""

from __future__ import annotations

import importlib
import inspect
import logging
import random
import types
import typing
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import attrs

from .errors import ConfigError
from .retry import Backoff, Rng

__all__ = ["JobContext", "PermanentError", "Registry", "TaskSpec", "payload_schema", "task"]

#: An ``async def handler(payload, ctx)``, or a plain ``def handler(payload, ctx)``.
Handler = Callable[[Any, "JobContext"], Awaitable[Any]] | Callable[[Any, "JobContext"], Any]
#: How a handler is called: on the event loop, in a thread, or in a worker process.
KINDS = ("async", "thread", "process")


class PermanentError(Exception):
    """Raised by a handler: the job cannot succeed; dead-letter it without more attempts."""


@attrs.frozen(kw_only=True)
class JobContext:
    job_id: str
    task: str
    attempt: int  #: 1 for the first attempt
    max_attempts: int
    lease_token: int  #: the fencing token of this claim: it changes if the job is run again
    log: logging.LoggerAdapter[logging.Logger]
    #: ``rng(low, high)``: the service's random source, for handlers that draw at random
    #: (tests pin it, so such a handler's outcome is known)
    rng: Rng = random.uniform


@attrs.frozen(kw_only=True)
class TaskSpec:
    name: str
    fn: Handler
    payload: Any = None  #: the payload type; None accepts any JSON value
    max_attempts: int | None = None  #: None: the service default (--max-attempts)
    timeout: float | None = None  #: seconds per attempt; None: the service default (--timeout)
    backoff: Backoff | None = None  #: None: the service default (--backoff-base/--backoff-cap)
    description: str = ""
    kind: str = attrs.field(default="async", validator=attrs.validators.in_(KINDS))

    async def __call__(self, payload: Any, ctx: JobContext) -> Any:
        """Call an ``async`` handler (the service calls the others through its runtime)."""
        return await self.fn(payload, ctx)


def task(
    name: str,
    *,
    payload: Any = None,
    max_attempts: int | None = None,
    timeout: float | None = None,
    backoff: Backoff | None = None,
    process: bool = False,
) -> Callable[[Handler], TaskSpec]:
    """Declare ``handler(payload, ctx)`` as the task ``name``: an ``async def`` runs on the
    event loop, a plain ``def`` in a thread, a plain ``def`` with ``process=True`` in a
    worker process."""
    if max_attempts is not None and max_attempts < 1:
        raise ValueError("max_attempts must be at least 1")
    if timeout is not None and timeout <= 0:
        raise ValueError("timeout must be positive")

    def decorate(fn: Handler) -> TaskSpec:
        if not callable(fn):
            raise TypeError("@task decorates a function: handler(payload, ctx)")
        is_async = inspect.iscoroutinefunction(fn)
        if process and is_async:
            raise TypeError(f"task {name!r}: process=True runs a plain def in a worker process, not an async def")
        if process and "<locals>" in getattr(fn, "__qualname__", ""):
            raise TypeError(f"task {name!r}: a process=True handler must be defined at module level")
        doc = (fn.__doc__ or "").strip().splitlines()
        return TaskSpec(
            name=name,
            fn=fn,
            payload=payload,
            max_attempts=max_attempts,
            timeout=timeout,
            backoff=backoff,
            description=doc[0] if doc else "",
            kind="process" if process else "async" if is_async else "thread",
        )

    return decorate


class Registry:
    """Task name -> TaskSpec. Built from modules, not from global state."""

    def __init__(self, specs: Iterable[TaskSpec] = ()) -> None:
        self._tasks: dict[str, TaskSpec] = {}
        for spec in specs:
            self.add(spec)

    def add(self, spec: TaskSpec) -> None:
        if spec.name in self._tasks and self._tasks[spec.name] is not spec:
            raise ConfigError(f"two tasks are named {spec.name!r}")
        self._tasks[spec.name] = spec

    def add_module(self, module: types.ModuleType) -> int:
        found = [v for v in vars(module).values() if isinstance(v, TaskSpec)]
        for spec in found:
            self.add(spec)
        return len(found)

    @classmethod
    def from_modules(cls, names: Iterable[str], *, builtins: bool = True) -> Registry:
        registry = cls()
        for name in ["jobsvc.builtin"] * builtins + list(names):
            try:
                module = importlib.import_module(name)
            except ImportError as exc:
                raise ConfigError(f"cannot import task module {name!r}: {exc}") from None
            if registry.add_module(module) == 0:
                raise ConfigError(f"task module {name!r} defines no @task handlers")
        return registry

    def get(self, name: str) -> TaskSpec | None:
        return self._tasks.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._tasks

    def __iter__(self) -> typing.Iterator[TaskSpec]:
        return iter(sorted(self._tasks.values(), key=lambda s: s.name))

    def names(self) -> list[str]:
        return sorted(self._tasks)


_JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean"}


def payload_schema(type_: Any) -> dict[str, Any]:
    """A JSON Schema for a payload type, for ``GET /tasks``."""
    if type_ is None or type_ is Any:
        return {}
    if type_ in _JSON_TYPES:
        return {"type": _JSON_TYPES[type_]}
    origin, args = typing.get_origin(type_), typing.get_args(type_)
    if origin in (list, tuple, typing.Sequence) and args:
        return {"type": "array", "items": payload_schema(args[0])}
    if origin is dict:
        return {"type": "object", "additionalProperties": payload_schema(args[1]) if len(args) == 2 else {}}
    if origin in (typing.Union, types.UnionType):
        return {"anyOf": [{"type": "null"} if a is type(None) else payload_schema(a) for a in args]}
    if attrs.has(type_):
        hints = typing.get_type_hints(type_)
        fields = attrs.fields(type_)
        return {
            "type": "object",
            "properties": {f.name: payload_schema(hints.get(f.name, Any)) for f in fields},
            "required": [f.name for f in fields if f.default is attrs.NOTHING],
            "additionalProperties": False,
        }
    return {}
