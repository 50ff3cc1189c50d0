"""The attempts table on its own: one record per (job id, lease token), an older attempt of
a job stopped when a newer one is added, and nothing kept once settled."""

from __future__ import annotations

from jobsvc.models import Job, JobState
from jobsvc.service.attempts import Attempts, Phase


def _claimed(job_id: str, token: int) -> Job:
    return Job(
        id=job_id, task="t", payload=None, max_attempts=3, run_at=0.0, created_at=0.0, updated_at=0.0,
        state=JobState.RUNNING, attempts=token, lease_token=token, lease_owner="me",
    )


async def test_a_newer_attempt_of_a_job_stops_the_older_one_and_waits_for_it() -> None:
    attempts = Attempts(workers=4)
    other = attempts.add(_claimed("b", 1))
    first = attempts.add(_claimed("a", 1))
    second = attempts.add(_claimed("a", 2))
    assert first.lost and first.stop_reason == "lost" and first.scope.cancel_called
    assert not other.lost and not second.lost, "only older attempts of the same job are stopped"
    assert attempts.superseded(second) == [first]
    assert attempts.superseded(first) == [] and attempts.superseded(other) == []
    first.ended.set()  # its handler returned
    assert attempts.superseded(second) == []
    assert attempts.get(("a", 1)) is first and attempts.get(("a", 2)) is second and len(attempts) == 3


async def test_settled_attempts_leave_nothing_behind() -> None:
    attempts = Attempts(workers=2)
    first = attempts.add(_claimed("a", 1))
    second = attempts.add(_claimed("a", 2))
    attempts.settle(first)
    assert attempts.get(("a", 1)) is None and attempts.superseded(second) == []
    third = attempts.add(_claimed("a", 3))
    assert second.lost and not third.lost
    attempts.settle(second)
    attempts.settle(third)
    attempts.settle(third)  # twice: no error
    assert len(attempts) == 0 and attempts._by_job == {}, "a settled job's index entry is dropped"


async def test_busy_and_idle_count_queued_and_running_attempts_only() -> None:
    attempts = Attempts(workers=3)
    queued = attempts.add(_claimed("a", 1))
    running = attempts.add(_claimed("b", 1))
    running.phase = Phase.RUNNING
    recording = attempts.add(_claimed("c", 1))
    recording.phase = Phase.RECORDING
    assert (attempts.busy(), attempts.idle()) == (2, 1)
    with attempts.reserve(5) as n:
        assert n == 1 and attempts.idle() == 0
    assert attempts.idle() == 1 and queued.phase is Phase.QUEUED
