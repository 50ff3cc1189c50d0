"""The store contract, run against every store (memory, SQLite, PostgreSQL).

This suite is what makes the in-memory store a *verified* fake: it behaves as the real
ones do. Times are passed in explicitly, so no clock is involved.
"""

from __future__ import annotations

import itertools
from typing import Any

import attrs
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from jobsvc import models
from jobsvc.errors import Conflict, IllegalTransition, JobNotFound
from jobsvc.models import Cancelled, ErrorRecord, Failed, Job, JobState, Released, Succeeded
from jobsvc.store import Finished, Store, open_store
from jobsvc.store import base as store_base

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


def claimed(job_id: str, *, owner: str = "w", now: float = NOW, lease: float = 30, **changes: object) -> Job:
    """A job as a claim at insert writes it: already running, leased to ``owner``."""
    return models.claim(new_job(job_id, **changes), owner=owner, now=now, lease=lease)


def same(a: Job, b: Job) -> bool:
    return attrs.evolve(a, seq=0) == attrs.evolve(b, seq=0)


async def test_insert_then_get_round_trips_every_field(store: Store) -> None:
    """A stored job reads back equal, with a store-assigned seq."""
    error = ErrorRecord.make(attempt=1, at=NOW - 1, type="Boom", message="it broke \u2603")
    job = new_job("a", priority=5, timeout=2.5, idempotency_key="k-a", errors=(error,), rescues=1, cancel_requested=False)
    [result] = await store.insert([job])
    assert result.created and result.job.seq > 0
    got = await store.get("a")
    assert got is not None and same(got, job) and got.seq == result.job.seq


#: Text a store column can hold: any character but NUL (PostgreSQL's text cannot) and lone
#: surrogates (not UTF-8; the HTTP layer refuses them).
_texts = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=12)
_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(exclude_categories=("Cs",)), max_size=12),  # NUL is fine inside JSON text
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_texts, inner, max_size=3),
    max_leaves=8,
)
_times = st.floats(min_value=0, max_value=253402300799.0)
_ids = itertools.count()


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    """A store's URL, for tests that open their store themselves (hypothesis runs each
    example in a trio run of its own, where the ``store`` fixture's is already over)."""
    if request.param == "memory":
        return "memory:"
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'jobs.db'}"
    return str(request.getfixturevalue("pg_url"))


@settings(database=None, max_examples=25)
@given(
    payload=_json,
    result=_json,
    task=_texts.filter(bool),
    tenant=st.none() | _texts.filter(bool),
    key=st.none() | _texts.filter(bool),
    priority=st.integers(-1000, 1000),
    timeout=st.none() | st.floats(min_value=0.001, max_value=86400.0),
    times=st.tuples(_times, _times, _times),
    message=_texts,
)
async def test_any_storable_job_round_trips(
    store_url: str, payload: object, result: object, task: str, tenant: str | None, key: str | None,
    priority: int, timeout: float | None, times: tuple[float, float, float], message: str,
) -> None:
    """Whatever a job holds (JSON of any shape, any text a column can hold, any float)
    reads back equal after an insert and after a fenced write of an outcome: the SQL stores
    send rows as parameters (PostgreSQL: one JSON document per batch) and must lose nothing."""
    run_at, created_at, updated_at = times
    n = next(_ids)  # the examples share a database: ids and keys are made unique
    job = new_job(
        f"h{n}", payload=payload, task=task, tenant=tenant, idempotency_key=None if key is None else f"{key}#{n}", priority=priority,
        timeout=timeout, run_at=run_at, created_at=created_at, updated_at=updated_at,
        errors=(ErrorRecord.make(attempt=1, at=updated_at, type="E", message=message),),
    )
    running = models.claim(job, owner="w", now=updated_at, lease=30)  # claimed at insert
    async with open_store(store_url, migrate=True) as store:
        [inserted] = await store.insert([running])
        got = await store.get(job.id)
        assert got is not None and same(got, running) and same(inserted.job, running)
        [written] = await store.record([Finished(got, Succeeded(result), updated_at + 1)])
        assert written is not None and same(written, models.conclude(got, Succeeded(result), now=updated_at + 1))
        again = await store.get(job.id)
        assert again is not None and same(again, written)


