"""The store contract, run against every store (memory, SQLite, PostgreSQL).

This suite is what makes the in-memory store a *verified* fake: it behaves as the real
ones do. Times are passed in explicitly, so no clock is involved.
"""

from __future__ import annotations

import attrs
import pytest
import trio

from jobsvc import models
from jobsvc.errors import Conflict, IllegalTransition, JobNotFound
from jobsvc.models import ErrorRecord, Job, JobState
from jobsvc.store import Store

NOW = 1_000_000.0


def new_job(job_id: str, **changes: object) -> Job:
    base = Job(
        id=job_id,
        task="t",
        payload={"n": job_id, "text": "h\u00e9llo \u2603", "nested": [1, 2.5, None, True, {"k": "v"}]},
        max_attempts=3,
        run_at=NOW,
        created_at=NOW,
        updated_at=NOW,
        fingerprint="fp-" + job_id,
    )
    return attrs.evolve(base, **changes)


def same(a: Job, b: Job) -> bool:
    return attrs.evolve(a, seq=0) == attrs.evolve(b, seq=0)


async def test_insert_then_get_round_trips_every_field(store: Store) -> None:
    """A stored job reads back equal, with a store-assigned seq."""
    job = new_job("a", priority=5, timeout=2.5, idempotency_key="k-a", result=None)
    [result] = await store.insert([job])
    assert result.created and result.job.seq > 0
    got = await store.get("a")
    assert got is not None and same(got, job) and got.seq == result.job.seq


async def test_get_unknown_is_none(store: Store) -> None:
    """get of an unknown id is None, not an error."""
    assert await store.get("nope") is None


async def test_insert_batch_keeps_order_and_seq_increases(store: Store) -> None:
    """A batch is inserted in order; seq grows with insertion order."""
    results = await store.insert([new_job(f"b{i}") for i in range(5)])
    assert [r.job.id for r in results] == [f"b{i}" for i in range(5)]
    seqs = [r.job.seq for r in results]
    assert seqs == sorted(seqs) and len(set(seqs)) == 5


async def test_duplicate_id_returns_the_stored_job(store: Store) -> None:
    """Re-inserting an id with the same body changes nothing and returns the first job."""
    await store.insert([new_job("d", payload="first")])
    [again] = await store.insert([new_job("d", payload="second")])
    assert not again.created and again.job.payload == "first"


async def test_duplicate_idempotency_key_returns_the_stored_job(store: Store) -> None:
    """A second job with the same idempotency key (and body) is not inserted."""
    await store.insert([new_job("k1", idempotency_key="key", fingerprint="same")])
    [again] = await store.insert([new_job("k2", idempotency_key="key", fingerprint="same")])
    assert not again.created and again.job.id == "k1"
    assert await store.get("k2") is None


async def test_duplicates_inside_one_batch(store: Store) -> None:
    """Within one batch the second copy of an id is reported as existing."""
    first, second = await store.insert([new_job("x"), new_job("x", payload="other")])
    assert first.created and not second.created and second.job.payload == first.job.payload


@pytest.mark.parametrize("clash", ["id", "key"])
async def test_a_conflicting_batch_inserts_nothing(store: Store, clash: str) -> None:
    """Same id or key with another body (fingerprint): Conflict, and the batch's other
    jobs are not inserted either."""
    await store.insert([new_job("c0", idempotency_key="k", fingerprint="one")])
    other = new_job("c0", fingerprint="two") if clash == "id" else new_job("c9", idempotency_key="k", fingerprint="two")
    with pytest.raises(Conflict, match="different body"):
        await store.insert([new_job("fresh"), other])
    assert await store.get("fresh") is None
    assert [j.id for j in await store.list_jobs()] == ["c0"]
    [later] = await store.insert([new_job("fresh")])
    assert later.created


async def test_list_filters_and_paginates_by_seq(store: Store) -> None:
    """list_jobs filters by state and task and pages with after/limit in seq order."""
    await store.insert([new_job(f"l{i}", task="even" if i % 2 == 0 else "odd") for i in range(7)])
    dead = await store.modify("l3", lambda j: attrs.evolve(j, state=JobState.DEAD))
    assert dead.state is JobState.DEAD
    page1 = await store.list_jobs(limit=3)
    page2 = await store.list_jobs(limit=3, after=page1[-1].seq)
    page3 = await store.list_jobs(limit=3, after=page2[-1].seq)
    assert [j.id for j in page1 + page2 + page3] == [f"l{i}" for i in range(7)]
    assert [j.id for j in await store.list_jobs(task="even")] == ["l0", "l2", "l4", "l6"]
    assert [j.id for j in await store.list_jobs(states=[JobState.DEAD])] == ["l3"]
    assert [j.id for j in await store.list_jobs(states=[JobState.DEAD, JobState.PENDING], task="odd")] == ["l1", "l3", "l5"]


async def test_claim_due_order_limit_and_equivalence_with_models(store: Store) -> None:
    """claim_due takes due jobs by priority, then run_at, then seq, exactly as models.claim."""
    jobs = [
        new_job("low-early", run_at=NOW - 10),
        new_job("high", priority=5, run_at=NOW - 1),
        new_job("low-late", run_at=NOW - 5),
        new_job("future", priority=9, run_at=NOW + 60),
        new_job("retrying", state=JobState.RETRYING, run_at=NOW - 5, attempts=1, lease_token=1),
    ]
    await store.insert(jobs)
    claimed = await store.claim_due(owner="w1", now=NOW, lease=30, limit=3)
    assert [j.id for j in claimed] == ["high", "low-early", "low-late"]
    by_id = {j.id: j for j in jobs}
    for job in claimed:
        assert same(job, models.claim(by_id[job.id], owner="w1", now=NOW, lease=30))
        stored = await store.get(job.id)
        assert stored is not None and same(stored, job)
    rest = await store.claim_due(owner="w2", now=NOW, lease=30, limit=10)
    assert [j.id for j in rest] == ["retrying"]
    assert rest[0].attempts == 2 and rest[0].lease_token == 2
    assert await store.claim_due(owner="w2", now=NOW, lease=30, limit=10) == []


async def test_claim_due_filters_by_task(store: Store) -> None:
    """Only jobs of the given tasks are claimed; an empty task set claims nothing."""
    await store.insert([new_job("a", task="mine"), new_job("b", task="theirs")])
    assert await store.claim_due(owner="w", now=NOW, lease=30, limit=10, tasks=[]) == []
    assert [j.id for j in await store.claim_due(owner="w", now=NOW, lease=30, limit=10, tasks=["mine"])] == ["a"]


async def test_claim_one_job(store: Store) -> None:
    """claim(id) takes a due waiting job once; not-due, running or unknown jobs give None."""
    await store.insert([new_job("c"), new_job("later", run_at=NOW + 5)])
    got = await store.claim("c", owner="w", now=NOW, lease=10)
    assert got is not None and got.state is JobState.RUNNING and got.lease_expires_at == NOW + 10
    assert await store.claim("c", owner="w2", now=NOW, lease=10) is None
    assert await store.claim("later", owner="w", now=NOW, lease=10) is None
    assert await store.claim("missing", owner="w", now=NOW, lease=10) is None


async def test_concurrent_claimers_never_share_a_job(store: Store) -> None:
    """Many claimers at once: every job is claimed exactly once."""
    await store.insert([new_job(f"p{i}") for i in range(60)])
    got: list[str] = []

    async def claimer(owner: str) -> None:
        while batch := await store.claim_due(owner=owner, now=NOW, lease=30, limit=4):
            got.extend(j.id for j in batch)

    async with trio.open_nursery() as nursery:
        for i in range(6):
            nursery.start_soon(claimer, f"w{i}")
    assert sorted(got) == sorted(f"p{i}" for i in range(60))


