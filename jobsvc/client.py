"""A Python client for jobsvc's HTTP API: :class:`Client` (sync) and :class:`AsyncClient`.

::

    with Client("http://127.0.0.1:3000", api_key=os.environ.get("JOBSVC_API_KEY")) as jobs:
        job = jobs.submit("email", {"to": "ada@example.com"})
        job = jobs.wait(job.id, timeout=60)          # long-polls GET /jobs/{id}?wait=S

    async with AsyncClient("http://127.0.0.1:3000") as jobs:   # under trio or asyncio
        job = await jobs.submit("email", {"to": "ada@example.com"})

Theory of operation
-------------------
Rule 1: the two clients share one core. ``_Core`` builds every request (a ``_Call``: method,
path, body, headers, whether it may be resent, how to read its answer), decides whether an
attempt is tried again (``_Attempts``), drives ``wait``'s long polls (``_WaitLoop``) and maps
each response to a typed result or an exception. ``Client`` and ``AsyncClient`` only send,
sleep and read the clock; they are the same few lines with and without ``await``.

Rule 2: retries never duplicate work. ``submit`` and ``submit_batch`` send an
``Idempotency-Key`` (generated per call unless given) and resend the *same request*, key
included, so a retried submission returns the first job instead of creating a second one.
A 429 or 503 is retried after its ``Retry-After`` (else a capped backoff); a connection
error or timeout is retried with capped backoff when the call is idempotent (every GET and
every submission), or when the request cannot have reached the server (connect errors).
``cancel`` and ``retry`` are not resent once they may have arrived. Every retry stays
within ``RetryPolicy.max_retries`` and ``RetryPolicy.max_time``.

Rule 3: sleeping and time go through the injected ``sleep`` and ``clock`` (``time.sleep`` /
``time.monotonic`` for ``Client``; ``anyio.sleep`` / ``anyio.current_time`` for
``AsyncClient``, which follow trio's clock, so tests on ``autojump_clock`` see exact times).
Nothing here is specific to trio or asyncio, and nothing imports the server side.

Responses are read tolerantly: unknown fields are ignored (and kept in ``.raw``, the JSON as
received); a missing or mistyped field that the client needs is an ``UnexpectedResponse``.

Exceptions (every one a ``ClientError``; an ``APIError`` carries the problem+json fields)::

    ClientError                         base; never raised directly
      x ServerUnreachable               no answer: connection refused, DNS failure, timeout
      x UnexpectedResponse              an answer that is not jobsvc's API (not JSON, fields missing)
      x WaitTimeout                     wait(): the job was not final in time (``job``: its last state)
      x APIError                        the server answered with an error (``status``, ``type``, ``detail``)
        x RequestRejected          4xx  the request is not acceptable as it is (400, 405, 413, 415...)
          + NotFound               404  no such route (is the URL jobsvc's?)
            + JobNotFound          404  no job has that id
          + Conflict               409  same id or Idempotency-Key, another body
            + IllegalTransition    409  retry/cancel in a state that does not allow it
          + InvalidJob             422  validation failed (``errors``: messages with JSON paths)
            + UnknownTask          422  no such task (``known_tasks``)
          + TooManyRequests        429  still 429 after the retries (``retry_after``)
        x ServerError              5xx  the server failed
          + Unavailable            503  still 503 after the retries: draining, store down (``retry_after``)
"""

from __future__ import annotations

import datetime as dt
import email.utils
import math
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from typing import Any, ClassVar, Generic, TypeVar
from urllib.parse import quote

import anyio
import attrs
import cattrs
import httpx
from cattrs.gen import make_dict_structure_fn, override

from .models import FINAL_STATES, JobState
from .retry import Backoff, Rng

__all__ = [
    "DEFAULT_TIMEOUT",
    "DEFAULT_URL",
    "FINAL_STATES",
    "MAX_WAIT",
    "APIError",
    "AsyncClient",
    "Client",
    "ClientError",
    "Conflict",
    "Health",
    "IllegalTransition",
    "InstanceStats",
    "InvalidJob",
    "Job",
    "JobError",
    "JobNotFound",
    "JobSpec",
    "JobState",
    "NotFound",
    "Page",
    "Readiness",
    "RequestRejected",
    "RetryPolicy",
    "ServerError",
    "ServerUnreachable",
    "Stats",
    "TaskInfo",
    "TooManyRequests",
    "Unavailable",
    "UnexpectedResponse",
    "UnknownTask",
    "WaitTimeout",
    "error_from_response",
    "retry_after_seconds",
]