async def test_get_unknown_is_none(store: Store) -> None:
    """get of an unknown id is None, not an error."""
    assert await store.get("nope") is None


async def test_insert_batch_keeps_order_and_seq_increases(store: Store) -> None:
    """A batch is inserted in order; seq grows with insertion order."""
    results = await store.insert([new_job(f"b{i}") for i in range(5)])
    assert [r.job.id for r in results] == [f"b{i}" for i in range(5)]
    seqs = [r.job.seq for r in results]
    assert seqs == sorted(seqs) and len(set(seqs)) == 5


async def test_a_job_claimed_at_insert_is_stored_running(store: Store) -> None:
    """The claim at insert: a job that arrives already claimed is written as it is (one
    write), leased to its claimer, and is not claimable again."""
    job = claimed("ci", owner="me", lease=10)
    [result] = await store.insert([job])
    assert result.created and same(result.job, job)
    stored = await store.get("ci")
    assert stored is not None and (stored.state, stored.lease_owner, stored.lease_token, stored.lease_expires_at) == (
        JobState.RUNNING, "me", 1, NOW + 10,
    )
    assert (await store.claim(owner="other", now=NOW, lease=10, limit=5)).jobs == []


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
    jobs are not inserted either (nor counted)."""
    await store.insert([new_job("c0", idempotency_key="k", fingerprint="one")])
    other = new_job("c0", fingerprint="two") if clash == "id" else new_job("c9", idempotency_key="k", fingerprint="two")
    with pytest.raises(Conflict, match="different body"):
        await store.insert([new_job("fresh"), other])
    assert await store.get("fresh") is None
    assert [j.id for j in await store.list_jobs()] == ["c0"]
    assert (await store.counts()).by_state()[JobState.PENDING] == 1
    [later] = await store.insert([new_job("fresh")])
    assert later.created


async def test_find_names_the_holders_of_ids_and_keys(store: Store) -> None:
    """find: for each job, the stored job holding its id, else its key, else None."""
    await store.insert([new_job("f1", idempotency_key="key-1")])
    found = await store.find([new_job("f1"), new_job("other", idempotency_key="key-1"), new_job("new")])
    assert [j.id if j else None for j in found] == ["f1", "f1", None]


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


async def test_claim_order_limit_and_equivalence_with_models(store: Store) -> None:
    """claim takes due jobs by priority, then run_at, then seq, exactly as models.claim."""
    jobs = [
        new_job("low-early", run_at=NOW - 10),
        new_job("high", priority=5, run_at=NOW - 1),
        new_job("low-late", run_at=NOW - 5),
        new_job("future", priority=9, run_at=NOW + 60),
        new_job(
            "retrying", state=JobState.RETRYING, run_at=NOW - 5, attempts=1, lease_token=1, rescues=1, updated_at=NOW - 5,
            errors=(ErrorRecord.make(attempt=1, at=NOW - 6, type="Boom", message="no"),),
        ),
    ]
    await store.insert(jobs)
    first = await store.claim(owner="w1", now=NOW, lease=30, limit=3)
    assert [j.id for j in first.jobs] == ["high", "low-early", "low-late"]
    assert first.next_run_at is None  # a full claim: there may be more
    by_id = {j.id: j for j in jobs}
    for job in first.jobs:
        assert same(job, models.claim(by_id[job.id], owner="w1", now=NOW, lease=30))
        stored = await store.get(job.id)
        assert stored is not None and same(stored, job)
    rest = await store.claim(owner="w2", now=NOW, lease=30, limit=10)
    assert [j.id for j in rest.jobs] == ["retrying"]
    assert rest.jobs[0].attempts == 2 and rest.jobs[0].lease_token == 2
    assert same(rest.jobs[0], models.claim(by_id["retrying"], owner="w2", now=NOW, lease=30))
    assert rest.next_run_at == NOW + 60  # fewer than asked: when the next one is due
    assert (await store.claim(owner="w2", now=NOW, lease=30, limit=10)).jobs == []


async def test_claim_walks_priority_levels_past_jobs_not_yet_due(store: Store) -> None:
    """A higher priority level holding only jobs scheduled for later does not hide the due
    jobs of the levels below it, and within a level the order is run_at, then seq."""
    await store.insert(
        [new_job(f"later-{i}", priority=7, run_at=NOW + 100 + i) for i in range(5)]
        + [new_job("mid", priority=3, run_at=NOW - 1), new_job("low-b", run_at=NOW - 2), new_job("low-a", run_at=NOW - 3)]
        + [new_job(f"low-later-{i}", run_at=NOW + 50) for i in range(3)]
    )
    got = await store.claim(owner="w", now=NOW, lease=30, limit=10)
    assert [j.id for j in got.jobs] == ["mid", "low-a", "low-b"]
    assert got.next_run_at == NOW + 50


async def test_a_claim_moves_each_job_from_its_own_state_in_the_counts(store: Store) -> None:
    """Counts after a claim of pending and retrying jobs: each leaves its own state."""
    await store.insert([new_job("p1"), new_job("p2"), new_job("r1", state=JobState.RETRYING, attempts=1, run_at=NOW - 1)])
    assert len((await store.claim(owner="w", now=NOW, lease=30, limit=10)).jobs) == 3
    counts = (await store.counts()).by_state()
    assert (counts[JobState.PENDING], counts[JobState.RETRYING], counts[JobState.RUNNING]) == (0, 0, 3)


async def test_claim_filters_by_task(store: Store) -> None:
    """Only jobs of the given tasks are claimed; an empty task set claims nothing."""
    await store.insert([new_job("a", task="mine"), new_job("b", task="theirs")])
    assert (await store.claim(owner="w", now=NOW, lease=30, limit=10, tasks=[])).jobs == []
    assert [j.id for j in (await store.claim(owner="w", now=NOW, lease=30, limit=10, tasks=["mine"])).jobs] == ["a"]


async def test_concurrent_claimers_never_share_a_job(store: Store) -> None:
    """Many claimers at once, really overlapping: every job is claimed exactly once."""
    await store.insert([new_job(f"p{i}") for i in range(60)])
    got: list[str] = []
    in_flight = most = 0

    async def claimer(owner: str) -> None:
        nonlocal in_flight, most
        while True:
            in_flight += 1
            most = max(most, in_flight)
            try:
                batch = await store.claim(owner=owner, now=NOW, lease=30, limit=4)
            finally:
                in_flight -= 1
            if not batch.jobs:
                return
            got.extend(j.id for j in batch.jobs)

    async with trio.open_nursery() as nursery:
        for i in range(6):
            nursery.start_soon(claimer, f"w{i}")
    assert most >= 2  # the claims did overlap
    assert sorted(got) == sorted(f"p{i}" for i in range(60))


async def test_record_writes_each_outcome(store: Store) -> None:
    """record: success, a failure to retry, a permanent failure, a cancel and a release, in
    one call, each as models.conclude computes it."""
    jobs = [claimed(f"r{i}") for i in range(5)]
    await store.insert(jobs)
    outcomes: list[models.Outcome] = [Succeeded({"ok": 1}), Failed("Boom", "it broke"), Failed("Bad", "never", permanent=True), Cancelled(), Released()]
    finished = [Finished(job, outcome, NOW + 1, delay=2.5) for job, outcome in zip(jobs, outcomes, strict=True)]
    written = await store.record(finished)
    expected = [models.conclude(f.job, f.outcome, now=f.at, delay=2.5) for f in finished]
    assert [j.state if j else None for j in written] == [
        JobState.SUCCEEDED, JobState.RETRYING, JobState.DEAD, JobState.CANCELLED, JobState.PENDING,
    ]
    for want, got in zip(expected, written, strict=True):
        stored = await store.get(want.id)
        assert got is not None and stored is not None and same(got, want) and same(stored, want)
    retrying = await store.get("r1")
    assert retrying is not None and retrying.run_at == NOW + 3.5 and retrying.errors[0].type == "Boom"


async def test_record_is_fenced_on_the_attempt(store: Store) -> None:
    """A late outcome of an attempt whose job was rescued and claimed again is refused and
    changes nothing; the current attempt's outcome is written."""
    [first] = [r.job for r in await store.insert([claimed("f", lease=1)])]
    [rescued] = await store.rescue(now=NOW + 2, max_rescues=3)
    second = (await store.claim(owner="w2", now=NOW + 2, lease=30, limit=1)).jobs[0]
    assert second.lease_token == first.lease_token + 1 and rescued.rescues == 1
    assert await store.record([Finished(first, Succeeded("late"), NOW + 3)]) == [None]
    stored = await store.get("f")
    assert stored is not None and same(stored, second)
    [done] = await store.record([Finished(second, Succeeded("ok"), NOW + 4)])
    assert done is not None and done.result == "ok" and done.state is JobState.SUCCEEDED


