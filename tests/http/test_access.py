"""Access control over HTTP, in process (httpx over ASGITransport, memory store, virtual time).

* The authorization matrix: every route of the app (walked from ``app.routes``, each method,
  HEAD included) x every kind of caller, against this module's own rule table (``RULES``),
  with the exact status. A route the table does not know fails the test.
* Tenant isolation end to end: listing, get, long-poll, retry, cancel, idempotency, ids, stats.
* Rate limits and pending caps on the autojump clock, at exact times.
* The browser protections: content types, Origin, Sec-Fetch-Site, Host; what still works.
* Keys never reach a log line or an error message.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import httpx
import pytest
import trio
from starlette.routing import Mount, Route

from jobsvc import app as app_module
from jobsvc.app import create_app
from jobsvc.auth import SCOPES, ApiKey, Authenticator, Limits, new_key
from jobsvc.client import AsyncClient, RequestRejected
from jobsvc.codec import JobRequest
from jobsvc.guard import check_rules
from jobsvc.models import JobState
from jobsvc.service import JobService

ACME, GLOBEX = "acme", "globex"
CREATED = "2026-01-01T00:00:00Z"


# -- keys and clients ------------------------------------------------------------------------


@attrs.frozen
class Caller:
    """One kind of caller: the Authorization header it sends (None: none), and what it is."""

    name: str
    authorization: str | None
    scopes: frozenset[str] = frozenset()
    tenant: str | None = None
    authenticated: bool = False


def _key(scopes: Any, tenant: str | None, **limits: Any) -> tuple[str, ApiKey]:
    return new_key(scopes=scopes, tenant=tenant, name=f"{tenant}-{'-'.join(sorted(scopes))}", created=CREATED, **limits)


def callers() -> tuple[list[Caller], list[ApiKey]]:
    """Every kind of caller of the matrix, and the keys the service accepts."""
    made: list[Caller] = []
    keys: list[ApiKey] = []

    def with_key(name: str, scopes: Any, tenant: str | None) -> None:
        token, key = _key(scopes, tenant)
        keys.append(key)
        made.append(Caller(name, f"Bearer {token}", frozenset(scopes), tenant, authenticated=True))

    unknown, _ = _key(SCOPES, ACME)  # well formed, never configured
    made += [
        Caller("no key", None),
        Caller("unknown key", f"Bearer {unknown}"),
        Caller("not a bearer token", "Basic YWNtZTpzZWNyZXQ="),
    ]
    for scope in SCOPES:
        with_key(f"{scope} only", [scope], ACME)
    with_key("every scope", SCOPES, ACME)
    with_key("operator (no tenant)", SCOPES, None)
    with_key("another tenant", SCOPES, GLOBEX)
    return made, keys


CALLERS, KEYS = callers()


def caller(name: str) -> Caller:
    return next(c for c in CALLERS if c.name == name)


@asynccontextmanager
async def client_for(app: Any, base_url: str = "http://localhost") -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url=base_url) as c:
        yield c


def keyed_app(service: JobService, keys: list[ApiKey], defaults: Limits | None = None) -> Any:
    return create_app(service, auth=Authenticator(keys, path="keys.toml", defaults=defaults or Limits()))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_problem(r: httpx.Response, status: int, slug: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = r.json()
    assert body["type"] == f"urn:jobsvc:problem:{slug}" and body["status"] == status, body
    return body


# -- the authorization matrix ---------------------------------------------------------------


@attrs.frozen
class Expect:
    """This module's rule for one operation: the scope it needs (None: anyone), what an
    allowed call answers, and the ACME job it acts on, in which state (None: no job)."""

    scope: str | None
    ok: int = 200
    job: str | None = None
    body: Any = None
    #: what it answers when no keys are configured at all, if not ``ok`` (the dashboard
    #: then opens without signing in); None: not called then (an endless event stream)
    open_ok: int | None = attrs.field()

    @open_ok.default
    def _open_ok(self) -> int | None:
        return self.ok


RULES: dict[tuple[str, str], Expect] = {
    ("POST", "/jobs"): Expect("submit", 202, body={"task": "noop", "delay": 60}),
    ("GET", "/jobs"): Expect("read"),
    ("POST", "/jobs/batch"): Expect("submit", 202, body={"jobs": [{"task": "noop", "delay": 60}]}),
    ("GET", "/jobs/{job_id}"): Expect("read", job="pending"),
    ("POST", "/jobs/{job_id}/retry"): Expect("admin", job="cancelled"),
    ("POST", "/jobs/{job_id}/cancel"): Expect("admin", job="pending"),
    ("GET", "/tasks"): Expect("read"),
    ("GET", "/health"): Expect(None),
    ("GET", "/ready"): Expect(None),
    ("GET", "/metrics"): Expect("metrics"),
    ("GET", "/stats"): Expect("read"),
    ("POST", "/submit"): Expect("submit", 202, body={"task_type": "noop", "payload": "hi"}),
    ("GET", "/status/{job_id}"): Expect("read", job="pending"),
    ("GET", "/openapi.json"): Expect("read"),
    ("GET", "/docs"): Expect(None),
    # the dashboard (tests/ui): it signs its users in itself, with a session cookie; an API key
    # in an Authorization header opens none of it: every caller gets what no one signed in gets
    ("GET", "/ui/"): Expect(None, 303, open_ok=200),
    ("GET", "/ui/jobs"): Expect(None, 303, open_ok=200),
    ("POST", "/ui/jobs/bulk"): Expect(None, 403),
    ("GET", "/ui/jobs/{job_id}"): Expect(None, 303, job="pending", open_ok=200),
    ("POST", "/ui/jobs/{job_id}/retry"): Expect(None, 403, job="cancelled"),
    ("POST", "/ui/jobs/{job_id}/cancel"): Expect(None, 403, job="pending"),
    ("GET", "/ui/dead"): Expect(None, 303, open_ok=200),
    ("GET", "/ui/tasks"): Expect(None, 303, open_ok=200),
    ("GET", "/ui/events"): Expect(None, 401, open_ok=None),
    ("GET", "/ui/login"): Expect(None, 200),
    ("POST", "/ui/login"): Expect(None, 403),
    ("POST", "/ui/logout"): Expect(None, 403),
    ("GET", "/ui/static/{path}"): Expect(None, 404),
}


def expected_status(rule: Expect, who: Caller) -> int:
    if rule.scope is None:
        return rule.ok
    if not who.authenticated:
        return 401
    if rule.scope not in who.scopes:
        return 403
    if rule.job is not None and who.tenant not in (None, ACME):
        return 404  # another tenant's job: as if there were none
    return rule.ok


def operations(app: Any, prefix: str = "") -> list[tuple[str, str]]:
    """(method, path template) of every route of the app, HEAD included, the routes of a
    Mount (the dashboard's) included; a Mount of files is one GET of ``{path}`` under it."""
    found = []
    for route in app.routes:
        if isinstance(route, Mount):
            if route.routes:
                found += operations(route, prefix + route.path)
            else:
                found += [("GET", f"{prefix}{route.path}/{{path}}")]
            continue
        assert isinstance(route, Route), f"not a Route: {route!r}: give it a rule here and in jobsvc.app.ACCESS"
        found += [(method, prefix + route.path) for method in sorted(route.methods or ())]
    return found


def rule_for(method: str, path: str) -> Expect:
    rule = RULES.get(("GET" if method == "HEAD" else method, path))
    assert rule is not None, f"{method} {path} has no rule in tests/http/test_access.py RULES: say who may call it"
    return rule


async def test_every_route_has_a_rule_and_every_rule_a_route(service: JobService) -> None:
    """The table above and the app's routes name the same operations: a new route without a
    rule (or a rule for a route that is gone) fails here."""
    app = keyed_app(service, KEYS)
    walked = {("GET" if m == "HEAD" else m, p) for m, p in operations(app)}
    assert walked == set(RULES)
    for method, path in operations(app):
        rule_for(method, path)
    assert set(app_module.ACCESS) == {r.name for r in app.routes}


def test_a_route_without_a_rule_cannot_be_served() -> None:
    """Fail closed: create_app (and the guard) refuse routes that ACCESS does not name."""

    async def shiny(request: Any) -> None: ...  # pragma: no cover

    with pytest.raises(LookupError, match=r"routes without an access rule in jobsvc.app.ACCESS: /shiny \(shiny\)"):
        check_rules([Route("/shiny", shiny)], app_module.ACCESS)


async def test_the_dashboard_mount_is_guarded_by_its_rule(service: JobService) -> None:
    """The dashboard, mounted at /ui by create_app with its own rule in ACCESS: it needs no
    API key (it has its own sessions) and takes forms; the Host check applies to it, a link
    from another site may open its pages, but another site's page may not post to it (the
    CSRF check is a second line behind this one)."""
    app = keyed_app(service, KEYS)
    form = {"content-type": "application/x-www-form-urlencoded"}
    async with client_for(app) as client:
        page = await client.get("/ui/login", headers={"Sec-Fetch-Site": "cross-site", "Origin": "http://evil.example"})
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert_problem(await client.post("/ui/login", content=b"key=x", headers={**form, "Origin": "http://evil.example"}), 403, "cross-site-request")
        assert_problem(await client.post("/ui/login", content=b"key=x", headers={**form, "Sec-Fetch-Site": "cross-site"}), 403, "cross-site-request")
        same_site = await client.post("/ui/login", content=b"key=x", headers={**form, "Origin": "http://localhost"})
        assert same_site.status_code == 403 and "cross-site" not in same_site.text  # past the guard: the dashboard's CSRF check
        assert_problem(await client.get("/ui/login", headers={"Host": "evil.example"}), 421, "misdirected-request")
        assert_problem(await client.get("/jobs"), 401, "unauthorized")


async def _job_in(service: JobService, state: str | None) -> str | None:
    if state is None:
        return None
    [done] = await service.submit([JobRequest(task="noop", delay=60)], tenant=ACME)
    if state == "cancelled":
        await service.cancel(done.job.id, tenant=ACME)
    return done.job.id


@pytest.mark.parametrize("who", CALLERS, ids=lambda c: c.name)
async def test_the_authorization_matrix(service: JobService, who: Caller) -> None:
    """Every operation of the app, called by ``who``, answers exactly what RULES says; a
    refused retry or cancel changes nothing; every refusal is problem+json, and a 401 says
    how to authenticate."""
    app = keyed_app(service, KEYS)
    wrong: list[str] = []
    async with client_for(app) as client:
        for method, template in operations(app):
            rule = rule_for(method, template)
            job_id = await _job_in(service, rule.job)
            path = template.replace("{job_id}", job_id or "")
            headers = {"Authorization": who.authorization} if who.authorization else {}
            kwargs: dict[str, Any] = {"json": rule.body} if rule.body is not None and method == "POST" else {}
            r = await client.request(method, path, headers=headers, **kwargs)
            want = expected_status(rule, who)
            if r.status_code != want:
                wrong.append(f"{method} {template}: {r.status_code}, expected {want}: {r.text[:120]}")
                continue
            if want >= 400:
                # the API answers problem+json; the dashboard, for people, an HTML page (its
                # event stream, for EventSource, a line of text)
                wanted_type = "application/problem+json"
                if template.startswith("/ui/"):
                    wanted_type = "text/plain; charset=utf-8" if template == "/ui/events" else "text/html; charset=utf-8"
                assert r.headers["content-type"] == wanted_type, (method, template)
            if want == 401 and not template.startswith("/ui/"):  # the dashboard signs in with a form
                assert r.headers["www-authenticate"].startswith('Bearer realm="jobsvc"'), r.headers
            if job_id is not None and want != rule.ok:
                stored = await service.get(job_id)
                assert stored.state.value == rule.job, f"{method} {template} by {who.name} changed the job"
    assert not wrong, f"{who.name}:\n" + "\n".join(wrong)


async def test_without_keys_every_route_is_open_on_loopback(service: JobService) -> None:
    """No keys configured: every operation answers its success status without a key (the
    dashboard's forms still want their CSRF token)."""
    app = create_app(service)
    async with client_for(app) as client:
        for method, template in operations(app):
            rule = rule_for(method, template)
            if rule.open_ok is None:
                continue
            job_id = await _job_in(service, rule.job)
            kwargs: dict[str, Any] = {"json": rule.body} if rule.body is not None and method == "POST" else {}
            r = await client.request(method, template.replace("{job_id}", job_id or ""), **kwargs)
            assert r.status_code == rule.open_ok, (method, template, r.text)


# -- tenant isolation -------------------------------------------------------------------------


@pytest.fixture
def tenant_keys() -> tuple[dict[str, str], list[ApiKey]]:
    tokens: dict[str, str] = {}
    keys: list[ApiKey] = []
    for name, tenant in ((ACME, ACME), (GLOBEX, GLOBEX), ("operator", None)):
        token, key = _key(SCOPES, tenant)
        tokens[name] = token
        keys.append(key)
    return tokens, keys


async def test_tenants_see_and_act_on_their_own_jobs_only(
    service: JobService, tenant_keys: tuple[dict[str, str], list[ApiKey]], autojump_clock: Any
) -> None:
    """Two tenants and an operator key: each tenant lists, gets, waits for, retries and
    cancels its own jobs only (another tenant's job is 404, answered at once and exactly
    as an unknown id); Idempotency-Keys are per tenant; the operator sees everything."""
    tokens, keys = tenant_keys
    acme, globex, operator = (bearer(tokens[n]) for n in (ACME, GLOBEX, "operator"))
    async with client_for(keyed_app(service, keys)) as client:
        a = await client.post("/jobs", json={"task": "noop", "delay": 60}, headers={**acme, "Idempotency-Key": "order-1"})
        g = await client.post("/jobs", json={"task": "noop", "delay": 60}, headers={**globex, "Idempotency-Key": "order-1"})
        assert (a.status_code, g.status_code) == (202, 202) and a.json()["id"] != g.json()["id"]
        assert (a.json()["tenant"], g.json()["tenant"]) == (ACME, GLOBEX)
        replay = await client.post("/jobs", json={"task": "noop", "delay": 60}, headers={**acme, "Idempotency-Key": "order-1"})
        assert (replay.status_code, replay.json()["id"]) == (200, a.json()["id"])
        acme_id, globex_id = a.json()["id"], g.json()["id"]

        # listings, filtered in the store, page by page
        more = await client.post("/jobs/batch", json={"jobs": [{"task": "noop", "delay": 60}] * 3}, headers=acme)
        assert more.status_code == 202
        listed, url = [], "/jobs?limit=2"
        while url is not None:
            page = (await client.get(url, headers=acme)).json()
            listed += page["jobs"]
            url = page["next"]
        assert [j["tenant"] for j in listed] == [ACME] * 4 and listed[0]["id"] == acme_id
        assert [j["id"] for j in (await client.get("/jobs", headers=globex)).json()["jobs"]] == [globex_id]
        assert len((await client.get("/jobs", headers=operator)).json()["jobs"]) == 5

        # another tenant's job does not exist: get, status, long poll (at once), retry, cancel
        unknown = (await client.get("/jobs/no-such-job", headers=globex)).json()
        for method, path in (("GET", f"/jobs/{acme_id}"), ("GET", f"/status/{acme_id}"), ("GET", f"/jobs/{acme_id}?wait=30"),
                             ("POST", f"/jobs/{acme_id}/retry"), ("POST", f"/jobs/{acme_id}/cancel")):  # fmt: skip
            t0 = trio.current_time()
            r = await client.request(method, path, headers=globex)
            body = assert_problem(r, 404, "job-not-found")
            assert trio.current_time() == t0, f"{method} {path} waited"
            assert body["detail"] == unknown["detail"].replace("no-such-job", acme_id)
        assert (await service.get(acme_id)).state is JobState.PENDING

        # counts by tenant
        assert (await client.get("/stats", headers=acme)).json()["jobs"]["pending"] == 4
        assert (await client.get("/stats", headers=globex)).json()["jobs"]["pending"] == 1
        assert (await client.get("/stats", headers=operator)).json()["jobs"]["pending"] == 5
        assert (await client.get("/stats", headers=acme)).json()["oldest_due_age"] is None  # store-wide only

        # the owner and the operator can act on it
        assert (await client.post(f"/jobs/{acme_id}/cancel", headers=acme)).json()["state"] == "cancelled"
        assert (await client.post(f"/jobs/{acme_id}/retry", headers=operator)).json()["state"] == "pending"
        assert (await client.get(f"/jobs/{globex_id}", headers=operator)).status_code == 200


async def test_a_tenant_chooses_job_ids_in_its_own_namespace(service: JobService, tenant_keys: tuple[dict[str, str], list[ApiKey]]) -> None:
    """Job ids are global, so a tenant's key chooses ids starting with '<tenant>:' (422
    otherwise); another tenant cannot take them, and nothing says whether they exist."""
    tokens, keys = tenant_keys
    acme, globex, operator = (bearer(tokens[n]) for n in (ACME, GLOBEX, "operator"))
    async with client_for(keyed_app(service, keys)) as client:
        bare = await client.post("/jobs", json={"task": "noop", "id": "order-7", "delay": 60}, headers=acme)
        body = assert_problem(bare, 422, "invalid-job")
        assert body["errors"] == ["a key of tenant 'acme' chooses job ids that start with 'acme:' (job ids are global) @ $.id"]
        assert (await client.post("/jobs", json={"task": "noop", "id": "acme:order-7", "delay": 60}, headers=acme)).status_code == 202
        theirs = await client.post("/jobs", json={"task": "noop", "id": "acme:order-7", "delay": 60}, headers=globex)
        assert_problem(theirs, 422, "invalid-job")
        fresh = await client.post("/jobs", json={"task": "noop", "id": "acme:order-8", "delay": 60}, headers=globex)
        assert_problem(fresh, 422, "invalid-job")  # the same answer: nothing about acme:order-7
        assert (await client.post("/submit", json={"id": 7, "task_type": "noop"}, headers=acme)).status_code == 422
        assert (await client.post("/jobs", json={"task": "noop", "id": "order-7", "delay": 60}, headers=operator)).status_code == 202


async def test_the_python_client_sends_its_key(service: JobService, tenant_keys: tuple[dict[str, str], list[ApiKey]], autojump_clock: Any) -> None:
    """jobsvc.client.AsyncClient(api_key=...) works against a service with keys, and sees
    its tenant's jobs; without a key it is refused."""
    tokens, keys = tenant_keys
    transport = httpx.ASGITransport(app=keyed_app(service, keys))
    async with AsyncClient("http://localhost", transport=transport, api_key=tokens[ACME]) as jobs:
        job = await jobs.submit("echo", {"x": 1})
        assert job.tenant == ACME
        done = await jobs.wait(job.id, timeout=10)
        assert (done.state, done.result) == (JobState.SUCCEEDED, {"x": 1})
        cancelled = await jobs.cancel((await jobs.submit("noop", delay=60)).id)
        assert cancelled.state is JobState.CANCELLED
    async with AsyncClient("http://localhost", transport=transport) as anonymous:
        with pytest.raises(RequestRejected, match="needs an API key") as caught:
            await anonymous.submit("echo", {"x": 1})
        assert caught.value.status == 401


# -- rate limits and pending caps, at exact times ---------------------------------------------


async def test_a_keys_rate_is_a_token_bucket_on_trios_clock(service: JobService, autojump_clock: Any) -> None:
    """rate 2/s, burst 3: three requests at t0, the fourth is 429 with Retry-After 1; a token
    comes back every 0.5 s exactly; other keys have their own bucket."""
    token, key = _key(["read"], ACME, rate=2, burst=3)
    other, other_key = _key(["read"], ACME, rate=2, burst=3)
    async with client_for(keyed_app(service, [key, other_key])) as client:
        t0 = trio.current_time()
        assert [(await client.get("/tasks", headers=bearer(token))).status_code for _ in range(3)] == [200, 200, 200]
        limited = await client.get("/tasks", headers=bearer(token))
        body = assert_problem(limited, 429, "rate-limited")
        assert limited.headers["retry-after"] == "1" and "retry in 0.5s" in body["detail"]
        assert (await client.get("/tasks", headers=bearer(other))).status_code == 200
        await trio.sleep_until(t0 + 0.499)
        assert (await client.get("/tasks", headers=bearer(token))).status_code == 429
        await trio.sleep_until(t0 + 0.5)
        assert (await client.get("/tasks", headers=bearer(token))).status_code == 200
        assert (await client.get("/tasks", headers=bearer(token))).status_code == 429
        await trio.sleep_until(t0 + 1.0)
        assert (await client.get("/tasks", headers=bearer(token))).status_code == 200


async def test_the_default_rate_comes_from_the_settings_and_open_mode_has_none(start_service: Any, autojump_clock: Any) -> None:
    """--key-rate/--key-burst apply to keys without their own; without keys, no limit."""
    service = await start_service(key_rate=1, key_burst=1)
    token, key = _key(["read"], ACME)
    async with client_for(create_app(service, auth=Authenticator.from_settings(service.settings))) as open_client:
        assert {(await open_client.get("/tasks")).status_code for _ in range(20)} == {200}
    defaults = Limits(rate=service.settings.key_rate, burst=service.settings.key_burst)
    async with client_for(keyed_app(service, [key], defaults)) as client:
        assert (await client.get("/tasks", headers=bearer(token))).status_code == 200
        r = await client.get("/tasks", headers=bearer(token))
        assert (r.status_code, r.headers["retry-after"]) == (429, "1")


async def test_a_keys_pending_cap_counts_its_tenants_waiting_jobs(service: JobService, autojump_clock: Any) -> None:
    """max_pending 2: the tenant's third waiting job is 429 (Retry-After), a replay of an
    accepted one is not; another tenant is not affected; once the jobs have run (at exactly
    t0+10) the key may submit again."""
    token, key = _key(["submit", "read"], ACME, max_pending=2)
    other, other_key = _key(["submit"], GLOBEX, max_pending=2)
    async with client_for(keyed_app(service, [key, other_key])) as client:
        t0 = trio.current_time()
        first = await client.post("/jobs", json={"task": "noop", "delay": 10}, headers={**bearer(token), "Idempotency-Key": "one"})
        assert (await client.post("/jobs", json={"task": "noop", "delay": 10}, headers=bearer(token))).status_code == 202
        capped = await client.post("/jobs", json={"task": "noop", "delay": 10}, headers=bearer(token))
        body = assert_problem(capped, 429, "too-many-pending")
        assert capped.headers["retry-after"] == "1"
        assert body["detail"] == "this API key's tenant has 2 jobs pending (this API key's limit is 2); retry later"
        replay = await client.post("/jobs", json={"task": "noop", "delay": 10}, headers={**bearer(token), "Idempotency-Key": "one"})
        assert (replay.status_code, replay.json()["id"]) == (200, first.json()["id"])
        assert (await client.post("/jobs", json={"task": "noop", "delay": 10}, headers=bearer(other))).status_code == 202
        batch = await client.post("/jobs/batch", json={"jobs": [{"task": "noop"}]}, headers=bearer(token))
        assert_problem(batch, 429, "too-many-pending")
        await trio.sleep_until(t0 + 9.999)
        assert (await client.post("/jobs", json={"task": "noop"}, headers=bearer(token))).status_code == 429
        done = await client.get(f"/jobs/{first.json()['id']}", params={"wait": 30}, headers=bearer(token))
        assert (done.json()["state"], trio.current_time()) == ("succeeded", t0 + 10)
        assert (await client.post("/jobs", json={"task": "noop", "delay": 10}, headers=bearer(token))).status_code == 202


async def test_the_default_pending_cap_comes_from_the_settings(start_service: Any) -> None:
    service = await start_service(key_max_pending=1)
    token, key = _key(["submit"], ACME)
    auth = Authenticator([key], path="keys.toml", defaults=Limits(max_pending=service.settings.key_max_pending))
    async with client_for(create_app(service, auth=auth)) as client:
        assert (await client.post("/jobs", json={"task": "noop", "delay": 60}, headers=bearer(token))).status_code == 202
        assert (await client.post("/jobs", json={"task": "noop", "delay": 60}, headers=bearer(token))).status_code == 429


# -- browser protections ----------------------------------------------------------------------


async def test_bodies_must_be_json(client: httpx.AsyncClient, service: JobService) -> None:
    """A body without a content type, as text/plain or as a form, is 415 everywhere, retry and
    cancel included (and they change nothing); application/json and +json types pass."""
    job = (await client.post("/jobs", json={"task": "noop", "delay": 60})).json()
    body = b'{"task": "noop", "delay": 60}'
    refused = [
        await client.post("/jobs", content=body),  # httpx sends no Content-Type for raw bytes
        await client.post("/jobs", content=b""),
        await client.post("/jobs", content=body, headers={"content-type": "text/plain"}),
        await client.post("/jobs", content=body, headers={"content-type": "text/plain;charset=UTF-8"}),
        await client.post("/jobs", content=body, headers={"content-type": "multipart/form-data; boundary=x"}),
        await client.post("/submit", content=b"task_type=noop", headers={"content-type": "application/x-www-form-urlencoded"}),
        await client.post(f"/jobs/{job['id']}/cancel", content=b"", headers={"content-type": "application/x-www-form-urlencoded"}),
        await client.post(f"/jobs/{job['id']}/cancel", content=b"x=1"),
        await client.post(f"/jobs/{job['id']}/retry", content=b"", headers={"content-type": "text/plain"}),
    ]
    for r in refused:
        assert_problem(r, 415, "unsupported-media-type")
    assert (await service.get(job["id"])).state is JobState.PENDING
    for content_type in ("application/json", "application/json; charset=utf-8", "application/merge-patch+json"):
        assert (await client.post("/jobs", content=body, headers={"content-type": content_type})).status_code == 202
    assert (await client.post(f"/jobs/{job['id']}/cancel")).status_code == 200  # no body, no type: the clients' way


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://evil.example"},
        {"Origin": "http://localhost:8000"},  # another port is another origin
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
        {"Origin": "http://localhost", "Sec-Fetch-Site": "cross-site"},
    ],
)
async def test_requests_from_other_sites_are_refused(client: httpx.AsyncClient, service: JobService, headers: dict[str, str]) -> None:
    """A browser request made by a page of another site is 403, reads included, and acts on
    nothing; a CORS preflight gets no Access-Control-Allow-* headers."""
    job = (await client.post("/jobs", json={"task": "noop", "delay": 60})).json()
    for r in (
        await client.post("/jobs", json={"task": "noop"}, headers=headers),
        await client.post(f"/jobs/{job['id']}/cancel", headers=headers),
        await client.get("/jobs", headers=headers),
        await client.request("OPTIONS", "/jobs", headers={**headers, "Access-Control-Request-Method": "POST"}),
    ):
        assert_problem(r, 403, "cross-site-request")
        assert not any(name.lower().startswith("access-control-") for name in r.headers)
    assert (await service.get(job["id"])).state is JobState.PENDING
    assert len(await service.list_jobs()) == 1


