"""PostgreSQL-specific behaviour of the store: migrations, rescue and fencing on injected
state, SKIP LOCKED between instances, LISTEN/NOTIFY wake-ups, and losing the server.

The behaviour every store shares is in tests/store/test_contract.py.
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import attrs
import psycopg
import pytest
import trio
from pg_fixtures import admin_connect  # tests/ is on sys.path (tests/conftest.py); so are the pg_* fixtures

from jobsvc import models
from jobsvc.errors import ConfigError, IllegalTransition, JobNotFound, StoreUnavailable
from jobsvc.models import Failed, Job, JobState, Released, Succeeded
from jobsvc.store import Finished, open_store, postgres
from jobsvc.store.postgres import (
    CURRENT_VERSION,
    MIGRATIONS,
    PostgresStore,
    apply_migrations,
    migrate,
    open_postgres_store,
)

pytestmark = pytest.mark.postgres

NOW = 1_700_000_000.0
LEASE = 30.0


def make_job(job_id: str, *, run_at: float = NOW, priority: int = 0, task: str = "t", key: str | None = None) -> Job:
    return Job(
        id=job_id,
        task=task,
        payload={"n": job_id},
        max_attempts=5,
        run_at=run_at,
        created_at=NOW - 10,
        updated_at=NOW - 10,
        priority=priority,
        idempotency_key=key,
    )


@pytest.fixture
async def store(pg_url: str) -> AsyncIterator[PostgresStore]:
    async with open_postgres_store(pg_url) as s:
        yield s


def sql(url: str, query: str, params: Any = None) -> list[tuple[Any, ...]]:
    """Run one statement on the test database outside the store (state injection, checks)."""
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(query, params)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else []


async def claim_all(store: PostgresStore, *, owner: str, now: float = NOW, lease: float = LEASE, limit: int = 10, tasks: list[str] | None = None) -> list[Job]:
    return (await store.claim(owner=owner, now=now, lease=lease, limit=limit, tasks=tasks)).jobs


def inject_running(url: str, job_id: str, *, owner: str, token: int, expires_at: float, attempts: int = 1, rescues: int = 0) -> None:
    """Make a job look claimed by ``owner`` whose lease ends at ``expires_at``."""
    n = sql(
        url,
        "UPDATE jobs SET state = 'running', lease_owner = %s, lease_token = %s, lease_expires_at = %s, "
        "attempts = %s, rescues = %s WHERE id = %s RETURNING id",
        (owner, token, expires_at, attempts, rescues, job_id),
    )
    assert len(n) == 1


# ----------------------------------------------------------------------------- migrations


async def test_empty_database_is_a_config_error_naming_jobsvc_migrate(pg_empty_url: str) -> None:
    with pytest.raises(ConfigError, match=r"run `jobsvc migrate --db URL` \(or start jobsvc serve with --migrate\)"):
        async with open_postgres_store(pg_empty_url):
            pass
    # and open_store's dispatch says the same
    with pytest.raises(ConfigError, match="jobsvc migrate"):
        async with open_store(pg_empty_url):
            pass
    # nothing was created behind the operator's back
    assert sql(pg_empty_url, "SELECT to_regclass('jobs'), to_regclass('jobsvc_schema')") == [(None, None)]


async def test_migrate_applies_then_is_a_no_op(pg_empty_url: str) -> None:
    applied = await migrate(pg_empty_url)
    assert applied == [name for _, name, _ in MIGRATIONS]
    rows = sql(pg_empty_url, "SELECT version, name, applied_at IS NOT NULL FROM jobsvc_schema ORDER BY version")
    assert rows == [(v, name, True) for v, name, _ in MIGRATIONS]
    assert await migrate(pg_empty_url) == []
    assert len(sql(pg_empty_url, "SELECT * FROM jobsvc_schema")) == len(MIGRATIONS)
    async with open_postgres_store(pg_empty_url) as store:
        assert store.kind == "postgresql"
        assert store.exclusive is False
        await store.ping()


async def test_open_with_migrate_true_applies_migrations(pg_empty_url: str) -> None:
    async with open_store(pg_empty_url, migrate=True) as store:
        assert isinstance(store, PostgresStore)
        assert (await store.insert([make_job("a")]))[0].created
    assert sql(pg_empty_url, "SELECT max(version) FROM jobsvc_schema") == [(CURRENT_VERSION,)]


def test_two_concurrent_migrations_leave_one_consistent_schema(pg_empty_url: str) -> None:
    barrier = threading.Barrier(2)
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            barrier.wait(timeout=10)
            results.append(apply_migrations(pg_empty_url))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert sorted(results, key=len) == [[], [name for _, name, _ in MIGRATIONS]]
    assert sql(pg_empty_url, "SELECT version FROM jobsvc_schema ORDER BY version") == [(v,) for v, _, _ in MIGRATIONS]
    assert sql(pg_empty_url, "SELECT count(*) FROM pg_indexes WHERE tablename = 'jobs'") == [(11,)]  # 8 + pkey + 2 unique


async def test_schema_ahead_of_the_code_is_a_config_error(pg_url: str) -> None:
    sql(pg_url, "INSERT INTO jobsvc_schema (version, name) VALUES (%s, 'from the future')", (CURRENT_VERSION + 1,))
    with pytest.raises(ConfigError, match="newer than this jobsvc"):
        async with open_postgres_store(pg_url):
            pass
    with pytest.raises(ConfigError, match="newer than this jobsvc"):
        await migrate(pg_url)


# ----------------------------------------------------------------------------- claims


async def test_claim_equals_models_claim_in_claim_order(store: PostgresStore) -> None:
    jobs = [
        make_job("low", priority=0, run_at=NOW - 5),
        make_job("high-late", priority=5, run_at=NOW - 1),
        make_job("high-early", priority=5, run_at=NOW - 2),
        make_job("other-task", priority=9, task="other"),
        make_job("future", priority=9, run_at=NOW + 60),
    ]
    stored = {r.job.id: r.job for r in await store.insert(jobs)}
    claimed = await claim_all(store, owner="w1", tasks=["t"])
    assert [j.id for j in claimed] == ["high-early", "high-late", "low"]
    for job in claimed:
        assert job == models.claim(stored[job.id], owner="w1", now=NOW, lease=LEASE)
        assert await store.get(job.id) == job
    assert await claim_all(store, owner="w1", tasks=[]) == []
    rest = await claim_all(store, owner="w2")
    assert [j.id for j in rest] == ["other-task"]
    assert await store.next_run_at() == NOW + 60


async def test_claims_walk_the_due_index_without_sorting(store: PostgresStore, pg_url: str) -> None:
    """With 20,000 jobs waiting (due and not yet due, two priorities), each level's claim
    statement finds its jobs by an index scan of jobs_due in claim order (no sort of the
    backlog), whatever the planner's statistics say; the counts trigger it fires plans
    with the default settings (it sets them itself)."""
    sql(
        pg_url,
        "INSERT INTO jobs (id, task, state, payload, priority, max_attempts, run_at, created_at, updated_at) "
        "SELECT 'bulk' || i, 't', 'pending', 'null', i %% 2, 5, %s + (i %% 3) * 100, %s, %s FROM generate_series(1, 20000) i",
        (NOW - 50, NOW, NOW),
    )
    sql(pg_url, "ANALYZE jobs")
    from jobsvc.store import postgres

    with psycopg.connect(pg_url) as conn:
        conn.execute(postgres._SQL_CLAIM_PLAN)
        plan = "\n".join(
            row[0]
            for row in conn.execute(
                "EXPLAIN " + postgres._SQL_CLAIM_TASKS,
                {"level": 1, "now": NOW, "limit": 8, "tasks": ["t"], "owner": "w", "expires": NOW + 30},
            )
        )
        [(config,)] = conn.execute("SELECT proconfig FROM pg_proc WHERE proname = 'jobsvc_count_jobs'").fetchall()
    assert "Index Scan using jobs_due" in plan and "Sort" not in plan, plan
    assert config == ["enable_sort=on", "enable_bitmapscan=on"]
    with trio.fail_after(5):
        got = await claim_all(store, owner="w", limit=8, tasks=["t"])
    assert [j.priority for j in got] == [1] * 8 and all(j.run_at <= NOW for j in got)


async def test_finding_jobs_by_id_or_idempotency_key_uses_their_indexes(store: PostgresStore, pg_url: str) -> None:
    """The lookup behind a replay (and behind every refusal above --max-pending) reads the
    primary key and the idempotency index, never the whole table: with 20,000 jobs it has
    no sequential scan even when the planner would rather do one, and it finds both kinds."""
    sql(
        pg_url,
        "INSERT INTO jobs (id, task, state, payload, priority, max_attempts, run_at, created_at, updated_at, idempotency_key) "
        "SELECT 'bulk' || i, 't', 'pending', 'null', 0, 5, %s, %s, %s, CASE WHEN i %% 2 = 0 THEN 'key' || i END "
        "FROM generate_series(1, 20000) i",
        (NOW, NOW, NOW),
    )
    sql(pg_url, "ANALYZE jobs")
    from jobsvc.store import postgres

    params = {"ids": ["bulk7", "nope"], "tenants": ["", ""], "keys": ["key10", "nokey"]}
    with psycopg.connect(pg_url) as conn:
        conn.execute("SET enable_seqscan = off")
        plan = "\n".join(row[0] for row in conn.execute("EXPLAIN " + postgres._SQL_EXISTING, params))
    assert "Seq Scan on jobs" not in plan, plan
    wanted = [make_job("bulk7"), make_job("other", key="key10"), make_job("none", key="nokey")]
    found = await store.find(wanted)
    assert [None if j is None else j.id for j in found] == ["bulk7", "bulk10", None]


async def test_fenced_writes_find_their_rows_by_the_primary_key(store: PostgresStore, pg_url: str) -> None:
    """A batch of fenced writes (its rows one JSON parameter, which the planner guesses at
    100 rows) locks and updates its rows through the primary key: with 20,000 jobs and
    statistics taken when the table was small, no sequential scan (joining on the JSON
    rows scanned the whole table: 23 ms instead of about 2)."""
    sql(pg_url, "ANALYZE jobs")  # statistics of an empty table, as a new queue has
    sql(
        pg_url,
        "INSERT INTO jobs (id, task, state, payload, priority, max_attempts, run_at, created_at, updated_at) "
        "SELECT 'bulk' || i, 't', 'pending', 'null', 0, 5, %s, %s, %s FROM generate_series(1, 20000) i",
        (NOW, NOW, NOW),
    )
    from jobsvc.models import claim, succeed
    from jobsvc.store import postgres

    due = [await store.get(f"bulk{i}") for i in range(1, 33)]
    claimed = [claim(job, owner="w", now=NOW, lease=30) for job in due if job is not None]
    pairs = [(succeed(job, result=None, now=NOW + 1), job) for job in claimed]
    query, params = postgres._fenced_update(pairs)  # what _PgTx.update sends
    with psycopg.connect(pg_url) as conn:
        plan = "\n".join(row[0] for row in conn.execute("EXPLAIN " + query, params))
    assert "Seq Scan on jobs" not in plan and "jobs_pkey" in plan, plan
    written = await store.record([Finished(job, Succeeded(None), NOW + 1) for job in claimed])
    assert written == [None] * 32  # never claimed in the store: each fenced out, none written
    assert (await store.counts()).by_state()[JobState.PENDING] == 20000


async def test_statistics_count_write_transactions_and_the_synced_ones(store: PostgresStore) -> None:
    """/stats' store_stats on PostgreSQL: every write transaction (= one commit), and which
    were synced (a client's write) rather than committed with synchronous_commit off."""
    before = store.statistics()
    await store.insert([make_job("s1"), make_job("s2")])  # a submission: synced
    claimed = await claim_all(store, owner="w", limit=2)  # a claim: synced on a shared store
    middle = store.statistics()
    await store.record([Finished(job, Succeeded("ok"), NOW + 1) for job in claimed])  # outcomes: not synced
    after = store.statistics()
    assert middle["synced_commits"] - before["synced_commits"] == middle["commits"] - before["commits"] >= 2
    assert (after["commits"] - middle["commits"], after["synced_commits"] - middle["synced_commits"]) == (1, 0)
    assert after["operations"] == after["commits"]


async def test_two_instances_claiming_concurrently_never_share_a_job(pg_url: str) -> None:
    async with open_postgres_store(pg_url, pool_size=4) as a, open_postgres_store(pg_url, pool_size=4) as b:
        await a.insert([make_job(f"j{i:03}", priority=i % 3) for i in range(200)])
        got: dict[str, list[str]] = {"a": [], "b": []}

        async def claimer(store: PostgresStore, name: str) -> None:
            for _ in range(200):  # bounded
                batch = await claim_all(store, owner=name, limit=7)
                if not batch:
                    return
                got[name].extend(j.id for j in batch)
                await trio.lowlevel.checkpoint()

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                for _ in range(4):
                    nursery.start_soon(claimer, a, "a")
                    nursery.start_soon(claimer, b, "b")
    all_claims = got["a"] + got["b"]
    assert len(all_claims) == len(set(all_claims)) == 200
    assert got["a"] and got["b"], "both instances should have claimed some jobs"
    rows = sql(pg_url, "SELECT lease_owner, count(*), max(lease_token), max(attempts) FROM jobs GROUP BY lease_owner ORDER BY 1")
    assert rows == [("a", len(got["a"]), 1, 1), ("b", len(got["b"]), 1, 1)]


# ----------------------------------------------------------------------------- rescue and fencing


async def test_rescue_takes_back_only_expired_leases(store: PostgresStore, pg_url: str) -> None:
    await store.insert([make_job("expired"), make_job("alive"), make_job("waiting")])
    inject_running(pg_url, "expired", owner="dead-worker", token=3, expires_at=NOW - 1, attempts=2)
    inject_running(pg_url, "alive", owner="live-worker", token=1, expires_at=NOW + 1, attempts=1)
    before_alive = await store.get("alive")

    rescued = await store.rescue(now=NOW, max_rescues=3)

    assert [j.id for j in rescued] == ["expired"]
    job = await store.get("expired")
    assert job == rescued[0]
    assert job is not None
    assert (job.state, job.rescues, job.attempts, job.lease_token) == (JobState.PENDING, 1, 1, 3)
    assert (job.lease_owner, job.lease_expires_at, job.run_at, job.updated_at) == (None, None, NOW, NOW)
    assert await store.get("alive") == before_alive
    assert (await store.get("waiting")).state is JobState.PENDING  # type: ignore[union-attr]
    # a second sweep finds nothing; the rescued job can be claimed again with a new token
    assert await store.rescue(now=NOW, max_rescues=3) == []
    again = {j.id: j for j in await claim_all(store, owner="w2")}["expired"]
    assert (again.lease_token, again.attempts) == (4, 2)


async def test_rescued_too_often_goes_dead_with_worker_lost(store: PostgresStore, pg_url: str) -> None:
    await store.insert([make_job("poison")])
    inject_running(pg_url, "poison", owner="w", token=3, expires_at=NOW - 1, attempts=3, rescues=2)
    (job,) = await store.rescue(now=NOW, max_rescues=3)
    assert job.state is JobState.DEAD
    assert job.rescues == 3 and job.finished_at == NOW and job.lease_owner is None
    assert [(e.type, e.attempt) for e in job.errors] == [("WorkerLost", 3)]
    assert await store.get("poison") == job
    assert await claim_all(store, owner="x", now=NOW + 1000) == []


async def test_stale_worker_cannot_overwrite_after_rescue_and_reclaim(store: PostgresStore) -> None:
    """River#1302: a worker whose lease was rescued and re-claimed must not write."""
    await store.insert([make_job("j")])
    (mine,) = await claim_all(store, owner="slow", lease=1.0, limit=1)
    (rescued,) = await store.rescue(now=NOW + 2, max_rescues=3)
    assert rescued.state is JobState.PENDING
    (theirs,) = await claim_all(store, owner="fast", now=NOW + 3, limit=1)
    assert theirs.lease_token == mine.lease_token + 1
    late = [Finished(mine, Succeeded("stale"), NOW + 4), Finished(mine, Failed("E", "m"), NOW + 4, delay=1.0)]
    assert await store.record(late) == [None, None]
    assert await store.get("j") == theirs  # nothing changed
    [done] = await store.record([Finished(theirs, Succeeded("ok"), NOW + 5)])
    assert done == models.succeed(theirs, result="ok", now=NOW + 5)
    assert await store.get("j") == done


async def test_rescue_skips_a_row_that_a_worker_is_writing(store: PostgresStore, pg_url: str) -> None:
    """The rescuer never blocks on, nor overwrites, a job whose owner is completing it now."""
    await store.insert([make_job("busy")])
    (job,) = await claim_all(store, owner="w", lease=1.0, limit=1)
    with psycopg.connect(pg_url) as worker:  # a worker mid-transaction, holding the row lock
        worker.execute("SELECT 1 FROM jobs WHERE id = 'busy' FOR UPDATE")
        with trio.fail_after(5):
            assert await store.rescue(now=NOW + 5, max_rescues=3) == []
        done = models.succeed(job, result=1, now=NOW + 5)
        worker.execute(
            "UPDATE jobs SET state = 'succeeded', lease_owner = NULL, lease_expires_at = NULL, "
            "finished_at = %s, updated_at = %s, result = '1' WHERE id = 'busy' AND lease_token = %s",
            (NOW + 5, NOW + 5, job.lease_token),
        )
        worker.commit()
    assert await store.rescue(now=NOW + 6, max_rescues=3) == []
    assert await store.get("busy") == done


async def test_heartbeat_extends_own_leases_and_reports_cancel_requests(store: PostgresStore) -> None:
    await store.insert([make_job("a"), make_job("b"), make_job("c")])
    a, b = await claim_all(store, owner="w1", limit=2)
    (c,) = await claim_all(store, owner="w2", limit=1)
    await store.modify(b.id, lambda j: models.request_cancel(j, now=NOW + 1))
    held = [(a.id, 1), (b.id, 1), (c.id, 1), (a.id, 2)]
    assert await store.heartbeat(owner="w1", now=NOW + 10, lease=LEASE, held=held) == {(a.id, 1): False, (b.id, 1): True}
    assert (await store.get(a.id)).lease_expires_at == NOW + 10 + LEASE  # type: ignore[union-attr]
    assert (await store.get(c.id)).lease_expires_at == NOW + LEASE  # type: ignore[union-attr]
    assert await store.rescue(now=NOW + LEASE + 1, max_rescues=3) == [
        models.rescue(c, now=NOW + LEASE + 1, max_rescues=3)
    ]


async def test_modify_rolls_back_when_the_change_raises(store: PostgresStore) -> None:
    (created,) = await store.insert([make_job("j")])
    done = models.cancel(created.job, now=NOW)
    assert await store.modify("j", lambda j: models.cancel(j, now=NOW)) == done

    def half_then_raise(job: Job) -> Job:
        models.redrive(job, now=NOW + 1)
        raise IllegalTransition("no")

    with pytest.raises(IllegalTransition):
        await store.modify("j", half_then_raise)
    assert await store.get("j") == done
    with pytest.raises(JobNotFound):
        await store.modify("missing", lambda j: j)


# ----------------------------------------------------------------------------- LISTEN / NOTIFY


async def wait_until(predicate: Any, *, timeout: float = 5.0, what: str = "condition") -> None:
    """Poll ``predicate`` until true, failing after ``timeout`` seconds."""
    with trio.move_on_after(timeout):
        while not predicate():  # noqa: ASYNC110 - polling, bounded
            await trio.sleep(0.01)
        return
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


async def test_insert_in_one_instance_wakes_another_promptly(pg_url: str) -> None:
    async with open_postgres_store(pg_url) as a, open_postgres_store(pg_url) as b:
        woke_after: list[float] = []

        async def waiter() -> None:
            await b.wait_for_work()
            woke_after.append(trio.current_time() - t0)

        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                t0 = trio.current_time()
                nursery.start_soon(waiter)
                await trio.testing.wait_all_tasks_blocked(0.01)
                assert not woke_after, "woke up before anything happened"
                t0 = trio.current_time()
                await a.insert([make_job("x")])
        assert len(woke_after) == 1
        assert woke_after[0] < 1.0, f"NOTIFY pickup took {woke_after[0]:.3f}s"


async def test_a_burst_of_notifications_is_one_wake_up(pg_url: str) -> None:
    async with open_postgres_store(pg_url) as a, open_postgres_store(pg_url) as b:
        for i in range(5):
            await a.insert([make_job(f"burst{i}")])
        await wait_until(lambda: b.notifications_received == 5, what="5 notifications")
        with trio.fail_after(1):
            await b.wait_for_work()  # returns at once: work arrived while nobody waited
        second_returned = False

        async def second() -> None:
            nonlocal second_returned
            await b.wait_for_work()
            second_returned = True

        async with trio.open_nursery() as nursery:
            nursery.start_soon(second)
            await trio.testing.wait_all_tasks_blocked(0.05)
            assert not second_returned, "the burst was not coalesced"
            nursery.cancel_scope.cancel()


async def test_a_store_is_not_woken_by_its_own_notifications(pg_url: str) -> None:
    """Each NOTIFY names the store that sent it. A store's own come back to its listener
    and are only counted: the service wakes its claim loop itself for the jobs it makes
    claimable, and a wake-up per own commit started claims that found nothing. Another
    store's still wake it."""
    async with open_postgres_store(pg_url) as a, open_postgres_store(pg_url) as b:
        assert a.instance != b.instance
        woke = False

        async def waiter() -> None:
            nonlocal woke
            await a.wait_for_work()
            woke = True

        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(waiter)
                await a.insert([make_job("own1")])
                await a.insert([make_job("own2")])
                await wait_until(lambda: a.own_notifications == 2, what="a's own notifications")
                await trio.testing.wait_all_tasks_blocked(0.05)
                assert not woke and a.notifications_received == 0, "woken by its own notification"
                await b.insert([make_job("other")])
                await wait_until(lambda: woke, what="the other store's notification")
                # b's own copy reaches b's listener on its own schedule, not before a's.
                await wait_until(lambda: b.own_notifications == 1, what="b's own notification")
        assert (a.notifications_received, a.last_notification_payload) == (1, b.instance)
        assert b.own_notifications == 1


async def test_rescue_and_release_notify_but_a_later_retry_and_a_completion_do_not(pg_url: str) -> None:
    """NOTIFY says "a job is claimable now": an insert, a rescue and a release do; a retry
    scheduled for later and a completion do not (the instance that recorded the retry wakes
    itself when it is due; the others find it by their poll)."""
    async with open_postgres_store(pg_url) as a, open_postgres_store(pg_url) as b:
        await a.insert([make_job("j"), make_job("k"), make_job("m")])
        (j, k, m) = await claim_all(a, owner="w", lease=1.0, limit=3)
        await wait_until(lambda: b.notifications_received == 1, what="the insert's notification")

        await a.record([Finished(j, Failed("E", "m"), NOW, delay=5)])
        await a.record([Finished(m, Released(), NOW)])
        await wait_until(lambda: b.notifications_received == 2, what="the release's notification")

        [rescued] = await a.rescue(now=NOW + 2, max_rescues=3)
        assert rescued.id == k.id
        await wait_until(lambda: b.notifications_received == 3, what="the rescue's notification")

        (k2, m2) = await claim_all(a, owner="w", now=NOW + 3, limit=2)
        await a.record([Finished(k2, Succeeded(1), NOW + 4), Finished(m2, Succeeded(1), NOW + 4)])
        # notifications arrive in commit order: once the marker is in, a completion's would be too
        sql(pg_url, "SELECT pg_notify('jobsvc_jobs', 'marker')")
        await wait_until(lambda: b.last_notification_payload == "marker", what="the marker")
        assert b.notifications_received == 4


async def test_listener_survives_its_connection_being_terminated(pg_url: str) -> None:
    async with open_postgres_store(pg_url) as a, open_postgres_store(pg_url) as b:
        old_pid = b.listener_pid
        assert old_pid is not None
        assert sql(pg_url, "SELECT pg_terminate_backend(%s)", (old_pid,)) == [(True,)]
        with trio.fail_after(5):
            await b.wait_for_work()  # woken by the reconnect: notifications may have been missed
        await wait_until(lambda: b.listener_pid not in (None, old_pid), what="a new LISTEN connection")
        assert b.listener_reconnects == 1
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(b.wait_for_work)
                await trio.testing.wait_all_tasks_blocked(0.01)
                await a.insert([make_job("after-reconnect")])
        assert b.listener_reconnects == 1  # it was the NOTIFY that woke us, not another reconnect


# ----------------------------------------------------------------------------- losing the server


async def test_unreachable_server_fails_fast_with_store_unavailable() -> None:
    t0 = time.monotonic()
    with trio.fail_after(15):
        with pytest.raises(StoreUnavailable, match=r"PostgreSQL at postgresql://root@127.0.0.1:1/nowhere is unavailable"):
            async with open_postgres_store("postgresql://root:secret@127.0.0.1:1/nowhere"):
                pass
    assert time.monotonic() - t0 < 5
    for url in ("postgresql://root:secret@127.0.0.1:1/nowhere", "postgresql://root@127.0.0.1:1/nowhere?password=secret"):
        with pytest.raises(StoreUnavailable) as info:
            await migrate(url)
        assert "secret" not in str(info.value) and "127.0.0.1:1/nowhere" in str(info.value)
    with pytest.raises(ConfigError, match="invalid PostgreSQL URL") as bad:
        async with open_postgres_store("postgresql://root:secret@127.0.0.1:1/x?sslmode=bogus&nope=1"):
            pass
    assert "secret" not in str(bad.value)


async def test_pool_recovers_after_its_connections_are_killed(store: PostgresStore, pg_url: str) -> None:
    await store.insert([make_job("a")])
    dbname = pg_url.rsplit("/", 1)[1]
    with admin_connect() as admin:
        killed = admin.execute(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()) t",
            (dbname,),
        ).fetchone()
    assert killed is not None and killed[0] >= 2  # pool connections + the listener
    with trio.fail_after(10):
        await store.ping()
        assert (await store.get("a")) is not None
        for _ in range(10):  # every pooled connection, not just the first
            await store.counts()