async def test_save_is_fenced_on_state_and_token(store: Store) -> None:
    """save writes only if the row still has the expected state and lease token."""
    await store.insert([new_job("f")])
    first = await store.claim("f", owner="w1", now=NOW, lease=1)
    assert first is not None
    # The lease expires, the job is rescued and claimed again by another worker.
    [rescued] = await store.rescue(now=NOW + 2, max_rescues=3)
    second = await store.claim("f", owner="w2", now=NOW + 2, lease=30)
    assert second is not None and second.lease_token == first.lease_token + 1
    # The first worker's late completion is refused and changes nothing.
    assert not await store.save(models.succeed(first, result="late", now=NOW + 3), expected=first)
    stored = await store.get("f")
    assert stored is not None and same(stored, second)
    # The current owner's completion is written.
    done = models.succeed(second, result="ok", now=NOW + 4)
    assert await store.save(done, expected=second)
    stored = await store.get("f")
    assert stored is not None and same(stored, done)
    assert rescued.rescues == 1


async def test_save_of_failure_writes_errors_and_run_at(store: Store) -> None:
    """A failed attempt's error history and next run time persist."""
    await store.insert([new_job("e")])
    running = await store.claim("e", owner="w", now=NOW, lease=30)
    assert running is not None
    error = ErrorRecord.make(attempt=1, at=NOW + 1, type="Boom", message="it broke \u2603")
    failed = models.fail(running, error=error, now=NOW + 1, delay=2.5)
    assert await store.save(failed, expected=running)
    stored = await store.get("e")
    assert stored is not None and stored.errors == (error,) and stored.run_at == NOW + 3.5
    assert stored.state is JobState.RETRYING and stored.lease_owner is None


async def test_modify_applies_a_transition_atomically(store: Store) -> None:
    """modify runs a pure change on the current row; unknown ids raise JobNotFound."""
    await store.insert([new_job("m")])
    cancelled = await store.modify("m", lambda j: models.request_cancel(j, now=NOW + 1))
    assert cancelled.state is JobState.CANCELLED
    stored = await store.get("m")
    assert stored is not None and stored.state is JobState.CANCELLED and stored.finished_at == NOW + 1
    with pytest.raises(JobNotFound):
        await store.modify("missing", lambda j: j)


async def test_modify_that_raises_changes_nothing(store: Store) -> None:
    """An illegal transition inside modify rolls back."""
    await store.insert([new_job("r")])
    with pytest.raises(IllegalTransition):
        await store.modify("r", lambda j: models.redrive(j, now=NOW))
    stored = await store.get("r")
    assert stored is not None and stored.state is JobState.PENDING and stored.updated_at == NOW


async def test_cancel_request_on_running_job_is_seen_by_heartbeat(store: Store) -> None:
    """heartbeat extends the owner's leases and reports the ones asked to cancel."""
    await store.insert([new_job("h1"), new_job("h2"), new_job("h3")])
    await store.claim("h1", owner="me", now=NOW, lease=10)
    await store.claim("h2", owner="me", now=NOW, lease=10)
    await store.claim("h3", owner="other", now=NOW, lease=10)
    flagged = await store.modify("h2", lambda j: models.request_cancel(j, now=NOW + 1))
    assert flagged.state is JobState.RUNNING and flagged.cancel_requested
    renewed = await store.heartbeat(owner="me", now=NOW + 5, lease=10, job_ids=["h1", "h2", "h3", "gone"])
    assert renewed == {"h1": False, "h2": True}
    h1, h3 = await store.get("h1"), await store.get("h3")
    assert h1 is not None and h1.lease_expires_at == NOW + 15
    assert h3 is not None and h3.lease_expires_at == NOW + 10
    assert await store.heartbeat(owner="me", now=NOW + 6, lease=10, job_ids=[]) == {}


