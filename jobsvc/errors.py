"""jobsvc's exception hierarchy.

Every class carries the HTTP status a server should answer with (``http_status``) and a
machine-readable ``slug`` used as the RFC 9457 problem ``type``; its docstring is its
default message.

* JobsvcError                    500  base; never raised directly
  x BadRequest                   400  the request body is not acceptable JSON
  x Unauthorized                 401  no API key, or an unknown one (``WWW-Authenticate: Bearer``)
  x Forbidden                    403  the API key lacks the scope the route needs
  x CrossSiteRequest             403  a browser request from another site (Origin, Sec-Fetch-Site)
  x LoopbackOnly                 403  no keys configured: only loopback addresses are served
  x PayloadTooLarge              413  the body exceeds the configured limit
  x UnsupportedMediaType         415  the body is not JSON
  x MisdirectedRequest           421  a Host header this server does not serve (DNS rebinding)
  x InvalidJob                   422  the submission failed validation (``errors`` lists paths)
    + UnknownTask                422  no task of that name is registered (``known`` lists them)
  x JobNotFound                  404  (also a job of another tenant: its existence is not revealed)
  x Conflict                     409  same id or Idempotency-Key, different body
  x IllegalTransition            409  the state machine refused the move (e.g. retry a succeeded job)
  x TooManyPending               429  backpressure: above ``--max-pending`` pending jobs (or the key's cap)
  x RateLimited                  429  the API key's request rate is exhausted (``Retry-After``)
  x ServiceUnavailable           503  draining, or the store cannot be reached
    + StoreUnavailable           503  transient store failure (locked database, lost connection)
  x ConfigError                  ---  bad settings; the CLI prints it and exits 2

``headers`` holds the HTTP headers an answer carries (``Retry-After``, ``WWW-Authenticate``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

__all__ = [
    "BadRequest",
    "ConfigError",
    "Conflict",
    "CrossSiteRequest",
    "Forbidden",
    "IllegalTransition",
    "InvalidJob",
    "JobNotFound",
    "JobsvcError",
    "LoopbackOnly",
    "MisdirectedRequest",
    "PayloadTooLarge",
    "RateLimited",
    "ServiceUnavailable",
    "StoreUnavailable",
    "TooManyPending",
    "Unauthorized",
    "UnknownTask",
    "UnsupportedMediaType",
    "unwrap",
]


class JobsvcError(Exception):
    """Unexpected jobsvc error."""

    http_status: ClassVar[int] = 500
    slug: ClassVar[str] = "internal-error"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())

    @property
    def detail(self) -> str:
        return str(self)

    @property
    def headers(self) -> dict[str, str]:
        """HTTP headers the answer carries."""
        return {}


class _RetryLater(JobsvcError):
    """An error whose answer says when to try again (``Retry-After``, whole seconds)."""

    retry_after: int = 1

    def __init__(self, message: str | None = None, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        if retry_after is not None:
            self.retry_after = retry_after

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class BadRequest(JobsvcError):
    """The request body is not valid JSON."""

    http_status = 400
    slug = "bad-request"


class Unauthorized(JobsvcError):
    """This request needs an API key: send 'Authorization: Bearer <key>'."""

    http_status = 401
    slug = "unauthorized"

    def __init__(self, message: str | None = None, *, invalid_token: bool = False) -> None:
        super().__init__(message)
        self.invalid_token = invalid_token

    @property
    def headers(self) -> dict[str, str]:
        challenge = 'Bearer realm="jobsvc"' + (', error="invalid_token"' if self.invalid_token else "")
        return {"WWW-Authenticate": challenge}


class Forbidden(JobsvcError):
    """The API key lacks the scope this request needs."""

    http_status = 403
    slug = "forbidden"


class CrossSiteRequest(JobsvcError):
    """The API does not answer requests made by pages of other sites."""

    http_status = 403
    slug = "cross-site-request"


class LoopbackOnly(JobsvcError):
    """No API keys are configured: jobsvc answers on loopback addresses only."""

    http_status = 403
    slug = "loopback-only"


class MisdirectedRequest(JobsvcError):
    """This server does not serve that host name (see --allowed-hosts)."""

    http_status = 421
    slug = "misdirected-request"


class PayloadTooLarge(JobsvcError):
    """The request body is too large."""

    http_status = 413
    slug = "payload-too-large"


class UnsupportedMediaType(JobsvcError):
    """Send the body as JSON with 'Content-Type: application/json'."""

    http_status = 415
    slug = "unsupported-media-type"


class InvalidJob(JobsvcError):
    """The job submission is invalid."""

    http_status = 422
    slug = "invalid-job"

    def __init__(self, message: str | None = None, errors: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.errors = list(errors)


class UnknownTask(InvalidJob):
    """No task of that name is registered."""

    slug = "unknown-task"

    def __init__(self, task: str, known: Sequence[str], *, path: str = "$") -> None:
        names = ", ".join(sorted(known)) or "(none)"
        super().__init__(
            f"unknown task {task!r}; known tasks: {names}",
            errors=[f"unknown task {task!r} @ {path}.task"],
        )
        self.task = task
        self.known = sorted(known)


class JobNotFound(JobsvcError):
    """No job has that id."""

    http_status = 404
    slug = "job-not-found"


class Conflict(JobsvcError):
    """A job with that id or Idempotency-Key exists with a different body."""

    http_status = 409
    slug = "conflict"


class IllegalTransition(JobsvcError):
    """The job is not in a state that allows this."""

    http_status = 409
    slug = "illegal-transition"


class TooManyPending(_RetryLater):
    """Too many jobs are pending; retry later."""

    http_status = 429
    slug = "too-many-pending"


class RateLimited(_RetryLater):
    """This API key sent more requests than its rate allows; retry later."""

    http_status = 429
    slug = "rate-limited"


class ServiceUnavailable(_RetryLater):
    """The service is not accepting jobs right now; retry later."""

    http_status = 503
    slug = "unavailable"


class StoreUnavailable(ServiceUnavailable):
    """The job store cannot be reached right now; retry later."""

    slug = "store-unavailable"


class ConfigError(JobsvcError):
    """The configuration is invalid."""

    slug = "config-error"


def unwrap(exc: BaseException) -> BaseException:
    """The one exception inside nested single-exception groups (trio's nurseries wrap what
    they raise); ``exc`` itself otherwise."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc
