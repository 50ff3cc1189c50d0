"""The HTTP API (Starlette). Talks only to :class:`jobsvc.service.JobService`.

Every error is RFC 9457 ``application/problem+json``; no response ever carries a traceback.
"""

from __future__ import annotations

import http
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

import trio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from . import codec, openapi
from .errors import (
    BadRequest,
    InvalidJob,
    JobsvcError,
    PayloadTooLarge,
    ServiceUnavailable,
    TooManyPending,
    UnsupportedMediaType,
)
from .metrics import CONTENT_TYPE, PrometheusObserver
from .models import Job, JobState
from .service import JobService

__all__ = ["create_app"]

log = logging.getLogger("jobsvc.http")

#: A request body must arrive within this many seconds (slow-body attacks), else 408.
BODY_DEADLINE = 10.0
MAX_BATCH = 1000
MAX_WAIT = 60.0
MAX_LIMIT = 1000
_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


def problem(status: int, *, slug: str, detail: str, instance: str | None = None, headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    body: dict[str, Any] = {
        "type": f"urn:jobsvc:problem:{slug}",
        "title": http.HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
    }
    if instance is not None:
        body["instance"] = instance
    body.update(extra)
    return JSONResponse(body, status_code=status, media_type="application/problem+json", headers={**_HEADERS, **(headers or {})})


def ok(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers={**_HEADERS, **(headers or {})})


async def jobsvc_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, JobsvcError)
    extra: dict[str, Any] = {}
    headers = {}
    if isinstance(exc, InvalidJob):
        extra["errors"] = exc.errors
        if hasattr(exc, "known"):
            extra["known_tasks"] = exc.known
    if isinstance(exc, TooManyPending | ServiceUnavailable):
        headers["Retry-After"] = str(exc.retry_after)
    return problem(exc.http_status, slug=exc.slug, detail=exc.detail, instance=request.url.path, headers=headers, **extra)


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


async def read_json(request: Request) -> Any:
    """The body as JSON, within the size limit and the body deadline."""
    max_body = _service(request).max_body
    content_type = request.headers.get("content-type", "")
    if content_type and "json" not in content_type.split(";")[0].lower():
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


async def submit(request: Request) -> Response:
    body = await read_json(request)
    req = codec.structure_request(body)
    [done] = await _service(request).submit([req], idempotency_key=idempotency_key(request))
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
    done = await _service(request).submit(requests, idempotency_key=idempotency_key(request), paths=paths)
    return ok({"jobs": [{**job_body(d.job), "created": d.created} for d in done]}, status=202)


async def get_job(request: Request) -> Response:
    job_id = request.path_params["job_id"]
    wait = request.query_params.get("wait")
    service = _service(request)
    if wait is None:
        job = await service.get(job_id)
    else:
        try:
            seconds = float(wait)
        except ValueError:
            seconds = -1.0
        if not 0 <= seconds <= MAX_WAIT:
            raise BadRequest(f"wait must be a number of seconds between 0 and {MAX_WAIT:g}")
        job = await service.wait(job_id, seconds)
    return ok(job_body(job))


async def seed_status(request: Request) -> Response:
    job = await _service(request).get(request.path_params["job_id"])
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


async def list_jobs(request: Request) -> Response:
    states = _parse_states(request.query_params.get("state"))
    task = request.query_params.get("task") or None
    limit = _int_param(request, "limit", 100, 1, MAX_LIMIT) or 100
    after = _int_param(request, "after", None, 0, 2**62)
    jobs = await _service(request).list_jobs(states=states, task=task, after=after, limit=limit)
    next_url = None
    if len(jobs) == limit:
        query = {k: v for k, v in request.query_params.items() if k != "after"}
        query["after"] = str(jobs[-1].seq)
        next_url = f"/jobs?{urlencode(query)}"
    return ok({"jobs": [job_body(j) for j in jobs], "next": next_url})


async def retry_job(request: Request) -> Response:
    job = await _service(request).retry(request.path_params["job_id"])
    return ok(job_body(job))


async def cancel_job(request: Request) -> Response:
    job = await _service(request).cancel(request.path_params["job_id"])
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
    observer = service.observer
    if not isinstance(observer, PrometheusObserver):
        raise HTTPException(404, "this service has no metrics")
    counts = await service.counts()
    return Response(observer.render(counts.by_state()), media_type=CONTENT_TYPE, headers=_HEADERS)


async def stats(request: Request) -> Response:
    """Counts by state and by task, the age of the oldest due job, and this instance's
    workers: what ``jobsvc stats`` shows."""
    return ok(await _service(request).stats())


async def seed_submit(request: Request) -> Response:
    body = await read_json(request)
    req = codec.structure_request(body, seed=True)
    [done] = await _service(request).submit([req], idempotency_key=idempotency_key(request))
    job = done.job
    message = "Job accepted. Processing shortly..." if done.created else "Job already accepted."
    return ok(
        {"message": message, **job_body(job), "status_url": f"/status/{job.id}"},
        status=202 if done.created else 200,
        headers={"Location": f"/jobs/{job.id}"},
    )


def create_app(service: JobService) -> Starlette:
    """The ASGI app serving ``service``."""
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
    app = Starlette(routes=routes, exception_handlers=handlers)
    app.state.service = service
    return app