async def test_record_of_a_big_batch_fences_each_outcome_on_its_own(store: Store) -> None:
    """One record call with 301 outcomes (PostgreSQL writes them with one statement): the
    current attempts' outcomes are written, the one of an attempt that lost its job is
    refused, and the counts follow."""
    current = [claimed(f"b{i:03}") for i in range(300)]
    await store.insert([*current, claimed("s", lease=1)])
    [stale] = [j for j in await store.rescue(now=NOW + 2, max_rescues=3)]
    retaken = (await store.claim(owner="w2", now=NOW + 2, lease=30, limit=1)).jobs[0]
    assert stale.id == retaken.id == "s"
    first = claimed("s", lease=1)  # the attempt that lost its job
    finished = [Finished(first, Succeeded("late"), NOW + 3), *(Finished(j, Succeeded(j.id), NOW + 3) for j in current)]
    written = await store.record(finished)
    assert written[0] is None
    assert [j.result if j else None for j in written[1:]] == [j.id for j in current]
    stored = await store.get("s")
    assert stored is not None and same(stored, retaken)
    counts = (await store.counts()).by_state()
    assert (counts[JobState.SUCCEEDED], counts[JobState.RUNNING]) == (300, 1)


async def test_a_fenced_update_of_many_rows_says_which_it_wrote(store: Store) -> None:
    """Tx.update on its own (record recomputes a refused outcome, so it would hide a row
    left out): 300 pairs in one call, the stale ones at the ends and in the middle refused."""
    jobs = [claimed(f"u{i:03}") for i in range(300)]
    await store.insert(jobs)
    stale = {0, 150, 254, 257, 299}
    pairs = [
        (models.succeed(j, result=i, now=NOW + 1), attrs.evolve(j, lease_token=j.lease_token + 1) if i in stale else j)
        for i, j in enumerate(jobs)
    ]
    written = await store._write(lambda tx: tx.update(pairs))
    assert written == [i not in stale for i in range(300)]
    assert (await store.counts()).by_state()[JobState.SUCCEEDED] == 300 - len(stale)