async def test_statement_timeout_gives_store_unavailable_not_a_hang(pg_url: str) -> None:
    async with open_postgres_store(pg_url, statement_timeout=0.2) as store:
        await store.insert([make_job("locked")])
        with psycopg.connect(pg_url) as other:
            other.execute("SELECT 1 FROM jobs WHERE id = 'locked' FOR UPDATE")
            with trio.fail_after(5):
                with pytest.raises(StoreUnavailable, match="statement timeout"):
                    await store.modify("locked", lambda j: models.cancel(j, now=NOW))
        assert (await store.get("locked")).state is JobState.PENDING  # type: ignore[union-attr]


async def test_missing_table_is_store_unavailable(store: PostgresStore, pg_url: str) -> None:
    """The Oban resiliency trick: the table disappears while the service runs."""
    sql(pg_url, "ALTER TABLE jobs RENAME TO jobs_missing")
    with pytest.raises(StoreUnavailable, match="jobsvc migrate"):
        await store.get("x")
    sql(pg_url, "ALTER TABLE jobs_missing RENAME TO jobs")
    assert await store.get("x") is None


async def test_insert_batch_is_one_transaction_with_replays(store: PostgresStore) -> None:
    first = await store.insert([make_job("a", key="k1"), make_job("b")])
    assert [r.created for r in first] == [True, True]
    again = await store.insert([make_job("c", key="k1"), make_job("b"), make_job("d", key="k2"), make_job("e", key="k2")])
    assert [(r.created, r.job.id) for r in again] == [(False, "a"), (False, "b"), (True, "d"), (False, "d")]
    assert again[0].job == first[0].job
    seqs = [r.job.seq for r in first] + [again[2].job.seq]
    assert seqs == sorted(seqs)
    counts = await store.counts()
    assert counts.by_state()[JobState.PENDING] == 3

    # a failing job in a batch leaves nothing of the batch behind
    bad = attrs.evolve(make_job("f"), task="x\x00y")  # PostgreSQL text cannot hold NUL
    with pytest.raises(psycopg.DataError):
        await store.insert([make_job("g"), bad])
    assert await store.get("g") is None


