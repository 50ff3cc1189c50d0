"""The dashboard in a real browser: Debian's Chromium, headless, driven by Playwright's Python
package (``executable_path``: Playwright's own browser download is never used), against a
real ``jobsvc serve`` on 127.0.0.1 port 0 with a SQLite store.

Chromium comes from Debian (``make tools`` installs it when missing); without it these
tests FAIL, naming that target: they never skip. Screenshots of the main pages are written
to ``tests/artifacts/ui/``, and also to ``$UI_SCREENSHOTS_DIR`` when set (``make
screenshots`` sets it to ``docs/img``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from jobsvc_processes import Server, clean_env, serve_argv, wait_until

from jobsvc.auth import SCOPES, new_key, save_keys

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]  # fmt: skip
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "ui"
TIMEOUT_MS = 15_000
SCRIPT_PAYLOAD = {"note": "<script>window.__pwned='payload';console.log('pwned')</script><img src=x onerror=\"window.__pwned='img'\">"}


# -- fixtures ------------------------------------------------------------------------------


#: The API key the keyed server accepts (its keys file is written by the fixture).
ADMIN_TOKEN, ADMIN_KEY = new_key(scopes=SCOPES, created="2026-11-30T00:00:00Z", name="browser admin")


def _start(tmp: Path, name: str, tasks: tuple[str, ...], *extra: str) -> Server:
    import subprocess

    argv = serve_argv(tmp / f"{name}.db", "--log-level", "warning", "--backoff-base", "0.2", *extra, tasks=tasks)
    stderr_path = tmp / f"{name}.stderr"
    with open(stderr_path, "wb") as stderr:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr, env=clean_env(), cwd=tmp)
    server = Server(proc, stderr_path, argv)
    try:
        server.wait_listening()
    except BaseException:
        server.stop()
        raise
    return server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A real ``jobsvc serve`` with no keys configured (the dashboard is open)."""
    srv = _start(tmp_path_factory.mktemp("ui-open"), "open", ("ui_tasks", "testtasks"))
    try:
        yield srv
    finally:
        srv.stop()
        print(srv.log()[-4000:])


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A real ``jobsvc serve`` with one API key configured (``--auth-file``)."""
    tmp = tmp_path_factory.mktemp("ui-keys")
    save_keys(str(tmp / "keys.toml"), [ADMIN_KEY])
    srv = _start(tmp, "keys", ("ui_tasks",), "--auth-file", str(tmp / "keys.toml"))
    try:
        yield srv
    finally:
        srv.stop()
        print(srv.log()[-4000:])


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(
            f"Chromium is not installed at {CHROMIUM}: the dashboard's browser tests need Debian's "
            "chromium package. Run `make tools` (it runs `apt-get install chromium`), or set CHROMIUM_PATH."
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # launch() gives the browser a fresh temporary profile (user-data dir) of its own
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


class Watch:
    """What the page did that it must not: dialogs, console output, CSP violations."""

    def __init__(self, page: Any) -> None:
        self.console: list[str] = []
        self.dialogs: list[str] = []
        page.on("console", lambda message: self.console.append(f"{message.type}: {message.text}"))
        page.on("dialog", lambda dialog: (self.dialogs.append(dialog.message), dialog.dismiss()))
        page.on("pageerror", lambda error: self.console.append(f"pageerror: {error}"))


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.watch = Watch(page)
    try:
        yield page
    finally:
        context.close()
    problems = [line for line in page.watch.console if "Content Security Policy" in line or "pageerror" in line]
    assert not problems, problems  # our own pages never trip the CSP nor throw


def submit(server: Server, body: dict[str, Any]) -> str:
    with server.client() as client:
        r = client.post("/jobs", json=body)
        assert r.status_code == 202, r.text
        return r.json()["id"]  # type: ignore[no-any-return]


def job_state(server: Server, job_id: str) -> dict[str, Any]:
    with server.client() as client:
        return client.get(f"/jobs/{job_id}").json()  # type: ignore[no-any-return]


def settle(server: Server, job_id: str, state: str) -> dict[str, Any]:
    return wait_until(lambda: (job := job_state(server, job_id))["state"] == state and job, timeout=20, what=f"job {job_id} {state}")


def shoot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    target = os.environ.get("UI_SCREENSHOTS_DIR")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(target) / f"dashboard-{name}.png")


def state_badge(page: Any) -> str:
    return str(page.locator('h1 [data-job-field="state"]').inner_text())


# -- the tests -----------------------------------------------------------------------------


def test_a_job_moves_from_pending_to_succeeded_live(server: Server, page: Any) -> None:
    """The job page follows the job over Server-Sent Events: no reload (a marker set in the
    page survives), and every state it went through was shown."""
    job_id = submit(server, {"task": "sleep", "payload": {"seconds": 1.5}, "delay": 2})
    page.goto(f"{server.url}/ui/jobs/{job_id}")
    assert state_badge(page) == "pending"
    page.evaluate(
        """() => {
            window.__marker = 42; window.__states = [];
            const badge = document.querySelector('h1 [data-job-field="state"]');
            new MutationObserver(() => window.__states.push(badge.textContent)).observe(badge, {childList: true, characterData: true, subtree: true});
        }"""
    )
    page.wait_for_function("() => document.querySelector('h1 [data-job-field=\"state\"]').textContent === 'succeeded'")
    assert page.evaluate("window.__marker") == 42  # the same document: nothing reloaded it
    assert "running" in page.evaluate("window.__states")
    assert '"slept": 1.5' in page.locator('[data-job-field="result"]').inner_text()
    assert page.locator("[data-live-status]").inner_text().startswith("live")


def test_retry_a_dead_job_by_clicking(server: Server, page: Any, tmp_path: Path) -> None:
    flag = tmp_path / "flag"
    job_id = submit(server, {"task": "toggle", "payload": {"path": str(flag)}})
    settle(server, job_id, "dead")
    page.goto(f"{server.url}/ui/dead")
    flag.write_text("now it works")
    page.get_by_role("button", name=f"retry {job_id}").click()  # the row's own button
    page.wait_for_url(f"**/ui/jobs/{job_id}")
    page.wait_for_function("() => document.querySelector('h1 [data-job-field=\"state\"]').textContent === 'succeeded'")
    job = job_state(server, job_id)
    assert job["state"] == "succeeded" and len(job["errors"]) == 1


def test_bulk_retry_from_the_dead_letter_queue(server: Server, page: Any, tmp_path: Path) -> None:
    flag = tmp_path / "flag"
    ids = [submit(server, {"task": "toggle", "payload": {"path": str(flag)}}) for _ in range(3)]
    for job_id in ids:
        settle(server, job_id, "dead")
    flag.write_text("ok")
    page.goto(f"{server.url}/ui/dead")
    for job_id in ids:
        page.get_by_label(f"select {job_id}").check()
    assert page.locator("[data-selected-count]").inner_text().startswith("3 selected")
    page.get_by_role("button", name="Retry selected").click()
    assert "Bulk retry: 3 of 3 done" in page.locator("h1").inner_text()
    for job_id in ids:
        settle(server, job_id, "succeeded")


def test_a_form_posted_without_its_csrf_token_is_refused(server: Server, page: Any, tmp_path: Path) -> None:
    job_id = submit(server, {"task": "toggle", "payload": {"path": str(tmp_path / "never")}})
    settle(server, job_id, "dead")
    page.goto(f"{server.url}/ui/dead")
    page.get_by_role("link", name=job_id).click()
    page.wait_for_url(f"**/ui/jobs/{job_id}")
    assert state_badge(page) == "dead"
    page.evaluate("() => document.querySelector('form[action$=\"/retry\"] input[name=csrf]').remove()")
    with page.expect_response(lambda r: r.url.endswith("/retry")) as answer:
        page.get_by_role("button", name="Retry").click()
    assert answer.value.status == 403
    assert "CSRF" in page.locator("main").inner_text()
    assert job_state(server, job_id)["state"] == "dead"


def test_a_payload_holding_script_is_shown_as_text(server: Server, page: Any, tmp_path: Path) -> None:
    """A payload and an error message holding HTML are shown as text, on the first render
    and after the live updates rewrote them: nothing runs."""
    echo = submit(server, {"task": "echo", "payload": SCRIPT_PAYLOAD, "delay": 1})
    dead = submit(server, {"task": "toggle", "payload": {"path": str(tmp_path / "<script>alert(1)</script>")}})
    settle(server, dead, "dead")
    page.goto(f"{server.url}/ui/jobs/{echo}")
    assert "<script>window.__pwned" in page.locator('[data-job-field="payload"]').inner_text()
    page.wait_for_function("() => document.querySelector('h1 [data-job-field=\"state\"]').textContent === 'succeeded'")
    assert "<script>window.__pwned" in page.locator('[data-job-field="result"]').inner_text()  # written by the SSE handler
    page.goto(f"{server.url}/ui/jobs/{dead}")
    assert "<img src=x onerror=" in page.locator("[data-job-errors]").inner_text()
    page.goto(f"{server.url}/ui/dead")
    page.goto(f"{server.url}/ui/jobs")
    assert page.locator("main img, main script").count() == 0
    assert page.evaluate("typeof window.__pwned") == "undefined"
    assert page.watch.dialogs == []
    assert not [line for line in page.watch.console if "pwned" in line]


def test_open_mode_and_the_login_form(server: Server, page: Any) -> None:
    page.goto(f"{server.url}/ui/login")
    assert "No API keys are configured" in page.locator("main").inner_text()
    page.get_by_role("button", name="Continue").click()
    page.wait_for_url(f"{server.url}/ui/")
    assert page.locator("h1").inner_text() == "Overview"


def test_log_in_and_out_with_an_api_key(keyed_server: Server, page: Any) -> None:
    url = keyed_server.url
    page.goto(f"{url}/ui/")
    page.wait_for_url(f"{url}/ui/login")
    shoot(page, "login")
    page.get_by_label("API key").fill("not-a-key")
    page.get_by_role("button", name="Log in").click()
    assert "unknown API key" in page.locator("[role=alert]").inner_text()
    page.get_by_label("API key").fill(ADMIN_TOKEN)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(f"{url}/ui/")
    assert "browser admin" in page.locator("header").inner_text()
    [cookie] = page.context.cookies()
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and ADMIN_TOKEN not in cookie["value"]
    assert page.evaluate("document.cookie") == ""  # HttpOnly: scripts cannot read it
    page.get_by_role("button", name="Log out").click()
    page.wait_for_url(f"{url}/ui/login")
    page.goto(f"{url}/ui/dead")
    page.wait_for_url(f"{url}/ui/login")
    with httpx.Client(base_url=url) as client:  # the API itself is unchanged by the dashboard
        assert client.get("/health").status_code == 200


def test_screenshots_of_the_main_pages(server: Server, page: Any, tmp_path: Path) -> None:
    """Fills the store with a little of everything, then photographs each main page."""
    for i in range(6):
        submit(server, {"task": "echo", "payload": {"order": 1000 + i, "to": f"user{i}@example.com"}})
    for i in range(3):
        submit(server, {"task": "sleep", "payload": {"seconds": 30}, "delay": 600 + i})
    submit(server, {"task": "sleep", "payload": {"seconds": 20}})
    flaky = submit(server, {"task": "flaky", "payload": {"fail_times": 2}})
    for i in range(2):
        submit(server, {"task": "fail", "payload": {"message": f"SMTP server said 550: mailbox {i} unavailable"}, "max_attempts": 2})
    dead = submit(server, {"task": "toggle", "payload": {"path": str(tmp_path / "missing.csv")}})
    settle(server, dead, "dead")
    settle(server, flaky, "succeeded")
    wait_until(lambda: len(_ids(server, "dead")) >= 3, timeout=20, what="the failing jobs to be dead")
    for name, path in [("overview", "/ui/"), ("jobs", "/ui/jobs"), ("dead-letters", "/ui/dead"), ("tasks", "/ui/tasks")]:
        page.goto(f"{server.url}{path}")
        if name == "overview":
            page.wait_for_function("() => document.querySelector('[data-live-status]').textContent.startsWith('live')")
        shoot(page, name)
    page.goto(f"{server.url}/ui/jobs/{flaky}")
    shoot(page, "job")
    page.goto(f"{server.url}/ui/jobs/{dead}")
    shoot(page, "job-dead")
    for name in ["overview", "jobs", "dead-letters", "tasks", "job", "job-dead"]:
        assert (ARTIFACTS / f"{name}.png").stat().st_size > 10_000


def _ids(server: Server, state: str) -> list[str]:
    with server.client() as client:
        return [job["id"] for job in client.get(f"/jobs?state={state}").json()["jobs"]]



def test_streams_end_when_their_clients_leave(server: Server) -> None:
    """Under hypercorn: a client that hangs up frees its stream at once. Open every stream
    the dashboard allows, hang up, and a new one is served (not 503) right away."""
    from jobsvc.dashboard.events import MAX_STREAMS

    with httpx.Client(base_url=server.url, timeout=10) as client:
        opened = []
        for _ in range(MAX_STREAMS):
            stream = client.stream("GET", "/ui/events")
            response = stream.__enter__()
            assert response.status_code == 200
            chunks = response.iter_raw()  # kept: dropping the iterator would close the response
            next(chunks)  # the stream has started
            opened.append((stream, chunks))
        with client.stream("GET", "/ui/events") as full:
            assert full.status_code == 503
        for stream, _ in opened:
            stream.__exit__(None, None, None)  # closes the connection
    with httpx.Client(base_url=server.url, timeout=10) as client:

        def served() -> bool:
            with client.stream("GET", "/ui/events") as response:
                return response.status_code == 200

        wait_until(served, timeout=3, what="a stream slot freed by the clients that left", interval=0.1)
