"""The HTTP API (Starlette). Talks only to :class:`jobsvc.service.JobService`.

Every error is RFC 9457 ``application/problem+json``; no response ever carries a traceback.
Who may call what is :data:`ACCESS`, one :class:`~jobsvc.guard.Rule` per route, applied by
the :class:`~jobsvc.guard.Guard` before any route runs; a route without a rule cannot be
served (``create_app`` raises). The routes act for ``request.state.principal`` and pass its
tenant to the service.
"""

from __future__ import annotations

import http
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlencode

import trio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from . import codec, openapi
from .auth import Authenticator, Principal, redact_keys
from .dashboard import create_dashboard
from .errors import (
    BadRequest,
    InvalidJob,
    JobNotFound,
    JobsvcError,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from .guard import Guard, Rule, check_rules, is_json_media_type
from .metrics import CONTENT_TYPE, metrics_of, scrape
from .middleware import ObservedStarlette
from .models import Job, JobState
from .service import JobService

__all__ = ["ACCESS", "create_app"]

log = logging.getLogger("jobsvc.http")
T = TypeVar("T")

#: A request body must arrive within this many seconds (slow-body attacks), else 408.
BODY_DEADLINE = 10.0
MAX_BATCH = 1000
MAX_WAIT = 60.0
MAX_LIMIT = 1000
#: A page of GET /jobs holds at most this much JSON (plus one job, however large).
MAX_PAGE_BYTES = 1024 * 1024
#: Jobs read from the store at a time while building a page.
LIST_CHUNK = 50
_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


def problem(status: int, *, slug: str, detail: str, instance: str | None = None, headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    body: dict[str, Any] = {
        "type": f"urn:jobsvc:problem:{slug}",
        "title": http.HTTPStatus(status).phrase,
        "status": status,
        "detail": redact_keys(detail),  # a key pasted into a path is not echoed back
    }
    if instance is not None:
        body["instance"] = redact_keys(instance)
    body.update(extra)
    return JSONResponse(body, status_code=status, media_type="application/problem+json", headers={**_HEADERS, **(headers or {})})


def ok(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers={**_HEADERS, **(headers or {})})


def error_response(exc: JobsvcError, instance: str) -> JSONResponse:
    """The problem+json answer for a jobsvc error, with its headers (Retry-After...)."""
    extra: dict[str, Any] = {}
    if isinstance(exc, InvalidJob):
        extra["errors"] = exc.errors
        if hasattr(exc, "known"):
            extra["known_tasks"] = exc.known
    return problem(exc.http_status, slug=exc.slug, detail=exc.detail, instance=instance, headers=exc.headers, **extra)


async def jobsvc_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, JobsvcError)
    return error_response(exc, request.url.path)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    slug = {404: "not-found", 405: "method-not-allowed", 408: "request-timeout"}.get(exc.status_code, "http-error")
    detail = exc.detail if exc.detail != http.HTTPStatus(exc.status_code).phrase else {
        404: f"there is no route {request.url.path}",
        405: f"{request.method} is not allowed on {request.url.path}",
    }.get(exc.status_code, exc.detail)
    return problem(exc.status_code, slug=slug, detail=detail, instance=request.url.path, headers=dict(exc.headers or {}))


async def client_gone(request: Request, exc: Exception) -> Response:
    """The client hung up mid-body: nothing was accepted, nobody is listening; not an error."""
    log.debug("client disconnected during %s %s", request.method, request.url.path)
    return Response(status_code=400)


async def server_error(request: Request, exc: Exception) -> Response:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem(500, slug="internal-error", detail="an unexpected error occurred; it has been logged", instance=request.url.path)


def _service(request: Request) -> JobService:
    return request.app.state.service  # type: ignore[no-any-return]


def _principal(request: Request) -> Principal:
    """Who the request acts for (set by the Guard on every route that needs a scope)."""
    principal: Principal = request.state.principal
    return principal


def _job_id(request: Request) -> str:
    """The job id of the path; one that no job can have (a NUL byte, a slash, 300
    characters...) is a 404 at once, without a store lookup."""
    job_id: str = request.path_params["job_id"]
    if not codec.is_job_id(job_id):
        raise JobNotFound(f"no job has the id {job_id[:140]!r}")
    return job_id


async def read_json(request: Request) -> Any:
    """The body as JSON, within the size limit and the body deadline."""
    max_body = _service(request).max_body
    content_type = request.headers.get("content-type")
    if content_type is None:  # a cross-site fetch without a preflight could send no type at all
        raise UnsupportedMediaType("send the body as JSON with 'Content-Type: application/json'")
    if not is_json_media_type(content_type):
        raise UnsupportedMediaType(f"expected 'Content-Type: application/json', got {content_type!r}")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_body:
        raise PayloadTooLarge(f"the body is {declared} bytes; the limit is {max_body}")
    chunks, size = [], 0
    stream = request.stream()
    with trio.move_on_after(BODY_DEADLINE) as scope:
        try:
            async for chunk in stream:
                size += len(chunk)
                if size > max_body:
                    raise PayloadTooLarge(f"the body exceeds the limit of {max_body} bytes")
                chunks.append(chunk)
        finally:
            await stream.aclose()
    if scope.cancelled_caught:
        raise HTTPException(408, f"the request body did not arrive within {BODY_DEADLINE:g}s")
    return codec.parse_json(b"".join(chunks))


def idempotency_key(request: Request) -> str | None:
    key = request.headers.get("idempotency-key")
    if key is not None and not (0 < len(key) <= 255):
        raise BadRequest("the Idempotency-Key header must be 1 to 255 characters")
    return key


def job_body(job: Job) -> dict[str, Any]:
    return codec.job_to_json(job)


def _submitter(request: Request) -> dict[str, Any]:
    """The submission's tenant and cap on waiting jobs, from its API key."""
    principal = _principal(request)
    auth: Authenticator = request.app.state.auth
    return {"tenant": principal.tenant, "max_pending": auth.limits(principal).max_pending or None}


async def submit(request: Request) -> Response:
    body = await read_json(request)
    req = codec.structure_request(body)
    [done] = await _service(request).submit([req], idempotency_key=idempotency_key(request), **_submitter(request))
    headers = {"Location": f"/jobs/{done.job.id}"}
    return ok(job_body(done.job), status=202 if done.created else 200, headers=headers)


async def submit_batch(request: Request) -> Response:
    body = await read_json(request)
    if not isinstance(body, dict) or set(body) != {"jobs"} or not isinstance(body["jobs"], list):
        raise InvalidJob('expected {"jobs": [...]}', errors=['expected an object with one key, "jobs", holding an array @ $'])
    items = body["jobs"]
    if not 1 <= len(items) <= MAX_BATCH:
        raise InvalidJob(f"a batch holds 1 to {MAX_BATCH} jobs", errors=[f"a batch holds 1 to {MAX_BATCH} jobs, not {len(items)} @ $.jobs"])
    paths = [f"$.jobs[{i}]" for i in range(len(items))]
    errors: list[str] = []
    requests = []
    for item, path in zip(items, paths, strict=True):
        try:
            requests.append(codec.structure_request(item, path=path))
        except InvalidJob as exc:
            errors.extend(exc.errors)
    if errors:
        raise InvalidJob("the batch is invalid: " + "; ".join(errors[:10]), errors=errors)
    done = await _service(request).submit(requests, idempotency_key=idempotency_key(request), paths=paths, **_submitter(request))
    return ok({"jobs": [{**job_body(d.job), "created": d.created} for d in done]}, status=202)


async def _client_left(request: Request) -> None:
    """Return when the client has gone away. hypercorn delivers ``http.disconnect`` on the
    request's receive channel as soon as it reads the end of the connection (Starlette's
    ``is_disconnected()`` cannot see it under trio: it polls in a cancelled scope). A GET
    has no body, so everything else on the channel is ignored."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def unless_client_leaves(request: Request, work: Callable[[], Awaitable[T]]) -> T | None:
    """``await work()``, or None as soon as the client hangs up: an abandoned long poll must
    not keep its socket (and a store read per poll) for the rest of its wait."""
    result: list[T] = []
    failure: list[Exception] = []

    async def run() -> None:
        try:
            result.append(await work())
        except Exception as exc:  # noqa: BLE001 - raised below, as itself (not in a group)
            failure.append(exc)
        nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run)
        await _client_left(request)
        log.debug("client left during %s %s", request.method, request.url.path)
        nursery.cancel_scope.cancel()
    if failure:
        raise failure[0]
    return result[0] if result else None


async def get_job(request: Request) -> Response:
    job_id = _job_id(request)
    wait = request.query_params.get("wait")
    service = _service(request)
    tenant = _principal(request).tenant
    if wait is None:
        job = await service.get(job_id, tenant=tenant)
    else:
        try:
            seconds = float(wait)
        except ValueError:
            seconds = -1.0
        if not 0 <= seconds <= MAX_WAIT:
            raise BadRequest(f"wait must be a number of seconds between 0 and {MAX_WAIT:g}")
        waited = await unless_client_leaves(request, lambda: service.wait(job_id, seconds, tenant=tenant))
        if waited is None:  # nobody is listening any more: free the connection now
            return Response(status_code=499)
        job = waited
    return ok(job_body(job))


async def seed_status(request: Request) -> Response:
    job = await _service(request).get(_job_id(request), tenant=_principal(request).tenant)
    return ok({**job_body(job), "status": job.state.value})


def _parse_states(raw: str | None) -> list[JobState]:
    if not raw:
        return []
    states = []
    for name in raw.split(","):
        try:
            states.append(JobState(name.strip()))
        except ValueError:
            known = ", ".join(s.value for s in JobState)
            raise BadRequest(f"unknown state {name.strip()!r}; states are {known}") from None
    return states


def _int_param(request: Request, name: str, default: int | None, low: int, high: int) -> int | None:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or not low <= int(raw) <= high:
        raise BadRequest(f"{name} must be a whole number between {low} and {high}")
    return int(raw)


def _encode(value: Any) -> bytes:
    """JSON as Starlette's JSONResponse writes it."""
    return json.dumps(value, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")).encode("utf-8")


async def list_jobs(request: Request) -> Response:
    """A page of jobs in submission order. Bounded twice: at most ``limit`` jobs and, past
    the first job, at most MAX_PAGE_BYTES of JSON (payloads and results can be large), read
    from the store LIST_CHUNK jobs at a time; ``next`` continues after the last job shown."""
    states = _parse_states(request.query_params.get("state"))
    task = request.query_params.get("task") or None
    limit = _int_param(request, "limit", 100, 1, MAX_LIMIT) or 100
    after = _int_param(request, "after", None, 0, 2**62)
    service = _service(request)
    tenant = _principal(request).tenant
    encoded: list[bytes] = []
    size = 0
    more = False
    while len(encoded) < limit:
        want = min(LIST_CHUNK, limit - len(encoded))
        jobs = await service.list_jobs(states=states, task=task, after=after, limit=want, tenant=tenant)
        for job in jobs:
            item = _encode(job_body(job))
            if encoded and size + len(item) > MAX_PAGE_BYTES:
                more = True
                break
            encoded.append(item)
            size += len(item)
            after = job.seq
        if more or len(jobs) < want:
            break
    if len(encoded) == limit:
        more = True
    next_url = None
    if more:
        query = {k: v for k, v in request.query_params.items() if k != "after"}
        query["after"] = str(after)
        next_url = f"/jobs?{urlencode(query)}"
    body = b'{"jobs":[' + b",".join(encoded) + b'],"next":' + _encode(next_url) + b"}"
    return Response(body, media_type="application/json", headers=_HEADERS)


async def retry_job(request: Request) -> Response:
    job = await _service(request).retry(_job_id(request), tenant=_principal(request).tenant)
    return ok(job_body(job))


async def cancel_job(request: Request) -> Response:
    job = await _service(request).cancel(_job_id(request), tenant=_principal(request).tenant)
    return ok(job_body(job), status=202 if job.state is JobState.RUNNING else 200)


async def list_tasks(request: Request) -> Response:
    return ok({"tasks": _service(request).describe_tasks()})


async def health(request: Request) -> Response:
    return ok({"status": "ok", "message": "Service status: All good!"})


async def ready(request: Request) -> Response:
    service = _service(request)
    is_ready, reason = await service.ready()
    body = {"status": "ready" if is_ready else "unavailable", "reason": reason, **service.statistics()}
    if is_ready:
        return ok(body)
    return JSONResponse(body, status_code=503, headers={**_HEADERS, "Retry-After": "1"})


async def metrics(request: Request) -> Response:
    service = _service(request)
    observer = metrics_of(service.observer)
    if observer is None:
        raise HTTPException(404, "this service has no metrics")
    return Response(await scrape(service, observer), media_type=CONTENT_TYPE, headers=_HEADERS)


async def stats(request: Request) -> Response:
    """Counts by state and by task (of the key's tenant), the age of the oldest due job, and
    this instance's workers: what ``jobsvc stats`` shows."""
    return ok(await _service(request).stats(tenant=_principal(request).tenant))


async def seed_submit(request: Request) -> Response:
    body = await read_json(request)
    req = codec.structure_request(body, seed=True)
    [done] = await _service(request).submit([req], idempotency_key=idempotency_key(request), **_submitter(request))
    job = done.job
    message = "Job accepted. Processing shortly..." if done.created else "Job already accepted."
    return ok(
        {"message": message, **job_body(job), "status_url": f"/status/{job.id}"},
        status=202 if done.created else 200,
        headers={"Location": f"/jobs/{job.id}"},
    )


#: Who may call each route (by endpoint name). A route missing here cannot be served.
#: openapi.py documents these rules (security, 401/403/421); tests/http/test_access.py checks
#: every route against its own table.
ACCESS: dict[str, Rule] = {
    "submit": Rule("submit"),
    "submit_batch": Rule("submit"),
    "seed_submit": Rule("submit"),
    "list_jobs": Rule("read"),
    "get_job": Rule("read"),
    "seed_status": Rule("read"),
    "list_tasks": Rule("read"),
    "stats": Rule("read"),
    # the inventory of what this service runs (tasks, payload schemas): not for strangers
    "openapi_json": Rule("read"),
    "retry_job": Rule("admin"),
    "cancel_job": Rule("admin"),
    "metrics": Rule("metrics"),
    "health": Rule(None, probe=True),
    "ready": Rule(None, probe=True),
    # a static page with no data (it asks for a key to read openapi.json); a link may lead to it
    "docs_page": Rule(None, same_origin=False, json_only=False),
    # the web dashboard: HTML forms; it signs its users in itself (API key -> signed session
    # cookie, SameSite=Strict) and checks a CSRF token on every form; a link may lead to its
    # pages, but a form posted by another site's page is refused before the CSRF check
    "ui": Rule(None, cross_site_reads=True, json_only=False),
}


def create_app(service: JobService, *, auth: Authenticator | None = None) -> Starlette:
    """The ASGI app serving ``service``; ``auth``: the keys it accepts (default: from the
    service's settings, ``--auth-file``; none configured: open on loopback addresses)."""
    settings = service.settings
    auth = auth if auth is not None else Authenticator.from_settings(settings)
    routes = [
        Route("/jobs", submit, methods=["POST"]),
        Route("/jobs", list_jobs, methods=["GET"]),
        Route("/jobs/batch", submit_batch, methods=["POST"]),
        Route("/jobs/{job_id}", get_job, methods=["GET"]),
        Route("/jobs/{job_id}/retry", retry_job, methods=["POST"]),
        Route("/jobs/{job_id}/cancel", cancel_job, methods=["POST"]),
        Route("/tasks", list_tasks, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/ready", ready, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/stats", stats, methods=["GET"]),
        Route("/submit", seed_submit, methods=["POST"]),
        Route("/status/{job_id}", seed_status, methods=["GET"]),
        Route("/openapi.json", openapi.openapi_json, methods=["GET"]),  # generated from these routes
        Route("/docs", openapi.docs_page, methods=["GET"]),
    ]
    handlers: dict[Any, Callable[..., Any]] = {
        JobsvcError: jobsvc_error,
        HTTPException: http_error,
        ClientDisconnect: client_gone,
        Exception: server_error,
    }
    app = ObservedStarlette(routes=routes, exception_handlers=handlers)  # request ids, access log, HTTP metrics
    app.state.service = service
    app.state.auth = auth
    app.mount("/ui", create_dashboard(app), name="ui")  # the web dashboard (jobsvc/dashboard)
    # the guard before any route, reading the router's own list of routes (the /ui mount
    # included: every route needs its rule in ACCESS)
    app.add_middleware(
        Guard,
        auth=auth,
        routes=app.router.routes,
        rules=ACCESS,
        hosts=settings.served_hosts,
        insecure=settings.insecure_no_auth,
        render=error_response,
    )
    check_rules(app.routes, ACCESS)  # now, not at the first request
    return app