# ----------------------------------------------------------------------------- counts and durability


async def test_counts_are_sharded_by_writer_and_sum_to_the_rows(pg_url: str) -> None:
    """Two instances write concurrently: each backend updates its own counter rows (no
    single hot row), and the sums always equal a count of the jobs."""
    async with open_postgres_store(pg_url, pool_size=2) as a, open_postgres_store(pg_url, pool_size=2) as b:

        async def writer(store: PostgresStore, prefix: str) -> None:
            for i in range(20):
                await store.insert([make_job(f"{prefix}{i}-{n}", task=prefix) for n in range(5)])
                await claim_all(store, owner=prefix, limit=3, tasks=[prefix])

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(writer, a, "a")
                nursery.start_soon(writer, b, "b")
        counts = await a.counts()
    truth = sql(pg_url, "SELECT task, state, count(*) FROM jobs GROUP BY task, state ORDER BY 1, 2")
    assert sorted((t, s.value, n) for t, states in counts.by_task.items() for s, n in states.items() if n) == truth
    shards = sql(pg_url, "SELECT count(DISTINCT shard) FROM jobsvc_counts")
    assert shards[0][0] >= 2


async def test_migration_2_counts_the_jobs_already_there(pg_empty_url: str) -> None:
    """A database at schema version 1 with jobs in it: migration 2 fills the counts."""
    from jobsvc.store import postgres

    with psycopg.connect(pg_empty_url) as conn:
        conn.execute(postgres._CREATE_SCHEMA_TABLE)
        for statement in postgres._V1:
            conn.execute(statement)
        conn.execute("INSERT INTO jobsvc_schema (version, name) VALUES (1, 'v1')")
        conn.execute(
            "INSERT INTO jobs (id, task, state, payload, max_attempts, run_at, created_at, updated_at) "
            "SELECT 'old' || i, 't', CASE WHEN i % 2 = 0 THEN 'pending' ELSE 'dead' END, 'null', 5, 0, 0, 0 "
            "FROM generate_series(1, 7) i"
        )
    assert (await migrate(pg_empty_url))[0] == "counts by task and state, kept by triggers"
    async with open_postgres_store(pg_empty_url) as store:
        counts = (await store.counts()).by_state()
        assert (counts[JobState.PENDING], counts[JobState.DEAD]) == (3, 4)
        await store.insert([make_job("new")])
        assert (await store.counts()).by_state()[JobState.PENDING] == 4