async def test_two_outcomes_for_one_job_in_one_batch_apply_in_order(store: Store) -> None:
    """Within one record call, a second outcome for the same attempt is fenced on the first
    (the job is no longer running): written once, never twice, never the second."""
    [job] = [r.job for r in await store.insert([claimed("twice")])]
    other = claimed("other")
    await store.insert([other])
    written = await store.record([Finished(job, Succeeded(1), NOW + 1), Finished(other, Succeeded(2), NOW + 1), Finished(job, Failed("E", "x"), NOW + 1, delay=5)])
    assert [j.state if j else None for j in written] == [JobState.SUCCEEDED, JobState.SUCCEEDED, None]
    stored = await store.get("twice")
    assert stored is not None and stored.state is JobState.SUCCEEDED and stored.result == 1
    assert (await store.counts()).by_state()[JobState.SUCCEEDED] == 2


async def test_the_stale_and_the_current_attempt_of_one_job_in_one_batch(store: Store) -> None:
    """A late outcome of the attempt that lost its job, recorded together with the current
    attempt's: only the current one is written and said to be."""
    await store.insert([claimed("s", lease=1)])
    await store.rescue(now=NOW + 2, max_rescues=3)
    current = (await store.claim(owner="w2", now=NOW + 2, lease=30, limit=1)).jobs[0]
    late = claimed("s", lease=1)
    written = await store.record([Finished(late, Succeeded("late"), NOW + 3), Finished(current, Succeeded("now"), NOW + 3)])
    assert [j.result if j else None for j in written] == [None, "now"]
    stored = await store.get("s")
    assert stored is not None and stored.result == "now"


