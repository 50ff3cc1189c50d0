"""The state machine: one table, pure transition functions, illegal moves change nothing."""

from __future__ import annotations

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from jobsvc import models
from jobsvc.errors import IllegalTransition
from jobsvc.models import FINAL_STATES, TRANSITIONS, ErrorRecord, Event, Job, JobState


def make_job(**changes: object) -> Job:
    base = Job(id="j1", task="t", payload=None, max_attempts=3, run_at=100.0, created_at=100.0, updated_at=100.0)
    return attrs.evolve(base, **changes)


def test_claimable_states_are_pending_and_retrying() -> None:
    """Only waiting jobs can be claimed."""
    assert models.sources(Event.CLAIM) == {JobState.PENDING, JobState.RETRYING}


def test_final_states_have_no_way_out_but_redrive() -> None:
    """succeeded is terminal; dead and cancelled leave only through a redrive."""
    for (state, event), _new in TRANSITIONS.items():
        if state in FINAL_STATES:
            assert event is Event.REDRIVE and state is not JobState.SUCCEEDED


def test_claim_takes_an_attempt_a_token_and_a_lease() -> None:
    """claim: running, attempts+1, token+1, lease until now+lease."""
    job = models.claim(make_job(), owner="w1", now=200.0, lease=30.0)
    assert (job.state, job.attempts, job.lease_token, job.lease_owner, job.lease_expires_at, job.updated_at) == (
        JobState.RUNNING, 1, 1, "w1", 230.0, 200.0,
    )


def test_succeed_stores_result_and_drops_the_lease() -> None:
    """succeed keeps the result and finish time and clears the lease."""
    running = models.claim(make_job(), owner="w1", now=200.0, lease=30.0)
    done = models.succeed(running, result={"ok": 1}, now=210.0)
    assert (done.state, done.result, done.finished_at, done.lease_owner, done.lease_expires_at) == (
        JobState.SUCCEEDED, {"ok": 1}, 210.0, None, None,
    )


def test_fail_with_a_delay_schedules_a_retry() -> None:
    """fail with a delay: retrying at now + delay, error appended."""
    running = models.claim(make_job(), owner="w1", now=200.0, lease=30.0)
    error = ErrorRecord.make(attempt=1, at=201.0, type="Boom", message="x")
    job = models.fail(running, error=error, now=201.0, delay=4.0)
    assert (job.state, job.run_at, job.errors, job.finished_at) == (JobState.RETRYING, 205.0, (error,), None)


def test_fail_without_a_delay_is_dead() -> None:
    """fail with no delay left: dead, finished."""
    running = models.claim(make_job(), owner="w1", now=200.0, lease=30.0)
    error = ErrorRecord.make(attempt=1, at=201.0, type="Boom", message="x")
    job = models.fail(running, error=error, now=201.0, delay=None)
    assert (job.state, job.finished_at) == (JobState.DEAD, 201.0)


def test_error_messages_are_truncated() -> None:
    """Error messages are cut to MAX_ERROR_MESSAGE characters."""
    record = ErrorRecord.make(attempt=1, at=0.0, type="E", message="x" * 10_000)
    assert len(record.message) == models.MAX_ERROR_MESSAGE and record.message.endswith("\u2026")


def test_error_history_is_bounded() -> None:
    """At most MAX_ERROR_HISTORY error records are kept, the newest."""
    job = make_job()
    for i in range(models.MAX_ERROR_HISTORY + 5):
        job = models.claim(job, owner="w", now=float(i), lease=1.0)
        job = models.fail(job, error=ErrorRecord.make(attempt=i, at=float(i), type="E", message=str(i)), now=float(i), delay=0.0)
    assert len(job.errors) == models.MAX_ERROR_HISTORY
    assert job.errors[-1].message == str(models.MAX_ERROR_HISTORY + 4)


def test_release_hands_the_attempt_back() -> None:
    """release (shutdown): pending again, attempt not burnt, its place in the queue kept."""
    running = models.claim(make_job(), owner="w1", now=200.0, lease=30.0)
    job = models.release(running, now=205.0)
    assert (job.state, job.attempts, job.run_at, job.lease_owner, job.lease_token) == (JobState.PENDING, 0, 100.0, None, 1)


def test_rescue_counts_rescues_not_attempts() -> None:
    """rescue: pending, attempts handed back, rescues+1, its place in the queue kept."""
    running = models.claim(make_job(), owner="w1", now=200.0, lease=30.0)
    job = models.rescue(running, now=240.0, max_rescues=3)
    assert (job.state, job.attempts, job.rescues, job.run_at) == (JobState.PENDING, 0, 1, 100.0)


def test_rescued_too_often_is_dead_with_worker_lost() -> None:
    """The max_rescues-th rescue quarantines the job in the dead-letter queue."""
    job = make_job(rescues=2)
    running = models.claim(job, owner="w1", now=200.0, lease=30.0)
    dead = models.rescue(running, now=240.0, max_rescues=3)
    assert (dead.state, dead.rescues, dead.errors[-1].type) == (JobState.DEAD, 3, "WorkerLost")
    assert "lost 3 times" in dead.errors[-1].message


