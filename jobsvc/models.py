"""Jobs and their state machine: pure values, no I/O, no trio.

Theory of operation
-------------------
Rule 1: every move of a job from one state to another is listed in ``TRANSITIONS`` and made
by one of the functions below (``claim``, ``conclude``, ``request_cancel``, ``rescue``,
``redrive``...), which all go through ``_move``. Stores never invent a transition: they
compute the new job with these functions and write it *fenced* on the old
``(id, state, lease_token, cancel_requested)``, so a stale writer (a worker that lost its
lease, a rescuer that read an old row) changes nothing.

Rule 2: a claim increments ``lease_token``; the token is the fencing token, and an attempt
is known by ``(job id, lease token)``. ``attempts`` counts attempts that ran to an outcome
(success, error, timeout). A release at shutdown or a rescue after a crash hands the attempt
back (``attempts - 1``); rescues are counted in ``rescues`` instead, and a job rescued
``max_rescues`` times is dead ("worker lost").

Rule 3: an attempt ends with an :data:`Outcome` value, and :func:`conclude` is the one place
that turns it into the job's next state. A cancel a client requested while the attempt ran
wins over a retry and over a release (the job ends ``cancelled``); it does not undo a
success, and a job out of attempts is dead either way.

::

    pending --claim--> running --succeed--> succeeded
       ^                  |--fail, attempts left--> retrying --claim--> running
       |                  |--fail, none left / rescued too often--> dead
       |                  '--cancel--> cancelled   (pending and retrying can be cancelled too)
       '--release (shutdown) / rescue (lease expired) / redrive (dead or cancelled)
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from .errors import IllegalTransition

__all__ = [
    "CLAIMABLE",
    "FINAL_STATES",
    "TRANSITIONS",
    "Cancelled",
    "ErrorRecord",
    "Event",
    "Failed",
    "Job",
    "JobState",
    "Outcome",
    "Released",
    "Succeeded",
    "cancel",
    "claim",
    "conclude",
    "fail",
    "redrive",
    "release",
    "request_cancel",
    "rescue",
    "sources",
    "succeed",
]

#: Error messages kept in a job's history are cut to this many characters.
MAX_ERROR_MESSAGE = 2048
#: A job keeps at most this many error records (the oldest are dropped).
MAX_ERROR_HISTORY = 25


class JobState(enum.Enum):
    PENDING = "pending"  #: waiting to run (new, released, rescued or redriven)
    RUNNING = "running"  #: claimed by a worker that holds a lease
    RETRYING = "retrying"  #: failed, waiting for its backoff to pass (``run_at``)
    SUCCEEDED = "succeeded"  #: the handler returned; ``result`` holds its value
    DEAD = "dead"  #: out of attempts or rescued too often: the dead-letter queue
    CANCELLED = "cancelled"  #: cancelled by a client


FINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.DEAD, JobState.CANCELLED})


class Event(enum.Enum):
    CLAIM = "claim"
    SUCCEED = "succeed"
    RETRY_LATER = "retry_later"
    GIVE_UP = "give_up"
    CANCEL = "cancel"
    RELEASE = "release"
    RESCUE = "rescue"
    QUARANTINE = "quarantine"
    REDRIVE = "redrive"


S, E = JobState, Event
#: (state, event) -> new state. The whole state machine; nothing else moves a job.
TRANSITIONS: Mapping[tuple[JobState, Event], JobState] = {
    (S.PENDING, E.CLAIM): S.RUNNING,
    (S.RETRYING, E.CLAIM): S.RUNNING,
    (S.RUNNING, E.SUCCEED): S.SUCCEEDED,
    (S.RUNNING, E.RETRY_LATER): S.RETRYING,
    (S.RUNNING, E.GIVE_UP): S.DEAD,
    (S.PENDING, E.CANCEL): S.CANCELLED,
    (S.RETRYING, E.CANCEL): S.CANCELLED,
    (S.RUNNING, E.CANCEL): S.CANCELLED,
    (S.RUNNING, E.RELEASE): S.PENDING,
    (S.RUNNING, E.RESCUE): S.PENDING,
    (S.RUNNING, E.QUARANTINE): S.DEAD,
    (S.DEAD, E.REDRIVE): S.PENDING,
    (S.CANCELLED, E.REDRIVE): S.PENDING,
}
del S, E


def sources(event: Event) -> frozenset[JobState]:
    """The states from which ``event`` is allowed (e.g. the claimable states)."""
    return frozenset(state for (state, ev) in TRANSITIONS if ev is event)


#: The states a worker may claim a job from: pending and retrying (when due).
CLAIMABLE = sources(Event.CLAIM)


@attrs.frozen(kw_only=True)
class ErrorRecord:
    """One failed attempt: never a traceback, never local variables."""

    attempt: int
    at: float
    type: str
    message: str

    @classmethod
    def make(cls, *, attempt: int, at: float, type: str, message: str) -> ErrorRecord:
        # Exception text may hold lone surrogates (undecodable file names...): keep it storable.
        message = message.encode("utf-8", "backslashreplace").decode("utf-8")
        type = type.encode("utf-8", "backslashreplace").decode("utf-8")
        if len(message) > MAX_ERROR_MESSAGE:
            message = message[: MAX_ERROR_MESSAGE - 1] + "\u2026"
        return cls(attempt=attempt, at=at, type=type, message=message)


@attrs.frozen(kw_only=True)
class Job:
    """A job as the store holds it. Change it only through the transition functions.

    The field order is the order of the public JSON view and of the SQL columns."""

    id: str
    task: str
    state: JobState = JobState.PENDING
    payload: Any
    priority: int = 0
    attempts: int = 0  #: attempts that ran to an outcome (or are running now)
    max_attempts: int
    rescues: int = 0  #: times a crashed owner's lease expired and the job was taken back
    timeout: float | None = None  #: per-attempt deadline in seconds (None: the task's default)
    run_at: float  #: not claimed before this time (epoch seconds)
    created_at: float
    updated_at: float
    finished_at: float | None = None
    result: Any = None
    errors: tuple[ErrorRecord, ...] = ()
    idempotency_key: str | None = None  #: unique per tenant (see ``tenant``)
    cancel_requested: bool = False
    #: the tenant of the API key that submitted the job (None: submitted without one); a key
    #: bound to a tenant sees and acts on that tenant's jobs only
    tenant: str | None = None
    fingerprint: str = ""  #: hash of the submission, to tell a replay from a conflict
    lease_owner: str | None = None
    lease_token: int = 0  #: fencing token, incremented by every claim
    lease_expires_at: float | None = None
    seq: int = 0  #: store-assigned insertion order; the keyset pagination cursor

    @property
    def is_final(self) -> bool:
        return self.state in FINAL_STATES


def _move(job: Job, event: Event, now: float, **changes: Any) -> Job:
    try:
        new_state = TRANSITIONS[(job.state, event)]
    except KeyError:
        raise IllegalTransition(
            f"job {job.id} is {job.state.value}; cannot {event.value.replace('_', ' ')}"
        ) from None
    changes["state"], changes["updated_at"] = new_state, now
    return _replace(job, changes)


def _make_replace() -> Callable[[Job, dict[str, Any]], Job]:
    """``attrs.evolve`` for Job, generated field by field: about twice as fast, and two run
    for every job (its claim and its outcome). Unknown field names raise TypeError."""
    names = [field.name for field in attrs.fields(Job)]
    body = "".join(f"    set_(new, {name!r}, get({name!r}, job.{name}))\n" for name in names)
    source = (
        "def replace(job, changes):\n"
        "    if not changes.keys() <= known:\n"
        "        raise TypeError(f'not Job fields: {sorted(changes.keys() - known)}')\n"
        "    new = new_(Job)\n"
        "    get = changes.get\n"
        f"{body}"
        "    return new\n"
    )
    namespace: dict[str, Any] = {"new_": object.__new__, "set_": object.__setattr__, "Job": Job, "known": frozenset(names)}
    exec(compile(source, "<jobsvc.models: replace>", "exec"), namespace)  # noqa: S102 - constant source
    replace: Callable[[Job, dict[str, Any]], Job] = namespace["replace"]
    return replace


#: ``_replace(job, {field: value})``: a copy of ``job`` with those fields changed.
_replace = _make_replace()


def _append(errors: tuple[ErrorRecord, ...], record: ErrorRecord) -> tuple[ErrorRecord, ...]:
    return (*errors, record)[-MAX_ERROR_HISTORY:]


_NO_LEASE: dict[str, Any] = {"lease_owner": None, "lease_expires_at": None}


def claim(job: Job, *, owner: str, now: float, lease: float) -> Job:
    """pending/retrying -> running: one more attempt, a new fencing token and a lease."""
    return _move(
        job,
        Event.CLAIM,
        now,
        attempts=job.attempts + 1,
        lease_owner=owner,
        lease_token=job.lease_token + 1,
        lease_expires_at=now + lease,
    )


def succeed(job: Job, *, result: Any, now: float) -> Job:
    return _move(job, Event.SUCCEED, now, result=result, finished_at=now, **_NO_LEASE)


def fail(job: Job, *, error: ErrorRecord, now: float, delay: float | None) -> Job:
    """running -> retrying after ``delay`` seconds, or -> dead when ``delay`` is None."""
    errors = _append(job.errors, error)
    if delay is None:
        return _move(job, Event.GIVE_UP, now, errors=errors, finished_at=now, **_NO_LEASE)
    return _move(job, Event.RETRY_LATER, now, errors=errors, run_at=now + delay, **_NO_LEASE)


def request_cancel(job: Job, *, now: float) -> Job:
    """A client asked to cancel: a waiting job is cancelled at once; a running one is flagged
    and its owner cancels the handler (then calls :func:`cancel`)."""
    if job.state is JobState.RUNNING:
        if job.cancel_requested:
            return job
        return attrs.evolve(job, cancel_requested=True, updated_at=now)
    return cancel(job, now=now)


def cancel(job: Job, *, now: float) -> Job:
    return _move(job, Event.CANCEL, now, finished_at=now, cancel_requested=False, **_NO_LEASE)


def release(job: Job, *, now: float) -> Job:
    """running -> pending without burning the attempt (graceful shutdown). ``run_at`` is
    kept, so the job keeps its place at the head of the queue. A job a client asked to
    cancel is cancelled instead."""
    if job.cancel_requested:
        return cancel(job, now=now)
    return _move(job, Event.RELEASE, now, attempts=job.attempts - 1, **_NO_LEASE)


def rescue(job: Job, *, now: float, max_rescues: int) -> Job:
    """The owner of a running job is gone: hand the job back, or quarantine a job that keeps
    killing its workers (it goes to the dead-letter queue with the reason "worker lost").
    A job a client asked to cancel is cancelled instead."""
    if job.cancel_requested:
        return cancel(job, now=now)
    rescues = job.rescues + 1
    attempts = job.attempts - 1
    if rescues >= max_rescues:
        record = ErrorRecord.make(
            attempt=job.attempts,
            at=now,
            type="WorkerLost",
            message=f"the worker running this job was lost {rescues} times",
        )
        return _move(
            job,
            Event.QUARANTINE,
            now,
            rescues=rescues,
            attempts=attempts,
            errors=_append(job.errors, record),
            finished_at=now,
            **_NO_LEASE,
        )
    # run_at is kept: a rescued job goes back to its place at the head of the queue.
    return _move(job, Event.RESCUE, now, rescues=rescues, attempts=attempts, **_NO_LEASE)


def redrive(job: Job, *, now: float) -> Job:
    """dead/cancelled -> pending with a fresh set of attempts; the error history is kept."""
    return _move(
        job,
        Event.REDRIVE,
        now,
        attempts=0,
        rescues=0,
        run_at=now,
        finished_at=None,
        result=None,
        cancel_requested=False,
    )


# -- the end of an attempt -----------------------------------------------------------


@attrs.frozen
class Succeeded:
    """The handler returned ``result`` (a JSON value)."""

    result: Any = None


@attrs.frozen
class Failed:
    """The handler raised (or timed out); ``permanent`` skips the remaining attempts."""

    type: str
    message: str
    permanent: bool = False


@attrs.frozen
class Cancelled:
    """The attempt was cancelled because a client asked."""


@attrs.frozen
class Released:
    """The attempt did not run to an outcome (shutdown, a task not registered here): hand
    the job back without burning the attempt."""


#: How an attempt ended.
Outcome = Succeeded | Failed | Cancelled | Released


def conclude(job: Job, outcome: Outcome, *, now: float, delay: float | None = None) -> Job:
    """The job after its running attempt ended with ``outcome`` (Rule 3).

    ``delay`` is the retry policy's wait before the next attempt for a :class:`Failed`
    outcome (None: no attempts left)."""
    if isinstance(outcome, Succeeded):
        return succeed(job, result=outcome.result, now=now)
    if isinstance(outcome, Cancelled):
        return cancel(job, now=now)
    if isinstance(outcome, Released):
        return release(job, now=now)
    error = ErrorRecord.make(attempt=job.attempts, at=now, type=outcome.type, message=outcome.message)
    if outcome.permanent:
        delay = None
    if job.cancel_requested and delay is not None:
        return cancel(attrs.evolve(job, errors=_append(job.errors, error)), now=now)
    return fail(job, error=error, now=now, delay=delay)