async def test_worker_side_writes_do_not_wait_for_the_wal_flush(pg_url: str) -> None:
    """Durable writes (what a client is answered about) commit with synchronous_commit on;
    worker-side writes with it off, unless fsync_interval is 0."""

    def setting(tx: Any) -> str:
        return str(tx._conn.execute("SHOW synchronous_commit").fetchone()[0])

    async with open_postgres_store(pg_url) as store:
        assert await store._write(setting, durable=True) == "on"
        assert await store._write(setting) == "off"
    async with open_postgres_store(pg_url, fsync_interval=0) as store:
        assert await store._write(setting) == "on"


async def test_a_batch_write_locks_rows_in_id_order_so_it_cannot_deadlock(store: PostgresStore, pg_url: str) -> None:
    """Outcome batches and heartbeats write many rows in one statement; both lock them in id
    order. Here another transaction holds row "a" and a batch writes ["b", "a"]: the batch
    waits for "a" holding nothing, so the other transaction can still take "b" (with the
    array's order it would hold "b" and the two would deadlock)."""
    await store.insert([make_job("a"), make_job("b")])
    a, b = await claim_all(store, owner="w", limit=2)
    done: list[Job | None] = []
    with psycopg.connect(pg_url) as holder:
        holder.execute("SELECT 1 FROM jobs WHERE id = 'a' FOR UPDATE")

        async def write() -> None:
            by_id = {j.id: j for j in (a, b)}
            done.extend(await store.record([Finished(by_id["b"], Succeeded(2), NOW), Finished(by_id["a"], Succeeded(1), NOW)]))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(write)
            await wait_until(
                lambda: sql(pg_url, "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()")[0][0] == 1,
                what="the batch waiting for row a",
            )
            holder.execute("SET lock_timeout = '3s'")
            holder.execute("SELECT 1 FROM jobs WHERE id = 'b' FOR UPDATE")  # would deadlock if the batch held b
            holder.commit()
    assert [j.state if j else None for j in done] == [JobState.SUCCEEDED, JobState.SUCCEEDED]