def test_request_cancel_of_waiting_job_cancels_it() -> None:
    """A pending job is cancelled at once."""
    job = models.request_cancel(make_job(), now=150.0)
    assert (job.state, job.finished_at) == (JobState.CANCELLED, 150.0)


def test_request_cancel_of_running_job_only_flags_it() -> None:
    """A running job is flagged; its owner cancels the handler."""
    running = models.claim(make_job(), owner="w1", now=200.0, lease=30.0)
    job = models.request_cancel(running, now=201.0)
    assert (job.state, job.cancel_requested) == (JobState.RUNNING, True)
    assert models.request_cancel(job, now=202.0) is job


def test_redrive_resets_attempts_and_keeps_history() -> None:
    """Redrive from the dead-letter queue: pending, fresh attempts, errors kept."""
    running = models.claim(make_job(), owner="w1", now=200.0, lease=30.0)
    error = ErrorRecord.make(attempt=1, at=201.0, type="Boom", message="x")
    dead = models.fail(running, error=error, now=201.0, delay=None)
    job = models.redrive(dead, now=300.0)
    assert (job.state, job.attempts, job.rescues, job.run_at, job.finished_at, job.errors) == (
        JobState.PENDING, 0, 0, 300.0, None, (error,),
    )


@pytest.mark.parametrize(
    ("state", "move"),
    [
        (JobState.SUCCEEDED, lambda j: models.claim(j, owner="w", now=1.0, lease=1.0)),
        (JobState.PENDING, lambda j: models.succeed(j, result=None, now=1.0)),
        (JobState.SUCCEEDED, lambda j: models.redrive(j, now=1.0)),
        (JobState.PENDING, lambda j: models.release(j, now=1.0)),
        (JobState.DEAD, lambda j: models.request_cancel(j, now=1.0)),
        (JobState.RETRYING, lambda j: models.rescue(j, now=1.0, max_rescues=3)),
    ],
)
def test_illegal_moves_raise_and_change_nothing(state: JobState, move: object) -> None:
    """An illegal transition raises IllegalTransition; the job value is untouched."""
    job = make_job(state=state)
    before = attrs.asdict(job)
    with pytest.raises(IllegalTransition, match=state.value):
        move(job)  # type: ignore[operator]
    assert attrs.asdict(job) == before


EVENTS = st.sampled_from(
    [
        lambda j: models.claim(j, owner="w", now=1.0, lease=1.0),
        lambda j: models.succeed(j, result=1, now=1.0),
        lambda j: models.fail(j, error=ErrorRecord.make(attempt=1, at=1.0, type="E", message="m"), now=1.0, delay=1.0),
        lambda j: models.fail(j, error=ErrorRecord.make(attempt=1, at=1.0, type="E", message="m"), now=1.0, delay=None),
        lambda j: models.request_cancel(j, now=1.0),
        lambda j: models.release(j, now=1.0),
        lambda j: models.rescue(j, now=1.0, max_rescues=3),
        lambda j: models.redrive(j, now=1.0),
    ]
)


@given(st.lists(EVENTS, max_size=30))
def test_random_event_sequences_stay_inside_the_table(moves: list[object]) -> None:
    """Whatever happens, a job is in a known state, counters never go negative, and a
    running job always holds a lease."""
    job = make_job()
    for move in moves:
        try:
            job = move(job)  # type: ignore[operator]
        except IllegalTransition:
            continue
        assert job.state in JobState
        assert job.attempts >= 0 and job.rescues >= 0
        assert (job.lease_owner is not None) == (job.state is JobState.RUNNING)


_ANY_VALUE = st.one_of(st.none(), st.integers(), st.floats(allow_nan=False), st.text(max_size=5), st.booleans())


@given(base=st.fixed_dictionaries({}, optional={f.name: _ANY_VALUE for f in attrs.fields(Job)}), changes=st.dictionaries(st.sampled_from([f.name for f in attrs.fields(Job)]), _ANY_VALUE))
def test_the_generated_replace_is_attrs_evolve(base: dict[str, object], changes: dict[str, object]) -> None:
    """The transitions copy jobs with a generated ``_replace``: the same job as attrs.evolve,
    field by field (equality compares them all), and a new object."""
    job = make_job(**base)
    new = models._replace(job, dict(changes))
    assert new == attrs.evolve(job, **changes)
    assert attrs.asdict(new, recurse=False) == {**attrs.asdict(job, recurse=False), **changes}
    assert new is not job and type(new) is Job


def test_the_generated_replace_refuses_unknown_fields() -> None:
    with pytest.raises(TypeError, match=r"not Job fields: \['colour'\]"):
        models._replace(make_job(), {"state": JobState.RUNNING, "colour": "red"})