DEFAULT_URL = "http://127.0.0.1:3000"
#: Seconds a request may take (connect, write, read); a long poll gets its wait on top.
DEFAULT_TIMEOUT = 10.0
#: The longest long poll the server accepts (``GET /jobs/{id}?wait=S``).
MAX_WAIT = 60.0
#: ``wait`` sends at most one poll per this many seconds, even if the server answers early.
MIN_POLL_GAP = 1.0
PROBLEM_PREFIX = "urn:jobsvc:problem:"
#: Seconds a pooled connection may sit idle and still be reused: below the server's 5 s
#: keep-alive. httpx's default is 5 s too, and a connection reused just as the server
#: closes it fails the request (a reset, or "Server disconnected without sending a
#: response"): under load, about every second run of 3,000 requests on 32 connections did.
KEEPALIVE_EXPIRY = 3.0

T = TypeVar("T")
_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20, keepalive_expiry=KEEPALIVE_EXPIRY)  # httpx's but the expiry


# -- exceptions ----------------------------------------------------------------------


class ClientError(Exception):
    """The jobsvc client failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class ServerUnreachable(ClientError):
    """The server could not be reached."""

    def __init__(self, message: str | None = None, *, url: str = "") -> None:
        super().__init__(message)
        self.url = url


class UnexpectedResponse(ClientError):
    """The server's answer is not what jobsvc's API sends."""


class WaitTimeout(ClientError):
    """The job did not reach a final state in time."""

    def __init__(self, message: str | None = None, *, job: Job) -> None:
        super().__init__(message)
        self.job = job


class APIError(ClientError):
    """The server answered with an error."""

    #: The status this class stands for (None: a range; see ``_error_class``).
    http_status: ClassVar[int | None] = None

    def __init__(self, message: str | None = None, *, status: int, problem: Mapping[str, Any] | None = None) -> None:
        self.problem: Mapping[str, Any] = problem or {}
        self.status = status
        self.type: str = _text(self.problem.get("type"))  #: ``urn:jobsvc:problem:<slug>``, or ""
        self.title: str = _text(self.problem.get("title"))
        self.detail: str = _text(self.problem.get("detail"))
        self.instance: str = _text(self.problem.get("instance"))
        super().__init__(message or self.detail or self.title or f"HTTP {status}")

    @property
    def slug(self) -> str:
        """The problem type without its prefix, e.g. ``job-not-found``."""
        return self.type.removeprefix(PROBLEM_PREFIX)


class RequestRejected(APIError):
    """The server rejected the request."""


class NotFound(RequestRejected):
    """There is no such resource."""

    http_status = 404


class JobNotFound(NotFound):
    """No job has that id."""


class Conflict(RequestRejected):
    """The request conflicts with the job as it is."""

    http_status = 409


class IllegalTransition(Conflict):
    """The job is not in a state that allows this."""


class InvalidJob(RequestRejected):
    """The submission is invalid."""

    http_status = 422

    def __init__(self, message: str | None = None, *, status: int, problem: Mapping[str, Any] | None = None) -> None:
        super().__init__(message, status=status, problem=problem)
        errors = self.problem.get("errors")
        self.errors: list[str] = [str(e) for e in errors] if isinstance(errors, list) else []


class UnknownTask(InvalidJob):
    """No task of that name is registered."""

    def __init__(self, message: str | None = None, *, status: int, problem: Mapping[str, Any] | None = None) -> None:
        super().__init__(message, status=status, problem=problem)
        known = self.problem.get("known_tasks")
        self.known_tasks: list[str] = [str(k) for k in known] if isinstance(known, list) else []


class TooManyRequests(RequestRejected):
    """Too many jobs are pending; retry later."""

    http_status = 429

    def __init__(self, message: str | None = None, *, status: int, problem: Mapping[str, Any] | None = None, retry_after: float | None = None) -> None:
        super().__init__(message, status=status, problem=problem)
        self.retry_after = retry_after


class ServerError(APIError):
    """The server failed to handle the request."""


class Unavailable(ServerError):
    """The service is unavailable (draining, or its store is down); retry later."""

    http_status = 503

    def __init__(self, message: str | None = None, *, status: int, problem: Mapping[str, Any] | None = None, retry_after: float | None = None) -> None:
        super().__init__(message, status=status, problem=problem)
        self.retry_after = retry_after


#: problem ``type`` slug -> class (used only when the status agrees with the class).
_BY_SLUG: Mapping[str, type[APIError]] = {
    "not-found": NotFound,
    "job-not-found": JobNotFound,
    "conflict": Conflict,
    "illegal-transition": IllegalTransition,
    "invalid-job": InvalidJob,
    "unknown-task": UnknownTask,
    "too-many-pending": TooManyRequests,
    "unavailable": Unavailable,
    "store-unavailable": Unavailable,
}
_BY_STATUS: Mapping[int, type[APIError]] = {
    cls.http_status: cls for cls in (NotFound, Conflict, InvalidJob, TooManyRequests, Unavailable) if cls.http_status
}


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _error_class(status: int, slug: str) -> type[APIError]:
    by_slug = _BY_SLUG.get(slug)
    if by_slug is not None and by_slug.http_status == status:
        return by_slug
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    return RequestRejected if status < 500 else ServerError


def retry_after_seconds(value: str | None, *, now: dt.datetime | None = None) -> float | None:
    """A ``Retry-After`` header (delta-seconds or an HTTP date) -> seconds; None if absent or bad."""
    if value is None:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            return None
        seconds = (when - (now or dt.datetime.now(dt.UTC))).total_seconds()
    return max(0.0, seconds) if math.isfinite(seconds) else None


def error_from_response(response: httpx.Response) -> APIError:
    """The exception for an error response (4xx or 5xx), problem+json or not."""
    problem: dict[str, Any] = {}
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        problem = body
    message = None
    if not problem:  # not jobsvc's problem+json: a proxy's page, say
        text = " ".join(response.text.split())[:200]
        message = f"HTTP {response.status_code}" + (f": {text}" if text else f" {response.reason_phrase}".rstrip())
    slug = _text(problem.get("type")).removeprefix(PROBLEM_PREFIX)
    cls = _error_class(response.status_code, slug)
    if issubclass(cls, TooManyRequests | Unavailable):
        retry_after = retry_after_seconds(response.headers.get("retry-after"))
        return cls(message, status=response.status_code, problem=problem, retry_after=retry_after)
    return cls(message, status=response.status_code, problem=problem)


# -- results -------------------------------------------------------------------------


def _raw() -> Any:
    return attrs.field(factory=dict, eq=False, repr=False)


@attrs.frozen(kw_only=True)
class JobError:
    """One failed attempt of a job."""

    attempt: int
    at: dt.datetime
    type: str
    message: str
    raw: Mapping[str, Any] = _raw()


@attrs.frozen(kw_only=True)
class Job:
    """A job as ``GET /jobs/{id}`` shows it. ``raw`` is that JSON, unknown fields included."""

    id: str
    task: str
    state: JobState
    payload: Any = None
    priority: int = 0
    attempts: int
    max_attempts: int
    rescues: int = 0
    run_at: dt.datetime
    created_at: dt.datetime
    updated_at: dt.datetime
    finished_at: dt.datetime | None = None
    result: Any = None
    errors: tuple[JobError, ...] = ()
    idempotency_key: str | None = None
    cancel_requested: bool = False
    tenant: str | None = None  #: the tenant of the API key that submitted it
    raw: Mapping[str, Any] = _raw()

    @property
    def is_final(self) -> bool:
        """Succeeded, dead or cancelled: the job will not change again (unless retried)."""
        return self.state in FINAL_STATES


@attrs.frozen(kw_only=True)
class Page:
    """One page of ``GET /jobs``; ``next`` is the URL of the following page (None: the last)."""

    jobs: tuple[Job, ...]
    next: str | None = None
    raw: Mapping[str, Any] = _raw()


@attrs.frozen(kw_only=True)
class TaskInfo:
    """A registered task type (``GET /tasks``)."""

    name: str
    description: str = ""
    payload_schema: Any = None
    max_attempts: int
    timeout: float
    backoff: dict[str, Any] = attrs.field(factory=dict)
    raw: Mapping[str, Any] = _raw()


@attrs.frozen(kw_only=True)
class InstanceStats:
    """The instance that answered ``GET /stats``."""

    workers: int
    busy_workers: int
    draining: bool
    owner: str
    store: str
    raw: Mapping[str, Any] = _raw()


@attrs.frozen(kw_only=True)
class Stats:
    """``GET /stats``: counts by state (store-wide), by task and state, the oldest due job's
    wait in seconds (None: nothing is due), and the answering instance."""

    jobs: dict[str, int]
    tasks: dict[str, dict[str, int]] = attrs.field(factory=dict)
    oldest_due_age: float | None = None
    instance: InstanceStats
    raw: Mapping[str, Any] = _raw()


@attrs.frozen(kw_only=True)
class Health:
    """``GET /health``."""

    status: str
    message: str = ""
    raw: Mapping[str, Any] = _raw()


@attrs.frozen(kw_only=True)
class Readiness:
    """``GET /ready``: ``ready`` is False on a 503 (draining, store down); ``reason`` says why."""

    ready: bool
    reason: str | None = None
    raw: Mapping[str, Any] = _raw()


_RESULT_TYPES = (JobError, Job, Page, TaskInfo, InstanceStats, Stats, Health)


def _strict(kind: type[Any], *, accept: tuple[type[Any], ...] = ()) -> Callable[[Any, Any], Any]:
    def check(value: Any, _t: Any) -> Any:
        if (isinstance(value, bool) and kind is not bool) or not isinstance(value, (kind, *accept)):
            raise TypeError(f"expected {kind.__name__}, got {type(value).__name__}")
        return kind(value)

    return check


def _structure_time(value: Any, _t: Any) -> dt.datetime:
    if not isinstance(value, str):
        raise TypeError(f"expected an ISO 8601 time, got {type(value).__name__}")
    moment = dt.datetime.fromisoformat(value)
    if moment.tzinfo is None:
        raise ValueError(f"the time {value!r} has no time zone")
    return moment


def _make_converter() -> cattrs.Converter:
    """Responses -> results: unknown keys ignored, primitives strict (``"3"`` is not an int),
    times ISO 8601 with a zone; each result keeps its JSON in ``raw``."""
    conv = cattrs.Converter(forbid_extra_keys=False)
    conv.register_structure_hook(str, _strict(str))
    conv.register_structure_hook(int, _strict(int))
    conv.register_structure_hook(float, _strict(float, accept=(int,)))
    conv.register_structure_hook(bool, _strict(bool))
    conv.register_structure_hook(dt.datetime, _structure_time)
    for cls in _RESULT_TYPES:
        base = make_dict_structure_fn(cls, conv, raw=override(omit=True))

        def hook(value: Any, type_: Any, _base: Callable[[Any, Any], Any] = base) -> Any:
            if not isinstance(value, dict):
                raise TypeError(f"expected a JSON object, got {type(value).__name__}")
            return attrs.evolve(_base(value, type_), raw=value)

        conv.register_structure_hook(cls, hook)
    return conv


_converter = _make_converter()


def _structure(value: Any, type_: type[T], what: str) -> T:
    try:
        return _converter.structure(value, type_)
    except (cattrs.BaseValidationError, TypeError, ValueError, KeyError) as exc:
        if isinstance(exc, cattrs.BaseValidationError):
            problems = "; ".join(cattrs.transform_error(exc))
        else:
            problems = f"{exc} @ $"
        raise UnexpectedResponse(f"unexpected answer to {what}: {problems}") from None


# -- requests --------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class JobSpec:
    """One job to submit (``submit`` builds one; ``submit_batch`` takes several).

    ``delay`` (seconds or a timedelta) and ``run_at`` (an aware datetime or an ISO 8601 string)
    exclude each other; unset fields take the task's or the server's defaults.
    """

    task: str
    payload: Any = None
    id: str | int | None = None
    delay: float | dt.timedelta | None = None
    run_at: dt.datetime | str | None = None
    priority: int | None = None
    max_attempts: int | None = None
    timeout: float | None = None

    def to_json(self) -> dict[str, Any]:
        """The JSON body of ``POST /jobs``: only the fields that are set."""
        delay = self.delay.total_seconds() if isinstance(self.delay, dt.timedelta) else self.delay
        run_at = self.run_at
        if isinstance(run_at, dt.datetime):
            if run_at.tzinfo is None:
                raise ValueError("run_at must be an aware datetime (with a time zone)")
            run_at = run_at.isoformat()
        body = {
            "task": self.task,
            "payload": self.payload,
            "id": self.id,
            "delay": delay,
            "run_at": run_at,
            "priority": self.priority,
            "max_attempts": self.max_attempts,
            "timeout": self.timeout,
        }
        return {k: v for k, v in body.items() if v is not None}


@attrs.frozen(kw_only=True)
class RetryPolicy:
    """When a call is tried again (see the module docstring, rule 2).

    At most ``max_retries`` retries, and none that would start later than ``max_time``
    seconds after the first attempt. A 429/503 waits its ``Retry-After``; without one, and
    after connection errors, retry ``n`` waits ``backoff.delay(n, rng)``.
    """

    max_retries: int = 5
    max_time: float = 60.0
    backoff: Backoff = Backoff(base=0.5, cap=10.0)
    rng: Rng = attrs.field(default=random.uniform, eq=False, repr=False)

    @classmethod
    def none(cls) -> RetryPolicy:
        """Never retry."""
        return cls(max_retries=0)


@attrs.frozen(kw_only=True)
class _Call(Generic[T]):
    """One API call: the request, how it may be retried, and how its answer is read."""

    method: str
    path: str
    read: Callable[[httpx.Response], T]
    params: Mapping[str, str] | None = None
    body: Any = None
    headers: Mapping[str, str] = attrs.field(factory=dict)
    #: May be resent after it may have reached the server (GETs, keyed submissions).
    idempotent: bool = True
    #: 429 and 503 are retried (False: a 503 is itself the answer, as for /ready).
    retry_busy: bool = True
    #: Seconds the server may take on top of the client's timeout (a long poll's wait).
    extra_time: float = 0.0


class _Attempts:
    """The retry decisions for one call (sans I/O: each method returns a delay or raises)."""

    def __init__(self, policy: RetryPolicy, call: _Call[Any], url: str, now: float) -> None:
        self.policy = policy
        self.call = call
        self.url = url
        self.started = now
        self.retries = 0

    def _next(self, delay: float, now: float) -> float | None:
        if self.retries >= self.policy.max_retries or now + delay - self.started > self.policy.max_time:
            return None
        self.retries += 1
        return delay

    def after_error(self, exc: httpx.TransportError, now: float) -> float:
        """Seconds to wait before resending, or ServerUnreachable if that was the last try."""
        never_sent = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
        delay = None
        if self.call.idempotent or never_sent:
            delay = self._next(self.policy.backoff.delay(self.retries + 1, self.policy.rng), now)
        if delay is None:
            reason = str(exc) or type(exc).__name__
            tries = f" (after {self.retries + 1} attempts)" if self.retries else ""
            raise ServerUnreachable(f"cannot reach jobsvc at {self.url}: {reason}{tries}", url=self.url) from exc
        return delay

    def after_response(self, response: httpx.Response, now: float) -> float | None:
        """None if ``response`` is the answer; else seconds to wait before resending."""
        if response.status_code not in (429, 503) or not self.call.retry_busy:
            return None
        retry_after = retry_after_seconds(response.headers.get("retry-after"))
        if retry_after is None:
            retry_after = self.policy.backoff.delay(self.retries + 1, self.policy.rng)
        return self._next(retry_after, now)


class _WaitLoop:
    """``wait``'s long polls: how long each asks for, and what to do after its answer."""

    def __init__(self, job_id: str, timeout: float | None, poll: float, now: float) -> None:
        if timeout is not None and not timeout >= 0:
            raise ValueError(f"timeout must be a non-negative number of seconds or None, not {timeout!r}")
        if not 0 < poll <= MAX_WAIT:
            raise ValueError(f"poll must be more than 0 and at most {MAX_WAIT:g} seconds, not {poll!r}")
        self.job_id = job_id
        self.timeout = timeout
        self.deadline = math.inf if timeout is None else now + timeout
        self.poll = poll

    def poll_for(self, now: float) -> float:
        """Seconds the next ``GET /jobs/{id}?wait=S`` asks the server to hold on."""
        return max(0.0, min(self.poll, self.deadline - now))

    def after(self, job: Job, started: float, now: float) -> float | None:
        """None if ``job`` is final; seconds to pause before the next poll; WaitTimeout if time is up."""
        if job.is_final:
            return None
        if now >= self.deadline:
            raise WaitTimeout(f"job {job.id} is still {job.state.value} after {self.timeout:g}s", job=job)
        # The server answers early only when the job is final or it is draining: never
        # poll more than once per MIN_POLL_GAP seconds.
        return max(0.0, min(MIN_POLL_GAP - (now - started), self.deadline - now))