async def test_ping_keeps_its_callers_deadline_while_the_server_does_not_answer(
    store: PostgresStore, monkeypatch: pytest.MonkeyPatch, autojump_clock: Any
) -> None:
    """/ready gives ping 2 s; a server that takes the connection and never answers must not
    hold the probe (a blocking thread call would ignore the deadline until the server gave up)."""
    from contextlib import contextmanager

    hang = threading.Event()
    entered = threading.Event()

    @contextmanager
    def stuck_connection(*args: Any, **kwargs: Any) -> Any:
        entered.set()
        hang.wait(30)  # released below; the bound only stops a broken test from hanging forever
        raise psycopg.OperationalError("server did not answer")
        yield  # pragma: no cover

    monkeypatch.setattr(store._pool, "connection", stuck_connection)
    try:
        start = trio.current_time()
        with pytest.raises(trio.TooSlowError):
            with trio.fail_after(2):
                await store.ping()
        assert entered.wait(5)  # the probe did reach the server (the thread may start after the jump)
        assert trio.current_time() - start == 2
    finally:
        hang.set()


# ----------------------------------------------------------------------------- group commit


class HeldBatch:
    """A group-committed write that blocks in its thread until released, holding the store's
    only group slot: the durable writes made meanwhile queue up and form the next batch."""

    def __init__(self, store: PostgresStore) -> None:
        self.store = store
        self.entered = threading.Event()
        self.release = threading.Event()

    def _fn(self, tx: Any) -> str:
        self.entered.set()
        self.release.wait(10)  # released by the test; the bound stops a broken test hanging
        return "held"

    async def start(self, nursery: trio.Nursery) -> None:
        self.store.group_slots = 1
        nursery.start_soon(lambda: self.store._write(self._fn, durable=True))
        assert await trio.to_thread.run_sync(self.entered.wait, 5)