async def test_heartbeat_renews_only_the_jobs_named(store: Store) -> None:
    """A running job of the owner that the process no longer holds is not renewed: its lease
    lapses and it can be rescued."""
    await store.insert([new_job("held"), new_job("forgotten")])
    await store.claim("held", owner="me", now=NOW, lease=10)
    await store.claim("forgotten", owner="me", now=NOW, lease=10)
    assert await store.heartbeat(owner="me", now=NOW + 8, lease=10, job_ids=["held"]) == {"held": False}
    rescued = await store.rescue(now=NOW + 11, max_rescues=3)
    assert [j.id for j in rescued] == ["forgotten"]


async def test_rescue_takes_back_only_expired_leases(store: Store) -> None:
    """rescue: expired leases go back to pending (rescues+1); live leases stay."""
    await store.insert([new_job("old"), new_job("live")])
    await store.claim("old", owner="gone", now=NOW, lease=5)
    await store.claim("live", owner="alive", now=NOW + 4, lease=5)
    rescued = await store.rescue(now=NOW + 6, max_rescues=3)
    assert [(j.id, j.state, j.rescues, j.attempts) for j in rescued] == [("old", JobState.PENDING, 1, 0)]
    live = await store.get("live")
    assert live is not None and live.state is JobState.RUNNING


async def test_rescue_all_at_startup_of_an_exclusive_store(store: Store) -> None:
    """expired_only=False takes back every running job, whatever its lease."""
    await store.insert([new_job("s1"), new_job("s2")])
    await store.claim("s1", owner="x", now=NOW, lease=1000)
    rescued = await store.rescue(now=NOW + 1, max_rescues=3, expired_only=False)
    assert [j.id for j in rescued] == ["s1"]


async def test_rescued_too_often_goes_to_the_dead_letter_queue(store: Store) -> None:
    """The max_rescues-th rescue makes the job dead with WorkerLost."""
    await store.insert([new_job("poison", rescues=2)])
    await store.claim("poison", owner="x", now=NOW, lease=1)
    [dead] = await store.rescue(now=NOW + 2, max_rescues=3)
    assert dead.state is JobState.DEAD and dead.errors[-1].type == "WorkerLost"
    stored = await store.get("poison")
    assert stored is not None and stored.state is JobState.DEAD and stored.finished_at == NOW + 2


async def test_next_run_at(store: Store) -> None:
    """next_run_at is the earliest run_at among claimable jobs of the given tasks."""
    assert await store.next_run_at() is None
    await store.insert([new_job("n1", run_at=NOW + 30), new_job("n2", run_at=NOW + 10, task="u"), new_job("n3", run_at=NOW + 1)])
    await store.claim("n3", owner="w", now=NOW + 2, lease=5)
    assert await store.next_run_at() == NOW + 10
    assert await store.next_run_at(tasks=["t"]) == NOW + 30


async def test_count_by_state(store: Store) -> None:
    """count_by_state reports every state, zero included."""
    await store.insert([new_job("c1"), new_job("c2")])
    await store.claim("c1", owner="w", now=NOW, lease=5)
    counts = await store.count_by_state()
    assert counts[JobState.PENDING] == 1 and counts[JobState.RUNNING] == 1 and counts[JobState.DEAD] == 0
    assert set(counts) == set(JobState)


async def test_prune_deletes_only_old_final_jobs(store: Store) -> None:
    """prune removes final jobs finished before the cut-off and frees their keys."""
    await store.insert([new_job("old", idempotency_key="ko"), new_job("new"), new_job("waiting")])
    for job_id, at in (("old", NOW + 1), ("new", NOW + 100)):
        running = await store.claim(job_id, owner="w", now=at, lease=5)
        assert running is not None
        assert await store.save(models.succeed(running, result=None, now=at), expected=running)
    assert await store.prune(finished_before=NOW + 50) == 1
    assert await store.get("old") is None
    assert await store.get("new") is not None and await store.get("waiting") is not None
    [again] = await store.insert([new_job("old2", idempotency_key="ko")])
    assert again.created


async def test_ping(store: Store) -> None:
    """A healthy store answers ping."""
    await store.ping()