def _with_key(headers: Mapping[str, str] | None, api_key: str | None) -> dict[str, str]:
    """The headers every request sends: ``headers``, and the API key as a bearer token."""
    sent = dict(headers or {})
    if api_key:
        sent["Authorization"] = f"Bearer {api_key}"
    return sent


def _job_path(job_id: str | int) -> str:
    return "/jobs/" + quote(str(job_id), safe="")


def _states_param(state: JobState | str | Iterable[JobState | str] | None) -> str | None:
    if state is None:
        return None
    items = [state] if isinstance(state, JobState | str) else list(state)
    return ",".join(s.value if isinstance(s, JobState) else s for s in items) or None


def _seconds(value: float) -> str:
    return format(round(value, 3), "g")


class _Core:
    """Everything both clients share: requests, retry decisions, answers -> results."""

    def __init__(self, url: str, timeout: float, retry: RetryPolicy) -> None:
        parsed = httpx.URL(url)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError(f"invalid jobsvc URL {url!r}; expected http://HOST:PORT such as {DEFAULT_URL}")
        if not (timeout > 0 and math.isfinite(timeout)):
            raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.retry = retry

    def attempts(self, call: _Call[Any], now: float) -> _Attempts:
        return _Attempts(self.retry, call, self.url, now)

    def build(self, http: httpx.Client | httpx.AsyncClient, call: _Call[Any]) -> httpx.Request:
        """The request, built once and resent as it is (same body, same Idempotency-Key)."""
        timeout = httpx.Timeout(self.timeout, read=self.timeout + call.extra_time)
        json_body = call.body if call.method == "POST" else None
        return http.build_request(call.method, call.path, params=call.params, json=json_body, headers=call.headers, timeout=timeout)

    # -- answers -----------------------------------------------------------------------

    @staticmethod
    def _json(response: httpx.Response, what: str) -> Any:
        if response.status_code >= 400:
            raise error_from_response(response)
        if not 200 <= response.status_code < 300:
            raise UnexpectedResponse(f"unexpected answer to {what}: HTTP {response.status_code}")
        try:
            return response.json()
        except ValueError:
            raise UnexpectedResponse(f"unexpected answer to {what}: the body is not JSON") from None

    @classmethod
    def _reader(cls, type_: type[T], what: str, key: str | None = None) -> Callable[[httpx.Response], T]:
        def read(response: httpx.Response) -> T:
            body = cls._json(response, what)
            if key is not None:
                if not isinstance(body, dict) or key not in body:
                    raise UnexpectedResponse(f"unexpected answer to {what}: no {key!r} @ $")
                body = body[key]
            return _structure(body, type_, what)

        return read

    @classmethod
    def _read_ready(cls, response: httpx.Response) -> Readiness:
        """200 and 503 are both answers (ready or not), with the same JSON body."""
        if response.status_code == 503:
            try:
                body = response.json()
            except ValueError:
                raise error_from_response(response) from None
        else:
            body = cls._json(response, "GET /ready")
        if not isinstance(body, dict):
            raise UnexpectedResponse("unexpected answer to GET /ready: expected a JSON object @ $")
        reason = body.get("reason")
        return Readiness(ready=response.status_code == 200, reason=reason if isinstance(reason, str) else None, raw=body)

    # -- calls -------------------------------------------------------------------------

    def submit(self, spec: JobSpec, idempotency_key: str | None) -> _Call[Job]:
        key = idempotency_key or uuid.uuid4().hex
        return _Call(method="POST", path="/jobs", body=spec.to_json(), headers={"Idempotency-Key": key}, read=self._reader(Job, "POST /jobs"))

    def submit_batch(self, specs: Iterable[JobSpec], idempotency_key: str | None) -> _Call[tuple[Job, ...]]:
        key = idempotency_key or uuid.uuid4().hex
        body = {"jobs": [spec.to_json() for spec in specs]}
        return _Call(
            method="POST",
            path="/jobs/batch",
            body=body,
            headers={"Idempotency-Key": key},
            read=self._reader(tuple[Job, ...], "POST /jobs/batch", key="jobs"),
        )

    def get(self, job_id: str | int, wait: float | None = None) -> _Call[Job]:
        path = _job_path(job_id)
        if wait is None:
            return _Call(method="GET", path=path, read=self._reader(Job, f"GET {path}"))
        return _Call(method="GET", path=path, params={"wait": _seconds(wait)}, extra_time=wait, read=self._reader(Job, f"GET {path}"))

    def list(self, state: JobState | str | Iterable[JobState | str] | None, task: str | None, limit: int | None, after: int | str | None) -> _Call[Page]:
        params = {"state": _states_param(state), "task": task, "limit": limit, "after": after}
        query = {k: str(v) for k, v in params.items() if v is not None}
        return _Call(method="GET", path="/jobs", params=query, read=self._reader(Page, "GET /jobs"))

    def next_page(self, page: Page) -> _Call[Page] | None:
        if page.next is None:
            return None
        return _Call(method="GET", path=page.next, read=self._reader(Page, "GET /jobs"))

    def act(self, job_id: str | int, action: str) -> _Call[Job]:
        path = f"{_job_path(job_id)}/{action}"
        return _Call(method="POST", path=path, idempotent=False, read=self._reader(Job, f"POST {path}"))

    def tasks(self) -> _Call[tuple[TaskInfo, ...]]:
        return _Call(method="GET", path="/tasks", read=self._reader(tuple[TaskInfo, ...], "GET /tasks", key="tasks"))

    def stats(self) -> _Call[Stats]:
        return _Call(method="GET", path="/stats", read=self._reader(Stats, "GET /stats"))

    def health(self) -> _Call[Health]:
        return _Call(method="GET", path="/health", read=self._reader(Health, "GET /health"))

    def ready(self) -> _Call[Readiness]:
        return _Call(method="GET", path="/ready", retry_busy=False, read=self._read_ready)

    def wait_loop(self, job_id: str | int, timeout: float | None, poll: float, now: float) -> _WaitLoop:
        return _WaitLoop(str(job_id), timeout, poll, now)