async def test_concurrent_durable_writes_share_one_transaction(store: PostgresStore) -> None:
    held = HeldBatch(store)
    results: dict[str, bool] = {}

    async def submit(job_id: str) -> None:
        (result,) = await store.insert([make_job(job_id)])
        results[job_id] = result.created

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await held.start(nursery)
            before = store.statistics()
            for i in range(5):
                nursery.start_soon(submit, f"g{i}")
            await trio.testing.wait_all_tasks_blocked()
            held.release.set()
    after = store.statistics()
    assert results == {f"g{i}": True for i in range(5)}
    assert (after["commits"] - before["commits"], after["operations"] - before["operations"]) == (1, 5)
    assert sorted(j.id for j in await store.list_jobs(limit=10)) == [f"g{i}" for i in range(5)]


async def test_a_conflict_in_a_batch_fails_only_its_own_caller(store: PostgresStore) -> None:
    """The batch's merged insert fails on the conflict; it is rolled back and run again with a
    savepoint per operation: the other callers' jobs are committed."""
    await store.insert([make_job("x")])
    held = HeldBatch(store)
    outcome: dict[str, Any] = {}

    async def submit(job: Job) -> None:
        try:
            outcome[job.id] = (await store.insert([job]))[0].created
        except Exception as exc:  # noqa: BLE001 - recorded for the assertion
            outcome[job.id] = type(exc).__name__

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await held.start(nursery)
            for job in (make_job("y"), attrs.evolve(make_job("x"), fingerprint="another body"), make_job("z")):
                nursery.start_soon(submit, job)
            await trio.testing.wait_all_tasks_blocked()
            held.release.set()
    assert outcome == {"y": True, "x": "Conflict", "z": True}
    assert sorted(j.id for j in await store.list_jobs(limit=10)) == ["x", "y", "z"]
    assert (await store.counts()).by_state()[JobState.PENDING] == 3