async def test_a_cancel_requested_during_the_attempt_wins_over_its_retry(store: Store) -> None:
    """The outcome was computed from the job as claimed; a client asked to cancel meanwhile:
    the failure that would retry ends the job cancelled (with its error kept), and a
    success stays a success."""
    a, b = claimed("ca"), claimed("cb")
    await store.insert([a, b])
    for job_id in ("ca", "cb"):
        flagged = await store.modify(job_id, lambda j: models.request_cancel(j, now=NOW + 1))
        assert flagged.state is JobState.RUNNING and flagged.cancel_requested
    retried, succeeded = await store.record([Finished(a, Failed("Boom", "x"), NOW + 2, delay=5), Finished(b, Succeeded(1), NOW + 2)])
    assert retried is not None and (retried.state, retried.errors[-1].type, retried.cancel_requested) == (JobState.CANCELLED, "Boom", False)
    assert succeeded is not None and succeeded.state is JobState.SUCCEEDED
    stored = await store.get("ca")
    assert stored is not None and stored.state is JobState.CANCELLED


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


async def test_heartbeat_renews_attempts_and_reports_cancel_requests(store: Store) -> None:
    """heartbeat extends the leases of the attempts named, owned by the caller, and reports
    the ones a client asked to cancel."""
    await store.insert([claimed("h1", owner="me", lease=10), claimed("h2", owner="me", lease=10), claimed("h3", owner="other", lease=10)])
    await store.modify("h2", lambda j: models.request_cancel(j, now=NOW + 1))
    renewed = await store.heartbeat(owner="me", now=NOW + 5, lease=10, held=[("h1", 1), ("h2", 1), ("h3", 1), ("gone", 1)])
    assert renewed == {("h1", 1): False, ("h2", 1): True}
    h1, h3 = await store.get("h1"), await store.get("h3")
    assert h1 is not None and h1.lease_expires_at == NOW + 15
    assert h3 is not None and h3.lease_expires_at == NOW + 10
    assert await store.heartbeat(owner="me", now=NOW + 6, lease=10, held=[]) == {}


async def test_heartbeat_does_not_renew_an_attempt_whose_job_was_claimed_again(store: Store) -> None:
    """The job of attempt (id, 1) was rescued and claimed again by the same owner (token 2):
    a heartbeat for (id, 1) does not renew it, so the old attempt learns it lost its job."""
    await store.insert([claimed("again", owner="me", lease=1)])
    await store.rescue(now=NOW + 2, max_rescues=3)
    second = (await store.claim(owner="me", now=NOW + 2, lease=30, limit=1)).jobs[0]
    assert second.lease_token == 2
    assert await store.heartbeat(owner="me", now=NOW + 3, lease=30, held=[("again", 1)]) == {}
    assert await store.heartbeat(owner="me", now=NOW + 3, lease=30, held=[("again", 2)]) == {("again", 2): False}