async def test_same_origin_and_non_browser_requests_pass(client: httpx.AsyncClient) -> None:
    """The page's own origin, a user's navigation and clients without Origin (curl, the
    Python client) are served; /docs may be reached from a link on another site."""
    for headers in ({}, {"Origin": "http://localhost"}, {"Origin": "http://LOCALHOST:80"}, {"Sec-Fetch-Site": "same-origin"}, {"Sec-Fetch-Site": "none"}):
        assert (await client.post("/jobs", json={"task": "noop", "delay": 60}, headers=headers)).status_code == 202, headers
    assert (await client.get("/docs", headers={"Sec-Fetch-Site": "cross-site"})).status_code == 200


@pytest.mark.parametrize("host", ["evil.example", "evil.example:3000", "127.0.0.1.nip.io", "", "[::2]:3000", "a:b:c"])
async def test_a_foreign_host_header_is_421(client: httpx.AsyncClient, host: str) -> None:
    """DNS rebinding: a Host header that is not a served name is 421, before anything else;
    health probes are answered whatever the Host."""
    r = await client.get("/jobs", headers={"Host": host})
    assert_problem(r, 421, "misdirected-request")
    assert (await client.post("/jobs", json={"task": "noop"}, headers={"Host": host})).status_code == 421
    assert (await client.get("/health", headers={"Host": host})).status_code == 200
    assert (await client.get("/ready", headers={"Host": host})).status_code == 200


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST:3000", "127.0.0.1:3000", "[::1]:3000"])
async def test_the_default_served_hosts(client: httpx.AsyncClient, host: str) -> None:
    assert (await client.get("/jobs", headers={"Host": host})).status_code == 200