_State = JobState | str | Iterable[JobState | str] | None


# -- the sync client -------------------------------------------------------------------


class Client:
    """The sync client (``httpx.Client``). Use it as a context manager, or call ``close()``.

    ``url`` is the service's base URL; ``timeout`` bounds each request (a long poll gets its
    wait on top); ``retry`` says when calls are retried; ``api_key`` is sent as
    ``Authorization: Bearer`` with every request (``jobsvc keys create`` makes one);
    ``transport`` replaces httpx's (tests: ``httpx.MockTransport``); ``sleep`` and ``clock``
    are the time seam.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
        headers: Mapping[str, str] | None = None,
        api_key: str | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._core = _Core(url, timeout, retry or RetryPolicy())
        self._http = httpx.Client(
            base_url=self._core.url, transport=transport, headers=_with_key(headers, api_key), timeout=timeout, limits=_LIMITS
        )
        self._sleep = sleep
        self._clock = clock

    @property
    def url(self) -> str:
        return self._core.url

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _run(self, call: _Call[T]) -> T:
        request = self._core.build(self._http, call)
        attempts = self._core.attempts(call, self._clock())
        while True:
            try:
                response = self._http.send(request)
            except httpx.TransportError as exc:
                delay = attempts.after_error(exc, self._clock())
            except httpx.RequestError as exc:  # undecodable body, ...
                raise UnexpectedResponse(f"unexpected answer to {call.method} {call.path}: {exc}") from exc
            else:
                retry_in = attempts.after_response(response, self._clock())
                if retry_in is None:
                    return call.read(response)
                delay = retry_in
            self._sleep(delay)

    def submit(
        self,
        task: str,
        payload: Any = None,
        *,
        id: str | int | None = None,
        idempotency_key: str | None = None,
        delay: float | dt.timedelta | None = None,
        run_at: dt.datetime | str | None = None,
        priority: int | None = None,
        max_attempts: int | None = None,
        timeout: float | None = None,
    ) -> Job:
        """Submit one job; a retried attempt reuses this call's Idempotency-Key."""
        spec = JobSpec(task=task, payload=payload, id=id, delay=delay, run_at=run_at, priority=priority, max_attempts=max_attempts, timeout=timeout)
        return self._run(self._core.submit(spec, idempotency_key))

    def submit_batch(self, jobs: Iterable[JobSpec], *, idempotency_key: str | None = None) -> tuple[Job, ...]:
        """Submit up to 1,000 jobs in one request and one transaction."""
        return self._run(self._core.submit_batch(jobs, idempotency_key))

    def get(self, job_id: str | int) -> Job:
        return self._run(self._core.get(job_id))

    def wait(self, job_id: str | int, timeout: float | None = None, *, poll: float = MAX_WAIT, on_update: Callable[[Job], object] | None = None) -> Job:
        """The job once it is final. Long-polls ``GET /jobs/{id}?wait=S`` (S at most ``poll``);
        WaitTimeout (with the job's last state) if ``timeout`` seconds pass first (None: no
        limit). ``on_update`` is called with the job after every poll."""
        loop = self._core.wait_loop(job_id, timeout, poll, self._clock())
        while True:
            started = self._clock()
            job = self._run(self._core.get(job_id, wait=loop.poll_for(started)))
            if on_update is not None:
                on_update(job)
            pause = loop.after(job, started, self._clock())
            if pause is None:
                return job
            if pause > 0:
                self._sleep(pause)

    def list(self, state: _State = None, *, task: str | None = None, limit: int | None = None, after: int | str | None = None) -> Page:
        """One page of jobs in submission order (``state="dead"``: the dead-letter queue)."""
        return self._run(self._core.list(state, task, limit, after))

    def iter_jobs(self, state: _State = None, *, task: str | None = None, page_size: int | None = None) -> Iterator[Job]:
        """Every matching job, following ``next`` from page to page."""
        call: _Call[Page] | None = self._core.list(state, task, page_size, None)
        while call is not None:
            page = self._run(call)
            yield from page.jobs
            call = self._core.next_page(page)

    def retry(self, job_id: str | int) -> Job:
        """Replay a dead or cancelled job (IllegalTransition otherwise)."""
        return self._run(self._core.act(job_id, "retry"))

    def cancel(self, job_id: str | int) -> Job:
        """Cancel a waiting job, or ask a running one to stop (``cancel_requested``)."""
        return self._run(self._core.act(job_id, "cancel"))

    def tasks(self) -> tuple[TaskInfo, ...]:
        return self._run(self._core.tasks())

    def stats(self) -> Stats:
        return self._run(self._core.stats())

    def health(self) -> Health:
        return self._run(self._core.health())

    def ready(self) -> Readiness:
        return self._run(self._core.ready())