async def test_heartbeat_renews_only_the_attempts_named(store: Store) -> None:
    """A running job of the owner that the process no longer holds is not renewed: its lease
    lapses and it can be rescued."""
    await store.insert([claimed("held", owner="me", lease=10), claimed("forgotten", owner="me", lease=10)])
    assert await store.heartbeat(owner="me", now=NOW + 8, lease=10, held=[("held", 1)]) == {("held", 1): False}
    rescued = await store.rescue(now=NOW + 11, max_rescues=3)
    assert [j.id for j in rescued] == ["forgotten"]


async def test_rescue_takes_back_only_expired_leases(store: Store) -> None:
    """rescue: expired leases go back to pending (rescues+1, the attempt handed back); live
    leases stay."""
    await store.insert([claimed("old", owner="gone", lease=5), claimed("live", owner="alive", now=NOW + 4, lease=5)])
    rescued = await store.rescue(now=NOW + 6, max_rescues=3)
    assert [(j.id, j.state, j.rescues, j.attempts) for j in rescued] == [("old", JobState.PENDING, 1, 0)]
    live = await store.get("live")
    assert live is not None and live.state is JobState.RUNNING


async def test_rescue_all_at_startup_of_an_exclusive_store(store: Store) -> None:
    """expired_only=False takes back every running job, whatever its lease."""
    await store.insert([claimed("s1", owner="x", lease=1000), new_job("s2")])
    rescued = await store.rescue(now=NOW + 1, max_rescues=3, expired_only=False)
    assert [j.id for j in rescued] == ["s1"]


async def test_rescued_too_often_goes_to_the_dead_letter_queue(store: Store) -> None:
    """The max_rescues-th rescue makes the job dead with WorkerLost."""
    await store.insert([claimed("poison", lease=1, rescues=2)])
    [dead] = await store.rescue(now=NOW + 2, max_rescues=3)
    assert dead.state is JobState.DEAD and dead.errors[-1].type == "WorkerLost"
    stored = await store.get("poison")
    assert stored is not None and stored.state is JobState.DEAD and stored.finished_at == NOW + 2


async def test_a_rescued_job_that_a_client_asked_to_cancel_is_cancelled(store: Store) -> None:
    """A cancel request wins over a rescue: the job ends cancelled instead of running again."""
    await store.insert([claimed("rc", lease=1)])
    await store.modify("rc", lambda j: models.request_cancel(j, now=NOW))
    [job] = await store.rescue(now=NOW + 2, max_rescues=3)
    assert (job.state, job.rescues) == (JobState.CANCELLED, 0)


async def test_next_run_at(store: Store) -> None:
    """next_run_at is the earliest run_at among claimable jobs of the given tasks."""
    assert await store.next_run_at() is None
    await store.insert([new_job("n1", run_at=NOW + 30), new_job("n2", run_at=NOW + 10, task="u"), claimed("n3")])
    assert await store.next_run_at() == NOW + 10
    assert await store.next_run_at(tasks=["t"]) == NOW + 30
    assert await store.next_run_at(tasks=[]) is None