async def test_allowed_hosts_replace_the_defaults(start_service: Any) -> None:
    service = await start_service(allowed_hosts="jobs.example.com", insecure_no_auth=True)
    async with client_for(create_app(service), base_url="http://jobs.example.com:8080") as client:
        assert (await client.get("/jobs")).status_code == 200
        assert (await client.get("/jobs", headers={"Host": "localhost"})).status_code == 421
    anything = await start_service(allowed_hosts="*", insecure_no_auth=True)
    async with client_for(create_app(anything), base_url="http://whatever.example") as client:
        assert (await client.get("/jobs")).status_code == 200


async def test_without_keys_only_loopback_addresses_are_served(start_service: Any) -> None:
    """No keys: a request that reached a non-loopback address of the server (hypercorn CLI
    bound to 0.0.0.0) is 403, unless --insecure-no-auth; with keys it is served."""
    service = await start_service(allowed_hosts="*")
    async with client_for(create_app(service), base_url="http://10.1.2.3:3000") as client:
        body = assert_problem(await client.get("/jobs"), 403, "loopback-only")
        assert "no API keys are configured" in body["detail"]
        assert (await client.get("/health")).status_code == 200
    insecure = await start_service(allowed_hosts="*", insecure_no_auth=True)
    async with client_for(create_app(insecure), base_url="http://10.1.2.3:3000") as client:
        assert (await client.get("/jobs")).status_code == 200
    token, key = _key(["read"], None)
    async with client_for(keyed_app(service, [key]), base_url="http://10.1.2.3:3000") as client:
        assert (await client.get("/jobs", headers=bearer(token))).status_code == 200


