"""The client commands and the clients against a real ``jobsvc serve`` (SQLite, 127.0.0.1, port
0; one process for the module, see ``live_server``). The commands run in process through
``jobsvc.cli.main``; one test runs the installed program as a child process."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from conftest import JobsvcRunner, Run
from jobsvc_processes import Server, clean_env

from jobsvc.client import AsyncClient, Client, JobSpec, JobState
from jobsvc.clientcli import Exit

pytestmark = pytest.mark.e2e


@pytest.fixture
def cli(jobsvc: JobsvcRunner, live_server: Server) -> JobsvcRunner:
    """``cli("get", ID)``: a client command against the live server."""

    def run(*argv: str) -> Run:
        return jobsvc(*argv, "--url", live_server.url)

    return run


@pytest.fixture
def api(live_server: Server) -> Iterator[httpx.Client]:
    with live_server.client() as c:
        yield c


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_submit_wait_succeeds_with_exit_0(cli: JobsvcRunner, api: httpx.Client) -> None:
    job_id = unique("ok")
    run = cli("submit", "echo", "--payload", '{"to": "ada"}', "--id", job_id, "--wait", "20")
    assert run.code == Exit.OK, run.err
    assert f"id        {job_id}" in run.out and "state     succeeded" in run.out and 'result    {"to":"ada"}' in run.out
    assert api.get(f"/jobs/{job_id}").json()["state"] == "succeeded"


def test_submit_wait_to_dead_exits_3(cli: JobsvcRunner) -> None:
    run = cli("submit", "fail", "--payload", '{"message": "no luck"}', "--max-attempts", "1", "--wait", "20", "--json")
    assert run.code == Exit.DEAD, run.err
    job = run.json()
    assert (job["state"], job["attempts"], [e["message"] for e in job["errors"]]) == ("dead", 1, ["no luck"])


def test_json_is_exactly_the_apis_document(cli: JobsvcRunner, api: httpx.Client) -> None:
    submitted = cli("submit", "echo", "--payload", "[1, 2.5, null]", "--json", "--wait")
    assert submitted.code == Exit.OK
    job_id = submitted.json()["id"]
    assert cli("get", job_id, "--json").json() == api.get(f"/jobs/{job_id}").json()
    assert cli("tasks", "--json").json() == api.get("/tasks").json()
    stats = cli("stats", "--json").json()
    assert set(stats) == {"jobs", "tasks", "oldest_due_age", "instance"} and stats["jobs"]["succeeded"] >= 1


def test_get_of_an_unknown_job_exits_6(cli: JobsvcRunner) -> None:
    run = cli("get", "no-such-job")
    assert (run.code, run.out, run.err) == (Exit.NOT_FOUND, "", "jobsvc: error: no job has the id 'no-such-job' (HTTP 404 job-not-found)\n")


def test_rejected_requests_exit_7(cli: JobsvcRunner) -> None:
    unknown = cli("submit", "no-such-task")
    assert unknown.code == Exit.REJECTED and unknown.err.startswith("jobsvc: error: unknown task 'no-such-task'; known tasks: echo, fail, noop, sleep")
    invalid = cli("submit", "sleep", "--payload", '{"seconds": "x"}')
    assert invalid.code == Exit.REJECTED and "@ $.payload.seconds" in invalid.err and invalid.err.endswith("(HTTP 422 invalid-job)\n")
    bad_state = cli("list", "--state", "done")
    assert bad_state.code == Exit.REJECTED and "unknown state 'done'" in bad_state.err


def test_list_filters_and_follows_pages(cli: JobsvcRunner) -> None:
    task_ids = [unique("l") for _ in range(3)]
    for job_id in task_ids:
        assert cli("submit", "fail", "--payload", "{}", "--id", job_id, "--max-attempts", "1", "--wait", "20").code == Exit.DEAD

    dead = cli("list", "--state", "dead", "--limit", "1000", "--json")
    assert dead.code == Exit.OK and set(task_ids) <= {j["id"] for j in dead.json()["jobs"]}
    assert {j["state"] for j in dead.json()["jobs"]} == {"dead"}

    every = cli("list", "--state", "dead,succeeded", "--task", "fail", "--limit", "1", "--all", "--json")
    assert every.json()["next"] is None and [j["id"] for j in every.json()["jobs"]][-3:] == task_ids

    page = cli("list", "--task", "fail", "--limit", "1")
    assert page.code == Exit.OK and "more jobs follow: --all lists them all" in page.err
    table = cli("list", "--state", "dead", "--all")
    assert all(job_id in table.out for job_id in task_ids) and "TaskFailed: this task always fails" in table.out


def test_retry_and_cancel(cli: JobsvcRunner) -> None:
    job_id = unique("rc")
    assert cli("submit", "fail", "--payload", "{}", "--id", job_id, "--max-attempts", "1", "--wait", "20").code == Exit.DEAD
    retried = cli("retry", job_id, "--json")
    assert (retried.code, retried.json()["state"], retried.json()["attempts"]) == (Exit.OK, "pending", 0)
    assert cli("get", job_id, "--wait", "20").code == Exit.DEAD  # it fails again

    nap = unique("nap")
    assert cli("submit", "sleep", "--payload", '{"seconds": 30}', "--id", nap, "--wait", "0.5").code == Exit.NOT_FINAL
    cancelled = cli("cancel", nap)
    assert cancelled.code == Exit.OK and f"id        {nap}" in cancelled.out
    assert cli("get", nap, "--wait", "20").code == Exit.CANCELLED
    again = cli("cancel", nap)
    assert again.code == Exit.REJECTED and again.err.endswith("(HTTP 409 illegal-transition)\n")
    assert cli("retry", unique("missing")).code == Exit.NOT_FOUND


def test_wait_timeout_prints_the_job_and_exits_5(cli: JobsvcRunner) -> None:
    nap = unique("slow")
    run = cli("submit", "sleep", "--payload", '{"seconds": 30}', "--id", nap, "--wait", "1")
    assert run.code == Exit.NOT_FINAL
    assert f"id        {nap}" in run.out and "state     running" in run.out
    assert run.err == f"jobsvc: error: job {nap} is still running after 1s\n"
    cli("cancel", nap)


def test_tasks_and_stats_tables(cli: JobsvcRunner) -> None:
    tasks = cli("tasks")
    assert tasks.code == Exit.OK
    assert [line.split("│")[0].strip() for line in tasks.out.splitlines()[2:] if line.split("│")[0].strip()] == ["echo", "fail", "noop", "sleep"]
    stats = cli("stats")
    header = stats.out.splitlines()[0].split("┃")
    assert [h.strip() for h in header] == ["jobs", "pending", "running", "retrying", "succeeded", "dead", "cancelled"]
    assert stats.out.splitlines()[2].split("│")[0].strip() == "all"
    from jobsvc.config import Settings

    assert "store sqlite" in stats.out and f"of {Settings().workers} workers busy" in stats.out


def test_the_installed_command_reads_jobsvc_url(live_server: Server) -> None:
    env = clean_env(JOBSVC_URL=live_server.url)
    ok = subprocess.run([sys.executable, "-m", "jobsvc", "submit", "noop", "--wait", "20", "--json"], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert (ok.returncode, ok.stderr) == (0, "") and '"state": "succeeded"' in ok.stdout
    missing = subprocess.run([sys.executable, "-m", "jobsvc", "get", "nope"], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert (missing.returncode, missing.stdout, missing.stderr) == (6, "", "jobsvc: error: no job has the id 'nope' (HTTP 404 job-not-found)\n")


def test_the_sync_client_submits_a_batch_idempotently(live_server: Server) -> None:
    key = unique("batch")
    specs = [JobSpec(task="echo", payload=i) for i in range(3)]
    with Client(live_server.url) as jobs:
        first = jobs.submit_batch(specs, idempotency_key=key)
        replay = jobs.submit_batch(specs, idempotency_key=key)
        done = [jobs.wait(job.id, timeout=20) for job in first]
    assert [j.id for j in replay] == [j.id for j in first]
    assert [j.raw["created"] for j in first] == [True] * 3 and [j.raw["created"] for j in replay] == [False] * 3
    assert [(j.state, j.result) for j in done] == [(JobState.SUCCEEDED, i) for i in range(3)]


def test_the_async_client_under_asyncio_against_the_server(live_server: Server) -> None:
    async def main() -> list[Any]:
        async with AsyncClient(live_server.url) as jobs:
            job = await jobs.submit("echo", {"via": "asyncio"})
            done = await jobs.wait(job.id, timeout=20)
            return [done.state, done.result, (await jobs.health()).status, (await jobs.ready()).ready]

    assert asyncio.run(main()) == [JobState.SUCCEEDED, {"via": "asyncio"}, "ok", True]


async def test_the_async_client_under_trio_against_the_server(live_server: Server) -> None:
    async with AsyncClient(live_server.url) as jobs:
        job = await jobs.submit("sleep", {"seconds": 0.2})
        done = await jobs.wait(job.id, timeout=20)
    assert (done.state, done.result) == (JobState.SUCCEEDED, {"slept": 0.2})