async def test_counts_follow_every_change(store: Store) -> None:
    """counts: by task and by state, kept up to date through inserts, claims, outcomes,
    rescues, cancels and prunes; they always equal a recount of the rows."""

    async def recount() -> dict[str, dict[JobState, int]]:
        by_task: dict[str, dict[JobState, int]] = {}
        for job in await store.list_jobs(limit=1000):
            by_task.setdefault(job.task, dict.fromkeys(JobState, 0))[job.state] += 1
        return by_task

    async def check() -> None:
        counts = await store.counts()
        assert {t: dict(s) for t, s in counts.by_task.items()} == await recount()

    await store.insert([new_job("c1"), new_job("c2", task="u"), claimed("c3"), new_job("c4", run_at=NOW + 100)])
    await check()
    got = await store.claim(owner="w", now=NOW, lease=5, limit=10)
    await check()
    await store.record([Finished(got.jobs[0], Succeeded(None), NOW + 1), Finished(got.jobs[1], Failed("E", "m"), NOW + 1, delay=1)])
    await check()
    await store.rescue(now=NOW + 100, max_rescues=3)
    await store.modify("c4", lambda j: models.request_cancel(j, now=NOW + 101))
    await check()
    await store.prune(finished_before=NOW + 1000)
    await check()
    counts = await store.counts()
    assert counts.by_state()[JobState.SUCCEEDED] == 0 and counts.waiting == 2
    assert set(counts.by_state()) == set(JobState)