# -- keys are never logged --------------------------------------------------------------------


async def test_keys_never_reach_logs_or_error_messages(service: JobService, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """A valid key, the same key id with a wrong secret, a key pasted into the path and into
    the query string, and a request that fails with a 500: no log record (message or field)
    and no error answer holds a secret."""
    token, key = _key(SCOPES, ACME)
    near_miss = token[:-8] + "00000000"
    secrets = [token.rsplit("_", 1)[1], near_miss.rsplit("_", 1)[1]]
    caplog.set_level(logging.DEBUG)
    answers: list[str] = []
    async with client_for(keyed_app(service, [key])) as client:
        for r in (
            await client.post("/jobs", json={"task": "noop", "delay": 60}, headers=bearer(token)),
            await client.get("/jobs", headers=bearer(near_miss)),
            await client.get("/jobs", headers={"Authorization": near_miss}),
            await client.get(f"/jobs/{token}", headers=bearer(near_miss)),
            await client.get("/jobs", params={"api_key": token}),
            await client.get(f"/nope/{token}"),
        ):
            answers.append(r.text + str(r.headers))

        async def broken(job_id: str, *, tenant: str | None = None) -> None:
            raise RuntimeError(f"boom for {job_id}")

        monkeypatch.setattr(service, "get", broken)
        r = await client.get("/status/job-1", headers=bearer(token))
        assert r.status_code == 500
        answers.append(r.text + str(r.headers))
    server_side = [rec for rec in caplog.records if not rec.name.startswith(("httpx", "httpcore"))]  # not the test's client
    logged = "\n".join(f"{rec.getMessage()} {rec.__dict__}" for rec in server_side)
    assert "http.request" in logged and "/jobs/jsk_***" in logged
    submitted = [r for r in server_side if r.getMessage() == "http.request" and getattr(r, "status", None) == 202]
    assert [getattr(r, "key_id", None) for r in submitted] == [key.id]  # who did it: the key's public id
    for secret in secrets:
        assert secret not in logged
        for answer in answers:
            assert secret not in answer
