"""``GET /openapi.json`` and ``GET /docs``.

The document validates as OpenAPI 3.1; it has every route of the app with its methods, and
every task's payload schema; and the answers the service really gives (success and error)
are documented, status by status, and validate against the documented schemas.
"""

from __future__ import annotations

import base64
import hashlib
import re
from html.parser import HTMLParser
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate
from starlette.routing import Mount, Route

from jobsvc import openapi
from jobsvc.app import create_app
from jobsvc.codec import JobRequest
from jobsvc.service import JobService


@pytest.fixture
async def document(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/openapi.json")
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    return response.json()  # type: ignore[no-any-return]


def _template(path: str) -> str:
    return re.sub(r"\{(\w+):\w+\}", r"{\1}", path)


async def test_the_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    """openapi-spec-validator accepts it as OpenAPI 3.1."""
    assert document["openapi"] == "3.1.0"
    validate(document)


async def test_every_route_of_the_app_is_described_with_its_methods(service: JobService, document: dict[str, Any]) -> None:
    """Walk app.routes: each path is in the document with exactly the route's methods
    (HEAD included: Starlette answers it for every GET), and every described endpoint is a
    route (nothing stale). The one Mount is the web dashboard (HTML pages, not the API)."""
    app = create_app(service)
    expected: dict[str, set[str]] = {}
    mounts = [route for route in app.routes if isinstance(route, Mount)]
    assert [m.path for m in mounts] == ["/ui"]
    for route in app.routes:
        if route in mounts:
            continue
        assert isinstance(route, Route)
        expected.setdefault(_template(route.path), set()).update(m.lower() for m in route.methods or ())
    assert {path: set(ops) for path, ops in document["paths"].items()} == expected
    endpoints = {route.endpoint.__name__ for route in app.routes if isinstance(route, Route)}
    assert set(openapi.operations()) == endpoints


def test_a_route_without_a_description_is_an_error() -> None:
    """A new route nobody described makes the document fail to build, naming the route."""

    async def shiny(request: Any) -> None: ...  # pragma: no cover

    with pytest.raises(LookupError, match=r"/shiny \(shiny\) is not described"):
        openapi.build_document([Route("/shiny", shiny)], [])


async def test_each_task_has_its_submission_schema(service: JobService, document: dict[str, Any]) -> None:
    """POST /jobs takes a oneOf with one schema per task (discriminated by `task`), holding
    the task's payload schema; /jobs/batch takes a list of them; /tasks lists them."""
    schemas = document["components"]["schemas"]
    tasks = service.describe_tasks()
    submission = schemas["Submission"]
    assert len(submission["oneOf"]) == len(tasks)
    mapping = submission["discriminator"]["mapping"]
    assert set(mapping) == {t["name"] for t in tasks}
    for described in tasks:
        task_schema = schemas[mapping[described["name"]].rsplit("/", 1)[1]]
        assert task_schema["properties"]["task"] == {"const": described["name"]}
        assert task_schema["properties"]["payload"] == described["payload_schema"]
    nap = schemas[mapping["nap"].rsplit("/", 1)[1]]
    assert nap["required"] == ["task", "payload"] and nap["properties"]["payload"]["required"] == ["seconds"]
    jobs = document["paths"]["/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert jobs == {"$ref": "#/components/schemas/Submission"}
    assert schemas["Batch"]["properties"]["jobs"]["items"] == {"$ref": "#/components/schemas/Submission"}
    assert "TaskList" in str(document["paths"]["/tasks"]["get"]["responses"]["200"])


def _validator(document: dict[str, Any], schema: dict[str, Any]) -> Draft202012Validator:
    """A validator for ``schema`` whose $refs resolve in ``document``."""
    return Draft202012Validator({**document, **schema})


class Checker:
    """Checks answers against the document: the status is documented for the operation,
    with that media type, and the body validates against its schema."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.seen: set[tuple[str, str, str]] = set()

    def __call__(self, response: httpx.Response, template: str) -> httpx.Response:
        method = response.request.method.lower()
        operation = self.document["paths"][template][method]
        status = str(response.status_code)
        assert status in operation["responses"], f"{method} {template} answered {status}, not documented: {response.text[:300]}"
        self.seen.add((template, method, status))
        documented = operation["responses"][status]
        media_type = response.headers["content-type"].split(";")[0]
        if method == "head":
            return response
        assert media_type in documented["content"], (template, status, media_type)
        if media_type.endswith("json"):
            schema = documented["content"][media_type]["schema"]
            errors = [e.message for e in _validator(self.document, schema).iter_errors(response.json())]
            assert not errors, (template, status, errors[:3], response.json())
        return response


async def test_every_answer_is_documented_and_matches_its_schema(client: httpx.AsyncClient, service: JobService, document: dict[str, Any]) -> None:
    """One request per documented outcome we can provoke in-process: success and error
    answers are documented for their operation and validate against their schemas."""
    check = Checker(document)
    job = check(await client.post("/jobs", json={"task": "echo", "payload": {"x": 1}}, headers={"Idempotency-Key": "k1"}), "/jobs").json()
    check(await client.post("/jobs", json={"task": "echo", "payload": {"x": 1}}, headers={"Idempotency-Key": "k1"}), "/jobs")  # replay: 200
    check(await client.post("/jobs", json={"task": "echo", "payload": {"x": 2}}, headers={"Idempotency-Key": "k1"}), "/jobs")  # 409
    check(await client.post("/jobs", json={"task": "nope"}), "/jobs")  # 422 unknown-task
    check(await client.post("/jobs", json={"task": "nap", "payload": {"seconds": "x"}}), "/jobs")  # 422 invalid-job
    check(await client.post("/jobs", content=b"{", headers={"content-type": "application/json"}), "/jobs")  # 400
    check(await client.post("/jobs", content=b"x", headers={"content-type": "text/plain"}), "/jobs")  # 415
    check(await client.post("/jobs", content=b"x" * 300_000, headers={"content-type": "application/json"}), "/jobs")  # 413
    check(await client.post("/jobs/batch", json={"jobs": [{"task": "noop"}, {"task": "echo", "payload": [1]}]}), "/jobs/batch")
    check(await client.post("/jobs/batch", json={"jobs": []}), "/jobs/batch")  # 422
    check(await client.get(f"/jobs/{job['id']}", params={"wait": 5}), "/jobs/{job_id}")
    check(await client.get("/jobs/none-such"), "/jobs/{job_id}")  # 404
    check(await client.get(f"/jobs/{job['id']}", params={"wait": "forever"}), "/jobs/{job_id}")  # 400
    check(await client.head(f"/jobs/{job['id']}"), "/jobs/{job_id}")
    check(await client.get("/jobs", params={"state": "succeeded,pending", "limit": 1}), "/jobs")
    check(await client.get("/jobs", params={"state": "lost"}), "/jobs")  # 400
    check(await client.post(f"/jobs/{job['id']}/retry"), "/jobs/{job_id}/retry")  # 409: it succeeded
    waiting = check(await client.post("/jobs", json={"task": "noop", "delay": 60}), "/jobs").json()
    check(await client.post(f"/jobs/{waiting['id']}/cancel"), "/jobs/{job_id}/cancel")  # 200
    check(await client.post(f"/jobs/{waiting['id']}/retry"), "/jobs/{job_id}/retry")  # 200: cancelled -> pending
    check(await client.post("/jobs/none-such/cancel"), "/jobs/{job_id}/cancel")  # 404
    check(await client.get("/tasks"), "/tasks")
    check(await client.get("/health"), "/health")
    check(await client.get("/ready"), "/ready")
    check(await client.get("/stats"), "/stats")
    check(await client.get("/metrics"), "/metrics")
    check(await client.post("/submit", json={"id": 1, "task_type": "echo", "payload": "hi"}), "/submit")
    check(await client.get("/status/1"), "/status/{job_id}")
    check(await client.get("/openapi.json"), "/openapi.json")
    check(await client.get("/docs"), "/docs")
    service.begin_shutdown()
    check(await client.get("/ready"), "/ready")  # 503, documented as a Ready body
    check(await client.post("/jobs", json={"task": "noop"}), "/jobs")  # 503 problem
    seen = {(t, m, s) for t, m, s in check.seen if t == "/jobs" and m == "post"}
    assert {s for _, _, s in seen} == {"200", "202", "400", "409", "413", "415", "422", "503"}
    assert {t for t, _, _ in check.seen} == set(document["paths"]), "every path was asked"


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[str] = []
        self.styles: list[str] = []
        self.script_srcs: list[str] = []
        self.handlers: list[str] = []
        self._in: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handlers += [f"{tag} {name}" for name, _ in attrs if name.startswith("on") or name == "style"]
        if tag == "script":
            src = dict(attrs).get("src")
            if src is not None:
                self.script_srcs.append(src)
        if tag in ("script", "style"):
            self._in = tag
            (self.scripts if tag == "script" else self.styles).append("")

    def handle_endtag(self, tag: str) -> None:
        self._in = None

    def handle_data(self, data: str) -> None:
        if self._in == "script":
            self.scripts[-1] += data
        elif self._in == "style":
            self.styles[-1] += data


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


async def test_docs_page_is_served_with_a_strict_content_security_policy(client: httpx.AsyncClient) -> None:
    """/docs is HTML with a CSP that allows no inline code but its own script and style, by
    hash; it loads nothing from elsewhere, cannot be framed, and its script builds the page
    without innerHTML or eval."""
    response = await client.get("/docs")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    csp = {d.split()[0]: d.split()[1:] for d in response.headers["content-security-policy"].split("; ")}
    assert csp["default-src"] == ["'none'"]
    assert csp["connect-src"] == ["'self'"]  # fetches openapi.json, nothing else
    assert csp["frame-ancestors"] == ["'none'"] and csp["base-uri"] == ["'none'"] and csp["form-action"] == ["'none'"]
    for directive in csp.values():
        assert not {"'unsafe-inline'", "'unsafe-eval'", "*", "http:", "https:", "data:"} & set(directive), csp

    page = _Page()
    page.feed(response.text)
    assert page.scripts and not page.script_srcs, "one inline script, nothing loaded from elsewhere"
    assert sorted(csp["script-src"]) == sorted(_sha256(s) for s in page.scripts)
    assert sorted(csp["style-src"]) == sorted(_sha256(s) for s in page.styles)
    assert not page.handlers, f"inline handlers or style attributes would be blocked: {page.handlers}"
    script = "".join(page.scripts)
    for unsafe in ("innerHTML", "outerHTML", "eval(", "new Function", "document.write"):
        assert unsafe not in script
    assert 'fetch("openapi.json"' in script
    assert not re.search(r"https?://", response.text), "no CDN, no absolute URL"


async def test_access_control_is_documented_and_its_answers_match(service: JobService, document: dict[str, Any]) -> None:
    """Each operation's security says whether it needs a key (and its scope), from
    jobsvc.app.ACCESS; the guard's answers (401, 403, 415, 421, 429) are documented for the
    operations that give them and validate against their schemas."""
    from jobsvc.app import ACCESS
    from jobsvc.auth import Authenticator, Limits, new_key

    assert document["components"]["securitySchemes"]["apiKey"] == {
        "type": "http", "scheme": "bearer", "description": document["components"]["securitySchemes"]["apiKey"]["description"],
    }  # fmt: skip
    app = create_app(service)
    for route in app.routes:
        if isinstance(route, Mount):  # the dashboard: not in the document (the test above)
            continue
        assert isinstance(route, Route)
        rule = ACCESS[route.endpoint.__name__]
        for method in route.methods or ():
            operation = document["paths"][_template(route.path)][method.lower()]
            if rule.scope is None:
                assert operation["security"] == [] and "401" not in operation["responses"], route.path
            else:
                assert operation["security"] == [{"apiKey": []}] and operation["x-jobsvc-scope"] == rule.scope
                assert {"401", "403", "429"} <= set(operation["responses"]), route.path
                assert "WWW-Authenticate" in operation["responses"]["401"]["headers"]
            assert ("421" in operation["responses"]) is (not rule.probe)

    reader, read_key = new_key(scopes=["read"], created="2026-01-01T00:00:00Z", rate=1, burst=1)
    keyed = create_app(service, auth=Authenticator([read_key], path="keys.toml", defaults=Limits()))
    check = Checker(document)
    job = (await service.submit([JobRequest(task="noop", delay=60)]))[0].job
    transport = httpx.ASGITransport(app=keyed, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
        key = {"Authorization": f"Bearer {reader}"}
        check(await client.get("/jobs"), "/jobs")  # 401
        check(await client.head("/jobs"), "/jobs")  # 401, headers only
        check(await client.post("/jobs", json={"task": "noop"}, headers=key), "/jobs")  # 403: no submit scope
        check(await client.get("/tasks", headers=key), "/tasks")  # 200
        check(await client.get("/tasks", headers=key), "/tasks")  # 429: rate 1, burst 1
        check(await client.get("/stats", headers={**key, "Host": "evil.example"}), "/stats")  # 421
        check(await client.get("/jobs", headers={**key, "Origin": "http://evil.example"}), "/jobs")  # 403 cross-site
        check(await client.post(f"/jobs/{job.id}/cancel", headers={"content-type": "application/x-www-form-urlencoded"}), "/jobs/{job_id}/cancel")  # 415
        check(await client.get("/metrics"), "/metrics")  # 401
        check(await client.get("/docs"), "/docs")  # 200 without a key
    assert {s for t, _, s in check.seen} == {"200", "401", "403", "415", "421", "429"}