async def test_prune_deletes_only_old_final_jobs_in_batches(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """prune removes final jobs finished before the cut-off, a batch per transaction, and
    frees their keys."""
    monkeypatch.setattr(store_base, "PRUNE_BATCH", 2)
    jobs = [claimed(f"old{i}", idempotency_key=f"ko{i}") for i in range(5)] + [claimed("new")]
    await store.insert([*jobs, new_job("waiting")])
    await store.record([Finished(j, Succeeded(None), NOW + 1) for j in jobs[:5]])
    await store.record([Finished(jobs[5], Succeeded(None), NOW + 100)])
    assert await store.prune(finished_before=NOW + 50) == 5
    assert await store.get("old0") is None
    assert await store.get("new") is not None and await store.get("waiting") is not None
    [again] = await store.insert([new_job("old-again", idempotency_key="ko0")])
    assert again.created


async def test_ping(store: Store) -> None:
    """A healthy store answers ping."""
    await store.ping()


# -- tenants ---------------------------------------------------------------------------


async def test_the_tenant_round_trips(store: Store) -> None:
    """A job's tenant is stored and read back (None stays None), through inserts, claims and
    outcomes."""
    [acme] = await store.insert([claimed("t-acme", tenant="acme")])
    [none] = await store.insert([new_job("t-none")])
    assert acme.job.tenant == "acme" and none.job.tenant is None
    got, other = await store.get("t-acme"), await store.get("t-none")
    assert got is not None and same(got, claimed("t-acme", tenant="acme")) and got.tenant == "acme"
    assert other is not None and other.tenant is None
    [done] = await store.record([Finished(acme.job, Succeeded(1), NOW + 1)])
    assert done is not None and done.tenant == "acme"
    stored = await store.get("t-acme")
    assert stored is not None and stored.tenant == "acme" and stored.state is JobState.SUCCEEDED


async def test_idempotency_keys_are_per_tenant(store: Store) -> None:
    """The same Idempotency-Key in two tenants (and without one) makes three jobs; within a
    tenant it replays the first job; find looks a key up in the job's own tenant."""
    results = await store.insert(
        [
            new_job("ka", idempotency_key="same", tenant="acme", fingerprint="f"),
            new_job("kb", idempotency_key="same", tenant="globex", fingerprint="f"),
            new_job("kn", idempotency_key="same", fingerprint="f"),
        ]
    )
    assert [r.created for r in results] == [True, True, True]
    [again] = await store.insert([new_job("ka2", idempotency_key="same", tenant="acme", fingerprint="f")])
    assert not again.created and again.job.id == "ka"
    [other] = await store.insert([new_job("kc", idempotency_key="same", tenant="initech", fingerprint="f")])
    assert other.created
    found = await store.find([new_job("x", idempotency_key="same", tenant="globex"), new_job("y", idempotency_key="same")])
    assert [j.id if j else None for j in found] == ["kb", "kn"]


async def test_a_job_id_held_outside_the_tenant_is_a_conflict_that_names_nothing(store: Store) -> None:
    """Job ids are global: a tenant submitting an id that a job of no tenant holds gets a
    Conflict that says nothing of that job (not its body, not a replay of it), even with
    the very same body."""
    await store.insert([new_job("taken", fingerprint="same")])
    with pytest.raises(Conflict) as caught:
        await store.insert([new_job("taken", tenant="acme", fingerprint="same")])
    assert str(caught.value) == "the job id 'taken' is not available; choose another"
    [replay] = await store.insert([new_job("taken", fingerprint="same")])  # no tenant: sees every job
    assert not replay.created


async def test_listings_are_filtered_by_tenant_and_keyset_paginated(store: Store) -> None:
    """list_jobs(tenant=...) returns that tenant's jobs only, in seq order, page by page,
    with state and task filters; tenant=None lists every job."""
    jobs = [new_job(f"p{i}", tenant=("acme", "globex", None)[i % 3], task="even" if i % 2 == 0 else "odd") for i in range(12)]
    await store.insert(jobs)
    await store.modify("p3", lambda j: models.request_cancel(j, now=NOW + 1))
    acme = [j.id for j in jobs if j.tenant == "acme"]
    page1 = await store.list_jobs(tenant="acme", limit=2)
    page2 = await store.list_jobs(tenant="acme", limit=2, after=page1[-1].seq)
    page3 = await store.list_jobs(tenant="acme", limit=2, after=page2[-1].seq)
    assert [j.id for j in page1 + page2 + page3] == acme == ["p0", "p3", "p6", "p9"]
    assert [j.id for j in await store.list_jobs(tenant="acme", states=[JobState.CANCELLED])] == ["p3"]
    assert [j.id for j in await store.list_jobs(tenant="acme", task="even")] == ["p0", "p6"]
    assert [j.id for j in await store.list_jobs(tenant="nobody")] == []
    assert len(await store.list_jobs()) == 12


async def test_counts_by_tenant(store: Store) -> None:
    """counts(tenant=...) counts that tenant's jobs only, kept up to date through changes;
    counts() counts every tenant's."""
    await store.insert([new_job("c1", tenant="acme"), new_job("c2", tenant="acme", task="u"), claimed("c3", tenant="globex"), new_job("c4")])
    await store.modify("c1", lambda j: models.request_cancel(j, now=NOW + 1))
    acme = await store.counts(tenant="acme")
    assert {t: {s: n for s, n in states.items() if n} for t, states in acme.by_task.items()} == {
        "t": {JobState.CANCELLED: 1}, "u": {JobState.PENDING: 1},
    }
    assert acme.waiting == 1
    assert (await store.counts(tenant="globex")).by_state()[JobState.RUNNING] == 1
    assert (await store.counts(tenant="nobody")).waiting == 0
    everyone = await store.counts()
    assert everyone.waiting == 2 and sum(everyone.by_state().values()) == 4


async def test_modify_scoped_to_a_tenant_does_not_find_another_tenants_job(store: Store) -> None:
    """modify(tenant=...) of another tenant's job is JobNotFound, with the message an unknown
    id gets, and changes nothing; the job's own tenant (and no tenant) can modify it."""
    await store.insert([new_job("mine", tenant="acme")])
    with pytest.raises(JobNotFound) as caught:
        await store.modify("mine", lambda j: models.request_cancel(j, now=NOW + 1), tenant="globex")
    with pytest.raises(JobNotFound) as unknown:
        await store.modify("nope", lambda j: j, tenant="globex")
    assert str(caught.value) == str(unknown.value).replace("nope", "mine")
    stored = await store.get("mine")
    assert stored is not None and stored.state is JobState.PENDING
    done = await store.modify("mine", lambda j: models.request_cancel(j, now=NOW + 1), tenant="acme")
    assert done.state is JobState.CANCELLED
    again = await store.modify("mine", lambda j: models.redrive(j, now=NOW + 2))
    assert again.state is JobState.PENDING