# -- the async client ------------------------------------------------------------------


class AsyncClient:
    """The async client (``httpx.AsyncClient``), under trio or asyncio. Same API as
    :class:`Client`, with ``await``; ``sleep`` and ``clock`` default to anyio's, which follow
    the running loop's clock (trio's ``MockClock`` included)."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        headers: Mapping[str, str] | None = None,
        api_key: str | None = None,
        sleep: Callable[[float], Awaitable[object]] = anyio.sleep,
        clock: Callable[[], float] = anyio.current_time,
    ) -> None:
        self._core = _Core(url, timeout, retry or RetryPolicy())
        self._http = httpx.AsyncClient(
            base_url=self._core.url, transport=transport, headers=_with_key(headers, api_key), timeout=timeout, limits=_LIMITS
        )
        self._sleep = sleep
        self._clock = clock

    @property
    def url(self) -> str:
        return self._core.url

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _run(self, call: _Call[T]) -> T:
        request = self._core.build(self._http, call)
        attempts = self._core.attempts(call, self._clock())
        while True:
            try:
                response = await self._http.send(request)
            except httpx.TransportError as exc:
                delay = attempts.after_error(exc, self._clock())
            except httpx.RequestError as exc:  # undecodable body, ...
                raise UnexpectedResponse(f"unexpected answer to {call.method} {call.path}: {exc}") from exc
            else:
                retry_in = attempts.after_response(response, self._clock())
                if retry_in is None:
                    return call.read(response)
                delay = retry_in
            await self._sleep(delay)

    async def submit(
        self,
        task: str,
        payload: Any = None,
        *,
        id: str | int | None = None,
        idempotency_key: str | None = None,
        delay: float | dt.timedelta | None = None,
        run_at: dt.datetime | str | None = None,
        priority: int | None = None,
        max_attempts: int | None = None,
        timeout: float | None = None,
    ) -> Job:
        """Submit one job; a retried attempt reuses this call's Idempotency-Key."""
        spec = JobSpec(task=task, payload=payload, id=id, delay=delay, run_at=run_at, priority=priority, max_attempts=max_attempts, timeout=timeout)
        return await self._run(self._core.submit(spec, idempotency_key))

    async def submit_batch(self, jobs: Iterable[JobSpec], *, idempotency_key: str | None = None) -> tuple[Job, ...]:
        """Submit up to 1,000 jobs in one request and one transaction."""
        return await self._run(self._core.submit_batch(jobs, idempotency_key))

    async def get(self, job_id: str | int) -> Job:
        return await self._run(self._core.get(job_id))

    async def wait(self, job_id: str | int, timeout: float | None = None, *, poll: float = MAX_WAIT, on_update: Callable[[Job], object] | None = None) -> Job:
        """The job once it is final (see :meth:`Client.wait`)."""
        loop = self._core.wait_loop(job_id, timeout, poll, self._clock())
        while True:
            started = self._clock()
            job = await self._run(self._core.get(job_id, wait=loop.poll_for(started)))
            if on_update is not None:
                on_update(job)
            pause = loop.after(job, started, self._clock())
            if pause is None:
                return job
            if pause > 0:
                await self._sleep(pause)

    async def list(self, state: _State = None, *, task: str | None = None, limit: int | None = None, after: int | str | None = None) -> Page:
        """One page of jobs in submission order (``state="dead"``: the dead-letter queue)."""
        return await self._run(self._core.list(state, task, limit, after))

    async def iter_jobs(self, state: _State = None, *, task: str | None = None, page_size: int | None = None) -> AsyncIterator[Job]:
        """Every matching job, following ``next`` from page to page."""
        call: _Call[Page] | None = self._core.list(state, task, page_size, None)
        while call is not None:
            page = await self._run(call)
            for job in page.jobs:
                yield job
            call = self._core.next_page(page)

    async def retry(self, job_id: str | int) -> Job:
        """Replay a dead or cancelled job (IllegalTransition otherwise)."""
        return await self._run(self._core.act(job_id, "retry"))

    async def cancel(self, job_id: str | int) -> Job:
        """Cancel a waiting job, or ask a running one to stop (``cancel_requested``)."""
        return await self._run(self._core.act(job_id, "cancel"))

    async def tasks(self) -> tuple[TaskInfo, ...]:
        return await self._run(self._core.tasks())

    async def stats(self) -> Stats:
        return await self._run(self._core.stats())

    async def health(self) -> Health:
        return await self._run(self._core.health())

    async def ready(self) -> Readiness:
        return await self._run(self._core.ready())
