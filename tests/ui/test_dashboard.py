"""The dashboard (/ui), in process: httpx over ASGITransport on the whole app, against a
running JobService on the memory store. Keys are real API keys (``jobsvc.auth.new_key``)
in a keys file the app's Authenticator reads (revocation: the file rewritten, reloaded)."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import trio

from jobsvc.app import create_app
from jobsvc.auth import SCOPES, Authenticator, new_key, save_keys
from jobsvc.dashboard.guard import CSP
from jobsvc.dashboard.pages import MAX_BULK, PAGE_SIZE
from jobsvc.service import JobService

CREATED = "2026-11-30T00:00:00Z"
ADMIN_TOKEN, ADMIN = new_key(scopes=SCOPES, created=CREATED, name="ops admin")
READER_TOKEN, READER = new_key(scopes={"read"}, created=CREATED, name="read-only viewer")
TENANT_TOKEN, TENANT = new_key(scopes=SCOPES, created=CREATED, name="acme", tenant="acme")
KEYS = [ADMIN, READER, TENANT]


@pytest.fixture
def keys_file(tmp_path: Any) -> str:
    path = str(tmp_path / "keys.toml")
    save_keys(path, KEYS)
    return path


def keyed(path: str) -> Authenticator:
    return Authenticator(KEYS, path=path)
PAGES = ["/ui/", "/ui/jobs", "/ui/jobs?state=dead", "/ui/dead", "/ui/tasks", "/ui/login"]
SCRIPT = "<script>alert('pwned')</script>"
HTML_ERROR = '<img src=x onerror="alert(1)"><b>bold</b>'


@asynccontextmanager
async def ui_client(service: JobService, *, auth: Authenticator | None = None, base_url: str = "http://localhost") -> AsyncIterator[httpx.AsyncClient]:
    """The whole app; with keys, the API calls the tests make carry the admin key (the
    dashboard's pages ignore that header: they go by their own session cookie)."""
    app = create_app(service, auth=auth)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"} if auth is not None else {}
    async with httpx.AsyncClient(transport=transport, base_url=base_url, headers=headers) as client:
        client.app = app  # type: ignore[attr-defined]
        yield client


@pytest.fixture
async def ui(service: JobService) -> AsyncIterator[httpx.AsyncClient]:
    async with ui_client(service) as client:
        yield client


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, "no CSRF field in the page"
    return match.group(1)


async def submit(client: httpx.AsyncClient, body: dict[str, Any]) -> str:
    r = await client.post("/jobs", json=body)
    assert r.status_code == 202, r.text
    return r.json()["id"]  # type: ignore[no-any-return]


async def state_of(client: httpx.AsyncClient, job_id: str) -> str:
    return (await client.get(f"/jobs/{job_id}")).json()["state"]  # type: ignore[no-any-return]


async def settle(client: httpx.AsyncClient, job_id: str, states: set[str]) -> dict[str, Any]:
    """The job once its state is one of ``states`` (polls; time is virtual or short)."""
    with trio.fail_after(30):
        while True:
            job: dict[str, Any] = (await client.get(f"/jobs/{job_id}")).json()
            if job["state"] in states:
                return job
            await trio.sleep(0.05)


async def dead_job(client: httpx.AsyncClient, message: str = "boom") -> str:
    job_id = await submit(client, {"task": "fail", "payload": {"message": message}, "max_attempts": 1})
    await settle(client, job_id, {"dead"})
    return job_id


def assert_guarded(r: httpx.Response) -> None:
    assert r.headers["content-security-policy"] == CSP
    policy = dict(part.strip().split(" ", 1) for part in CSP.split(";"))
    assert policy["default-src"] == "'self'" and policy["frame-ancestors"] == "'none'"
    assert "unsafe-inline" not in CSP and "unsafe-eval" not in CSP
    assert r.headers["x-frame-options"] == "DENY"
    assert r.headers["x-content-type-options"] == "nosniff"


# -- pages -------------------------------------------------------------------------------


async def test_every_page_renders_with_the_security_headers(ui: httpx.AsyncClient, autojump_clock: Any) -> None:
    """Every page answers 200 HTML with the CSP, X-Frame-Options DENY and no-store, and holds
    nothing inline that the CSP would have to allow (no inline script, style or handler)."""
    job_id = await submit(ui, {"task": "echo", "payload": {"n": 1}})
    await dead_job(ui)
    for path in [*PAGES, f"/ui/jobs/{job_id}"]:
        r = await ui.get(path)
        assert r.status_code == 200, (path, r.text)
        assert r.headers["content-type"].startswith("text/html")
        assert_guarded(r)
        assert r.headers["cache-control"] == "no-store"
        assert not re.search(r"<script(?![^>]*\bsrc=)", r.text), path
        assert not re.search(r"<style|\sstyle=|\son[a-z]+=", r.text), path
    for path in ["/ui/static/dashboard.js", "/ui/static/dashboard.css", "/ui/nowhere", "/ui/jobs/nope"]:
        r = await ui.get(path)
        assert_guarded(r)
    assert (await ui.get("/ui/jobs/nope")).status_code == 404
    assert (await ui.get("/ui/jobs?state=bogus")).status_code == 400
    assert (await ui.get("/ui/jobs?after=-1")).status_code == 400


async def test_overview_shows_counts_and_this_instances_last_hour(ui: httpx.AsyncClient, autojump_clock: Any) -> None:
    for _ in range(3):
        await submit(ui, {"task": "echo", "payload": 1, "delay": 600})
    await dead_job(ui)
    r = await ui.get("/ui/")
    assert re.search(r'data-count="pending">3<', r.text)
    assert re.search(r'data-count="dead">1<', r.text)
    assert re.search(r'data-task-count="echo\|pending">3<', r.text)
    assert re.search(r'data-activity="submitted">4<', r.text)
    assert re.search(r'data-activity="dead">1<', r.text)
    assert re.search(r'data-activity="failure_rate">100.0%<', r.text)
    assert "this instance only" in r.text


async def test_job_page_shows_payload_result_errors_and_a_progress_placeholder(ui: httpx.AsyncClient, autojump_clock: Any) -> None:
    job_id = await submit(ui, {"task": "flaky", "payload": {"fail_times": 2}})
    await settle(ui, job_id, {"succeeded"})
    r = await ui.get(f"/ui/jobs/{job_id}")
    assert "&#34;fail_times&#34;: 2" in r.text  # the payload, pretty-printed and escaped
    assert "&#34;attempt&#34;: 3" in r.text  # the result
    assert r.text.count("failure 1 of 2") == 1 and "failure 2 of 2" in r.text  # each attempt's error
    assert "Progress" in r.text and "Not available yet" in r.text


async def test_payloads_and_error_messages_are_shown_escaped(ui: httpx.AsyncClient, autojump_clock: Any) -> None:
    """Payloads and error messages are attacker-controlled: every page shows them as text."""
    job_id = await submit(ui, {"task": "fail", "payload": {"message": HTML_ERROR + SCRIPT}, "max_attempts": 1, "id": "x-1"})
    await settle(ui, job_id, {"dead"})
    for path in [f"/ui/jobs/{job_id}", "/ui/jobs", "/ui/dead"]:
        text = (await ui.get(path)).text
        assert "<script>alert" not in text and "<img src=x" not in text and "<b>bold" not in text, path
        assert "&lt;img src=x onerror=" in text, path
    text = (await ui.get(f"/ui/jobs/{job_id}")).text
    assert "&lt;script&gt;alert(&#39;pwned&#39;)&lt;/script&gt;" in text


# -- paging ------------------------------------------------------------------------------


async def test_lists_are_keyset_pages(ui: httpx.AsyncClient, service: JobService, autojump_clock: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A page asks the facade for PAGE_SIZE + 1 jobs after a cursor (never an offset, never
    a count); 'next' continues after the last job shown, until the last page."""
    ids = [await submit(ui, {"task": "echo", "payload": i, "delay": 3600}) for i in range(2 * PAGE_SIZE + 7)]
    calls: list[dict[str, Any]] = []
    real = service.list_jobs

    async def spy(**kwargs: Any) -> Any:
        calls.append(kwargs)
        return await real(**kwargs)

    monkeypatch.setattr(service, "list_jobs", spy)
    counted = 0

    async def no_counts() -> Any:
        nonlocal counted
        counted += 1
        raise AssertionError("a list page must not count")

    monkeypatch.setattr(service, "counts", no_counts)
    seen: list[str] = []
    url: str | None = "/ui/jobs?state=pending&task=echo"
    pages = 0
    while url:
        assert pages < 5, "the pages never end"
        r = await ui.get(url)
        assert r.status_code == 200
        seen += re.findall(r'name="id" value="([^"]+)"', r.text)
        found = re.search(r'href="([^"]+)" rel="next"', r.text)
        url = found.group(1).replace("&amp;", "&") if found else None
        pages += 1
    assert seen == ids and pages == 3
    assert [c["limit"] for c in calls] == [PAGE_SIZE + 1] * 3
    assert calls[0]["after"] is None and calls[1]["after"] is not None and calls[2]["after"] > calls[1]["after"]
    assert all(c["states"] == [c["states"][0]] and c["task"] == "echo" for c in calls)
    assert counted == 0


async def test_list_filters_by_state_and_task(ui: httpx.AsyncClient, autojump_clock: Any) -> None:
    pending = await submit(ui, {"task": "echo", "payload": 1, "delay": 600})
    dead = await dead_job(ui)
    text = (await ui.get("/ui/dead")).text
    assert dead in text and pending not in text
    text = (await ui.get("/ui/jobs?task=fail")).text
    assert dead in text and pending not in text
    text = (await ui.get("/ui/jobs?state=pending")).text
    assert pending in text and dead not in text


# -- actions -----------------------------------------------------------------------------


async def test_retry_and_cancel_one_job(ui: httpx.AsyncClient, autojump_clock: Any) -> None:
    dead = await dead_job(ui)
    waiting = await submit(ui, {"task": "echo", "payload": 1, "delay": 600})
    token = csrf_of((await ui.get(f"/ui/jobs/{dead}")).text)
    r = await ui.post(f"/ui/jobs/{dead}/retry", data={"csrf": token})
    assert r.status_code == 303 and r.headers["location"] == f"/ui/jobs/{dead}"
    job = await settle(ui, dead, {"dead"})
    assert len(job["errors"]) == 2  # it ran again
    r = await ui.post(f"/ui/jobs/{waiting}/cancel", data={"csrf": token})
    assert r.status_code == 303
    assert await state_of(ui, waiting) == "cancelled"
    r = await ui.post(f"/ui/jobs/{waiting}/cancel", data={"csrf": token})  # not cancellable now
    assert r.status_code == 409 and "cancelled" in r.text


async def test_bulk_retry_of_dead_jobs(ui: httpx.AsyncClient, autojump_clock: Any) -> None:
    dead = [await dead_job(ui, f"boom {i}") for i in range(5)]
    done = await submit(ui, {"task": "echo", "payload": 1})
    await settle(ui, done, {"succeeded"})
    page = await ui.get("/ui/dead")
    assert all(job_id in page.text for job_id in dead)
    token = csrf_of(page.text)
    r = await ui.post("/ui/jobs/bulk", data={"csrf": token, "action": "retry", "id": [*dead, done], "back": "/ui/dead"})
    assert r.status_code == 200, r.text
    assert "Bulk retry: 5 of 6 done" in r.text
    assert "is succeeded" in r.text  # why the succeeded one was not retried
    for job_id in dead:
        job = await settle(ui, job_id, {"dead"})
        assert len(job["errors"]) == 2  # each ran again
    assert await state_of(ui, done) == "succeeded"


async def test_bulk_actions_are_bounded(ui: httpx.AsyncClient, autojump_clock: Any) -> None:
    token = csrf_of((await ui.get("/ui/login")).text)
    ids = [f"job-{i}" for i in range(MAX_BULK + 1)]
    r = await ui.post("/ui/jobs/bulk", data={"csrf": token, "action": "retry", "id": ids})
    assert r.status_code == 413
    r = await ui.post("/ui/jobs/bulk", data={"csrf": token, "action": "delete", "id": ["a"]})
    assert r.status_code == 400
    r = await ui.post("/ui/jobs/bulk", data={"csrf": token, "action": "retry"})
    assert r.status_code == 400


async def test_forms_without_the_right_csrf_token_are_refused(service: JobService, autojump_clock: Any) -> None:
    """Every form: no token, a wrong one, another session's, or no session at all -> 403,
    and nothing happens."""
    async with ui_client(service) as ui, ui_client(service) as other:
        dead = await dead_job(ui)
        token = csrf_of((await ui.get("/ui/dead")).text)
        theirs = csrf_of((await other.get("/ui/dead")).text)
        assert token != theirs
        forms = [
            (f"/ui/jobs/{dead}/retry", {}),
            (f"/ui/jobs/{dead}/cancel", {}),
            ("/ui/jobs/bulk", {"action": "retry", "id": dead}),
            ("/ui/logout", {}),
            ("/ui/login", {"key": "x"}),
        ]
        for url, fields in forms:
            for bad in [None, "", "forged" + token[6:], theirs]:
                data = fields if bad is None else {**fields, "csrf": bad}
                r = await ui.post(url, data=data)
                assert r.status_code == 403, (url, bad, r.status_code)
                assert "CSRF" in r.text
                assert_guarded(r)
            ui.cookies.clear()  # no session at all: even a once-valid token is refused
            r = await ui.post(url, data={**fields, "csrf": token})
            assert r.status_code == 403
            ui.cookies.clear()
            await ui.get("/ui/dead")
            token = csrf_of((await ui.get("/ui/dead")).text)
        assert await state_of(ui, dead) == "dead"
        r = await ui.post(f"/ui/jobs/{dead}/retry", content=b"csrf=" + token.encode(), headers={"content-type": "text/plain"})
        assert r.status_code == 403  # not a form: no token


# -- sessions and scopes -----------------------------------------------------------------


async def login(client: httpx.AsyncClient, key: str) -> httpx.Response:
    form = await client.get("/ui/login")
    return await client.post("/ui/login", data={"csrf": csrf_of(form.text), "key": key})


async def test_login_and_logout_with_an_api_key(service: JobService, keys_file: str, autojump_clock: Any) -> None:
    auth = keyed(keys_file)
    async with ui_client(service, auth=auth) as ui:
        r = await ui.get("/ui/")
        assert r.status_code == 303 and r.headers["location"] == "/ui/login"
        r = await login(ui, "not-a-key")
        assert r.status_code == 401 and "unknown API key" in r.text
        r = await login(ui, ADMIN_TOKEN)
        assert r.status_code == 303 and r.headers["location"] == "/ui/"
        cookie = r.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/ui" in cookie
        assert "Secure" not in cookie  # plain http
        assert ADMIN_TOKEN not in cookie
        r = await ui.get("/ui/")
        assert r.status_code == 200 and "ops admin" in r.text
        stolen = ui.cookies["jobsvc_ui"]
        r = await ui.post("/ui/logout", data={"csrf": csrf_of(r.text)})
        assert r.status_code == 303 and r.headers["location"] == "/ui/login"
        assert (await ui.get("/ui/")).status_code == 303
        ui.cookies.set("jobsvc_ui", stolen, domain="localhost", path="/ui")  # a copy of the old cookie
        assert (await ui.get("/ui/")).status_code == 303
        ui.cookies.clear()
        await login(ui, ADMIN_TOKEN)
        assert (await ui.get("/ui/")).status_code == 200
        save_keys(keys_file, [READER, TENANT])  # the admin key revoked: its sessions end at once
        assert auth.reload()
        assert (await ui.get("/ui/")).status_code == 303
        events = await ui.get("/ui/events")
        assert events.status_code == 401
    async with ui_client(service, auth=keyed(keys_file), base_url="https://localhost") as ui:
        r = await login(ui, ADMIN_TOKEN)
        assert "; Secure" in r.headers["set-cookie"]


async def test_forged_or_tampered_session_cookies_are_refused(service: JobService, keys_file: str, autojump_clock: Any) -> None:
    async with ui_client(service, auth=keyed(keys_file)) as ui:
        await login(ui, READER_TOKEN)
        value = ui.cookies["jobsvc_ui"]
        version, nonce, key, issued, signature = value.split(".")
        import base64

        admin = base64.urlsafe_b64encode(ADMIN.id.encode()).decode().rstrip("=")
        for forged in [f"{version}.{nonce}.{admin}.{issued}.{signature}", value[:-2] + "AA", "garbage", ""]:
            ui.cookies.clear()
            ui.cookies.set("jobsvc_ui", forged, domain="localhost", path="/ui")
            assert (await ui.get("/ui/")).status_code == 303, forged


async def test_actions_need_the_admin_scope(service: JobService, keys_file: str, autojump_clock: Any) -> None:
    async with ui_client(service, auth=keyed(keys_file)) as ui:
        dead = await dead_job(ui)
        await login(ui, READER_TOKEN)
        page = await ui.get("/ui/dead")
        assert page.status_code == 200 and dead in page.text and "read only" in page.text
        assert "Retry selected" not in page.text and 'name="id"' not in page.text
        job_page = await ui.get(f"/ui/jobs/{dead}")
        assert "/retry" not in job_page.text
        token = csrf_of(page.text)  # the logout form's: a valid token of this session
        for url, data in [(f"/ui/jobs/{dead}/retry", {}), (f"/ui/jobs/{dead}/cancel", {}), ("/ui/jobs/bulk", {"action": "retry", "id": dead})]:
            r = await ui.post(url, data={**data, "csrf": token})
            assert r.status_code == 403 and "admin" in r.text, url
        assert await state_of(ui, dead) == "dead"


async def test_open_mode_needs_no_login(ui: httpx.AsyncClient, autojump_clock: Any) -> None:
    """No keys configured: every page is open, as the OPEN principal; the login form says
    so, and posting it just leads to the overview."""
    r = await ui.get("/ui/")
    assert r.status_code == 200 and "no keys configured" in r.text and "Log out" not in r.text
    form = await ui.get("/ui/login")
    assert "No API keys are configured" in form.text
    r = await ui.post("/ui/login", data={"csrf": csrf_of(form.text), "key": ""})
    assert r.status_code == 303 and r.headers["location"] == "/ui/"


async def test_a_tenant_bound_key_sees_its_tenants_jobs_only(service: JobService, keys_file: str, autojump_clock: Any) -> None:
    """Signed in with acme's key: acme's job is listed and shown; another tenant's (here: a
    job with no tenant) is in no list and is the same 404 as an unknown id."""
    async with ui_client(service, auth=keyed(keys_file)) as ui:
        theirs = await submit(ui, {"task": "echo", "payload": "not acme's"})  # the admin key: no tenant
        r = await ui.post("/jobs", json={"task": "echo", "payload": "acme's"}, headers={"Authorization": f"Bearer {TENANT_TOKEN}"})
        assert r.status_code == 202 and r.json()["tenant"] == "acme", r.text
        ours = r.json()["id"]
        await login(ui, TENANT_TOKEN)
        listed = await ui.get("/ui/jobs")
        assert listed.status_code == 200 and ours in listed.text and theirs not in listed.text
        assert (await ui.get(f"/ui/jobs/{ours}")).status_code == 200
        assert (await ui.get(f"/ui/jobs/{theirs}")).status_code == 404
        token = csrf_of(listed.text)
        assert (await ui.post(f"/ui/jobs/{theirs}/cancel", data={"csrf": token})).status_code == 404
        assert (await ui.get("/ui/")).status_code == 200


async def test_the_tenant_is_passed_to_a_facade_that_takes_it() -> None:
    from jobsvc.dashboard.scoped import Scoped

    seen: list[Any] = []

    class TenantFacade:
        async def get(self, job_id: str, *, tenant: str | None = None) -> Any:
            seen.append(("get", job_id, tenant))

        async def stats(self, *, tenant: str | None = None) -> Any:
            seen.append(("stats", tenant))
            return {}

        async def counts(self) -> Any:  # not scoped yet
            seen.append(("counts",))

    await Scoped(TenantFacade(), "acme").get("j1")  # type: ignore[arg-type]
    await Scoped(TenantFacade(), "acme").stats()  # type: ignore[arg-type]
    await Scoped(TenantFacade(), None).counts()  # type: ignore[arg-type]
    assert seen == [("get", "j1", "acme"), ("stats", "acme"), ("counts",)]


# -- metrics labels ----------------------------------------------------------------------


async def test_dashboard_requests_are_labelled_with_their_own_routes(ui: httpx.AsyncClient, autojump_clock: Any) -> None:
    job_id = await submit(ui, {"task": "echo", "payload": 1})
    await ui.get(f"/ui/jobs/{job_id}")
    await ui.get("/ui/static/dashboard.css")
    text = (await ui.get("/metrics")).text
    assert 'route="/ui/jobs/{job_id}"' in text
    assert 'route="/ui/static"' in text
    assert not re.search(r'route="/jobs/\{job_id\}",status="200"\} [1-9]', text.replace('method="GET",', ""))


# -- the tasks page ----------------------------------------------------------------------


def _schema_names(text: str) -> Iterator[str]:
    yield from re.findall(r'<h2 class="mono">([^<]+)</h2>', text)


async def test_the_task_catalogue_lists_every_task_with_its_schema(ui: httpx.AsyncClient, service: JobService) -> None:
    text = (await ui.get("/ui/tasks")).text
    assert sorted(_schema_names(text)) == sorted(t["name"] for t in service.describe_tasks())
    assert "&#34;fail_times&#34;" in text  # flaky's payload schema


# A fresh interpreter: this one has imported Jinja2 long ago.
LAZY_JINJA2 = """
import sys
import httpx, trio
import jobsvc.asgi, jobsvc.cli, jobsvc.server
from jobsvc.app import create_app
from jobsvc.config import Settings
from jobsvc.service import open_service

async def main():
    async with open_service(Settings.from_sources({"db": "memory:"}, {})) as service:
        app = create_app(service)
        print("before", "jinja2" in sys.modules)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            print("status", (await client.get("/ui/")).status_code)
        print("after", "jinja2" in sys.modules)
        service.begin_shutdown()

trio.run(main)
"""


def test_jinja2_is_imported_when_the_first_page_renders_not_at_start_up() -> None:
    """Jinja2 was about a fifth of what ``jobsvc serve`` imports: the templates are made
    when the dashboard first renders a page."""
    done = subprocess.run([sys.executable, "-c", LAZY_JINJA2], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:3] == ["before False", "status 200", "after True"]