async def test_a_rolled_back_operation_does_not_swallow_the_batchs_notify(pg_url: str) -> None:
    """An operation that sent NOTIFY and then failed is rolled back to its savepoint, and its
    NOTIFY with it: a later operation of the batch that makes a job claimable notifies again."""
    async with open_postgres_store(pg_url) as a, open_postgres_store(pg_url) as b:
        held = HeldBatch(a)
        woke = trio.Event()

        def notify_then_fail(tx: Any) -> None:
            tx.notify()
            raise ValueError("boom")

        async def failing() -> None:
            with pytest.raises(ValueError, match="boom"):
                await a._write(notify_then_fail, durable=True)

        async def waiter() -> None:
            await b.wait_for_work()
            woke.set()

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                await held.start(nursery)
                nursery.start_soon(failing)
                await trio.testing.wait_all_tasks_blocked()
                nursery.start_soon(a.insert, [make_job("n")])  # queued after the failing one
                await trio.testing.wait_all_tasks_blocked()
                nursery.start_soon(waiter)
                await trio.testing.wait_all_tasks_blocked(0.05)
                assert not woke.is_set(), "woke up before anything was committed"
                held.release.set()
                with trio.move_on_after(2):
                    await woke.wait()
                assert woke.is_set(), "the insert's NOTIFY was lost with the failed operation's"
        assert (await a.get("n")) is not None


async def test_a_write_cancelled_while_queued_is_not_written(store: PostgresStore) -> None:
    held = HeldBatch(store)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await held.start(nursery)
            scope = trio.CancelScope()

            async def cancelled() -> None:
                with scope:
                    await store.insert([make_job("dropped")])

            nursery.start_soon(store.insert, [make_job("kept")])
            nursery.start_soon(cancelled)
            await trio.testing.wait_all_tasks_blocked()
            assert len(store._group) == 2
            scope.cancel()
            await trio.testing.wait_all_tasks_blocked()
            assert len(store._group) == 1
            held.release.set()
    assert await store.get("dropped") is None
    assert await store.get("kept") is not None
    assert store._group == []


@pytest.mark.parametrize("durable", [False, True], ids=["worker write", "group-committed"])
async def test_a_transaction_aborted_for_a_deadlock_runs_again(store: PostgresStore, durable: bool) -> None:
    """PostgreSQL aborts one of two deadlocked transactions (or one that fails to serialize):
    nothing of it was committed, so the store runs it again, up to TX_RETRIES times in all."""
    calls = 0

    def deadlocked(times: int) -> Any:
        def fn(tx: Any) -> Job | None:
            nonlocal calls
            calls += 1
            if calls <= times:
                raise psycopg.errors.DeadlockDetected("deadlock detected")
            return tx.get("nope")

        return fn

    assert await store._write(deadlocked(postgres.TX_RETRIES - 1), durable=durable) is None
    assert calls == postgres.TX_RETRIES
    calls = 0
    with pytest.raises(StoreUnavailable, match="deadlock detected"):
        await store._write(deadlocked(postgres.TX_RETRIES), durable=durable)
    assert calls == postgres.TX_RETRIES


async def test_one_key_submitted_twice_in_one_batch_is_created_once_and_replayed(store: PostgresStore) -> None:
    """The batch's inserts are one statement; a job whose key another job of the same
    statement took finds that job, as if the two submissions had come one after another."""
    held = HeldBatch(store)
    results: list[tuple[str, bool]] = []

    async def submit(job_id: str) -> None:
        (result,) = await store.insert([make_job(job_id, key="same")])
        results.append((result.job.id, result.created))

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await held.start(nursery)
            nursery.start_soon(submit, "first")
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(submit, "second")
            await trio.testing.wait_all_tasks_blocked()
            before = store.statistics()
            held.release.set()
    assert sorted(results) == [("first", False), ("first", True)]
    assert store.statistics()["commits"] - before["commits"] == 1
