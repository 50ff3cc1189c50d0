"""``GET /openapi.json`` (OpenAPI 3.1) and ``GET /docs`` (a page that renders it).

The document is generated, not kept by hand:

* **paths and methods** come from the app's routes (``app.routes``), with path parameters
  from each route's convertors; a route added to :func:`jobsvc.app.create_app` appears
  here by itself, and a test fails until :func:`operations` says what it answers;
* **what each operation answers** is :func:`operations`, keyed by the endpoint's function
  name: its success responses, and the exceptions it may raise (:mod:`jobsvc.errors`), whose
  ``http_status``, ``slug`` and docstring become its problem+json error responses;
* **the submission schemas** come from :class:`jobsvc.codec.JobRequest` (its fields) and the
  registry (:meth:`JobService.describe_tasks`): ``POST /jobs`` takes a ``oneOf`` of one schema
  per task, each with that task's payload schema;
* **the job schema** comes from :class:`jobsvc.models.Job` and the public fields of
  :mod:`jobsvc.codec`;
* **who may call each operation** comes from :data:`jobsvc.app.ACCESS` (the rules the guard
  applies): its ``security`` (a bearer API key, or none), its scope, and the answers of the
  guard it may give (401, 403, 415, 421, 429).

``/docs`` is one self-contained HTML page (``static/docs.html``: no build step, no CDN, no
third-party code) whose inline script fetches ``openapi.json`` and lists the operations. It
is served with a strict Content-Security-Policy that allows exactly its own inline script
and style by their SHA-256 hashes, and nothing else.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import http
import importlib.resources
import re
import typing
from collections.abc import Iterable, Mapping
from typing import Any

import attrs
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from . import __version__, codec
from .errors import (
    BadRequest,
    Conflict,
    CrossSiteRequest,
    Forbidden,
    IllegalTransition,
    InvalidJob,
    JobNotFound,
    JobsvcError,
    LoopbackOnly,
    MisdirectedRequest,
    PayloadTooLarge,
    RateLimited,
    ServiceUnavailable,
    StoreUnavailable,
    TooManyPending,
    Unauthorized,
    UnknownTask,
    UnsupportedMediaType,
)
from .guard import Rule
from .models import ErrorRecord, Job, JobState
from .tasks import payload_schema

__all__ = ["CSP", "Operation", "build_document", "docs_page", "openapi_json", "operations"]

_SCHEMAS = "#/components/schemas/"
_NO_STORE = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _SCHEMAS + name}


@attrs.frozen
class Param:
    name: str
    schema: dict[str, Any]
    description: str


@attrs.frozen
class Operation:
    """What one endpoint answers. Paths and methods are not here: they come from the routes."""

    summary: str
    tag: str
    #: status -> (description, schema or None, media type)
    ok: Mapping[int, tuple[str, dict[str, Any] | None, str]]
    #: the jobsvc errors it may raise (each becomes a problem+json response)
    raises: tuple[type[JobsvcError], ...] = ()
    #: other problem+json statuses (from Starlette's HTTPException): status -> (slug, meaning)
    http_problems: Mapping[int, tuple[str, str]] = attrs.field(factory=dict)
    body: str | None = None  #: component schema of the JSON request body
    query: tuple[Param, ...] = ()
    idempotency_key: bool = False
    location: bool = False  #: a 2xx carries a Location header


_JSON = "application/json"
_PROBLEM = "application/problem+json"
_BODY_ERRORS: tuple[type[JobsvcError], ...] = (
    BadRequest, PayloadTooLarge, UnsupportedMediaType, InvalidJob, UnknownTask, Conflict,
    TooManyPending, ServiceUnavailable, StoreUnavailable,
)  # fmt: skip
_SLOW_BODY = {408: ("request-timeout", "the request body did not arrive within 10 s")}


def _job_ok(description: str) -> tuple[str, dict[str, Any], str]:
    return description, _ref("Job"), _JSON


def _limits() -> dict[str, float]:
    from . import app  # the HTTP limits live with the routes (app imports this module)

    return {"MAX_WAIT": app.MAX_WAIT, "MAX_LIMIT": app.MAX_LIMIT, "MAX_BATCH": app.MAX_BATCH}


def _access() -> Mapping[str, Rule]:
    from . import app  # the access rules live with the routes

    return app.ACCESS


#: The security scheme every operation that needs a scope names.
SECURITY_SCHEME = "apiKey"


def _guard_errors(rule: Rule, method: str) -> tuple[type[JobsvcError], ...]:
    """What the guard may answer before the operation runs (see jobsvc.guard)."""
    if rule.probe:
        return ()
    errors: list[type[JobsvcError]] = [MisdirectedRequest, LoopbackOnly]
    if rule.same_origin:
        errors.append(CrossSiteRequest)
    if rule.json_only and method == "post":
        errors.append(UnsupportedMediaType)
    if rule.scope is not None:
        errors += [Unauthorized, Forbidden, RateLimited]
    return tuple(errors)


@functools.cache
def operations() -> Mapping[str, Operation]:
    """Endpoint function name -> what it answers."""
    limits = _limits()
    one_state = "|".join(s.value for s in JobState)
    return {
        "submit": Operation(
            "Submit a job",
            "jobs",
            {
                202: _job_ok("Accepted: the job is committed to the store (Location: /jobs/{id})."),
                200: _job_ok("A replay (same id or Idempotency-Key, same body): the job the first submission created."),
            },
            raises=_BODY_ERRORS,
            http_problems=_SLOW_BODY,
            body="Submission",
            idempotency_key=True,
            location=True,
        ),
        "submit_batch": Operation(
            "Submit many jobs in one transaction",
            "jobs",
            {202: ("Accepted: every job is committed (item i used the key KEY#i).", _ref("BatchResult"), _JSON)},
            raises=_BODY_ERRORS,
            http_problems=_SLOW_BODY,
            body="Batch",
            idempotency_key=True,
        ),
        "list_jobs": Operation(
            "List jobs (keyset pagination; state=dead is the dead-letter queue)",
            "jobs",
            {200: ("A page of jobs in submission order; follow `next` (null on the last page).", _ref("JobList"), _JSON)},
            raises=(BadRequest, StoreUnavailable),
            query=(
                Param("state", {"type": "string", "pattern": f"^({one_state})(,({one_state}))*$"}, "comma-separated states"),
                Param("task", {"type": "string"}, "only jobs of this task"),
                Param("limit", {"type": "integer", "minimum": 1, "maximum": limits["MAX_LIMIT"], "default": 100}, "page size"),
                Param("after", {"type": "integer", "minimum": 0}, "cursor: from the `next` link of the previous page"),
            ),
        ),
        "get_job": Operation(
            "Get a job: state, attempts, errors, result",
            "jobs",
            {200: _job_ok("The job (with `wait`: once it is final, or as it is when the wait ends).")},
            raises=(BadRequest, JobNotFound, StoreUnavailable),
            query=(Param("wait", {"type": "number", "minimum": 0, "maximum": limits["MAX_WAIT"]}, "long-poll: seconds to wait for a final state"),),
        ),
        "retry_job": Operation(
            "Replay a dead or cancelled job (attempts reset, errors kept)",
            "jobs",
            {200: _job_ok("The job, pending again.")},
            raises=(JobNotFound, IllegalTransition, StoreUnavailable),
        ),
        "cancel_job": Operation(
            "Cancel a job",
            "jobs",
            {
                200: _job_ok("A waiting job: cancelled."),
                202: _job_ok("A running job: cancel_requested; it is cancelled through its cancel scope."),
            },
            raises=(JobNotFound, IllegalTransition, StoreUnavailable),
        ),
        "list_tasks": Operation(
            "Task types with their payload schema and retry policy",
            "service",
            {200: ("The registered tasks.", _ref("TaskList"), _JSON)},
        ),
        "health": Operation("Liveness", "service", {200: ("The process runs.", _ref("Health"), _JSON)}),
        "ready": Operation(
            "Readiness: 503 while draining or when the store is down",
            "service",
            {
                200: ("Ready.", _ref("Ready"), _JSON),
                503: ("Draining or the store is unreachable (Retry-After); not a problem document.", _ref("Ready"), _JSON),
            },
        ),
        "metrics": Operation(
            "Prometheus metrics (text format)",
            "service",
            {200: ("Prometheus text exposition format 0.0.4.", {"type": "string"}, "text/plain")},
            raises=(StoreUnavailable,),
            http_problems={404: ("not-found", "this service has no metrics")},
        ),
        "stats": Operation(
            "Counts by state and task, the oldest due job's age, this instance's workers",
            "service",
            {200: ("Statistics: `jobs` and `tasks` store-wide, `instance` this instance.", _ref("Stats"), _JSON)},
            raises=(StoreUnavailable,),
        ),
        "seed_submit": Operation(
            "Submit a job the original service's way (task_type, numeric id)",
            "original service",
            {
                202: ("Accepted.", _ref("SeedAccepted"), _JSON),
                200: ("A replay of an accepted job.", _ref("SeedAccepted"), _JSON),
            },
            raises=_BODY_ERRORS,
            http_problems=_SLOW_BODY,
            body="SeedSubmission",
            idempotency_key=True,
            location=True,
        ),
        "seed_status": Operation(
            "A job, the original service's way (with `status`)",
            "original service",
            {200: ("The job, plus `status` (its state).", _ref("SeedStatus"), _JSON)},
            raises=(JobNotFound, StoreUnavailable),
        ),
        "openapi_json": Operation(
            "This document", "service", {200: ("The OpenAPI 3.1 description of this service.", {"type": "object"}, _JSON)}
        ),
        "docs_page": Operation(
            "A page listing the operations of this document", "service", {200: ("HTML.", {"type": "string"}, "text/html")}
        ),
    }


# -- schemas ---------------------------------------------------------------------------------


def _component_name(prefix: str, task: str, taken: set[str]) -> str:
    name = prefix + re.sub(r"[^A-Za-z0-9._-]", "_", task)
    while name in taken:
        name += "_"
    taken.add(name)
    return name


def _accepts_null(schema: Mapping[str, Any]) -> bool:
    return not schema or {"type": "null"} in schema.get("anyOf", [])


#: Constraints that JobRequest.problems() checks beyond the field types.
def _request_constraints() -> dict[str, dict[str, Any]]:
    return {
        "task": {"minLength": 1},
        "id": {
            "minimum": 0,
            "minLength": 1,
            "maxLength": codec.MAX_ID_LENGTH,
            "pattern": f"^{codec._ID_RE.pattern}$",
            "description": "a client-chosen id: a replay with the same body returns the first job",
        },
        "max_attempts": {"minimum": 1, "maximum": 1000},
        "delay": {"minimum": 0, "maximum": codec.MAX_DELAY, "description": "seconds from now (not with run_at)"},
        "run_at": {"format": "date-time", "description": "ISO 8601 with a time zone (not with delay)"},
        "priority": {"minimum": -1000, "maximum": 1000, "description": "higher runs first"},
        "timeout": {"exclusiveMinimum": 0, "maximum": codec.MAX_TIMEOUT, "description": "seconds per attempt"},
    }


def _request_schema(request_type: type, constraints: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    schema = payload_schema(request_type)
    for name, extra in constraints.items():
        if name in schema["properties"]:
            schema["properties"][name] = {**schema["properties"][name], **extra}
    return schema


def _submission_schemas(tasks: list[dict[str, Any]]) -> dict[str, Any]:
    """``Submission`` (a oneOf over the tasks) and one ``Submission.<task>`` per task."""
    base = _request_schema(codec.JobRequest, _request_constraints())
    schemas: dict[str, Any] = {}
    mapping: dict[str, str] = {}
    taken: set[str] = set()
    for described in tasks:
        name = _component_name("Submission.", described["name"], taken)
        payload = described["payload_schema"]
        schema = {
            **base,
            "title": f"a {described['name']!r} job",
            "properties": {**base["properties"], "task": {"const": described["name"]}, "payload": payload},
            "required": ["task"] if _accepts_null(payload) else ["task", "payload"],
        }
        if described["description"]:
            schema["description"] = described["description"]
        schemas[name] = schema
        mapping[described["name"]] = _SCHEMAS + name
    schemas["Submission"] = {
        "description": "A job submission: `task` names a registered task (GET /tasks), whose payload schema applies.",
        "oneOf": [{"$ref": ref} for ref in mapping.values()],
        "discriminator": {"propertyName": "task", "mapping": mapping},
    }
    return schemas


def _job_schema() -> dict[str, Any]:
    """The public JSON view of a Job, from the model's fields (codec.PUBLIC_FIELDS)."""
    hints = typing.get_type_hints(Job)
    nullable_time = {"anyOf": [{"type": "string", "format": "date-time"}, {"type": "null"}]}
    special: dict[str, dict[str, Any]] = {
        "state": {"enum": [s.value for s in JobState]},
        "errors": {"type": "array", "items": _ref("AttemptError")},
        "payload": {},
        "result": {},
    }
    properties: dict[str, Any] = {}
    for name in codec.PUBLIC_FIELDS:
        if name in special:
            properties[name] = special[name]
        elif name in ("run_at", "created_at", "updated_at", "finished_at"):
            properties[name] = nullable_time if _accepts_null(payload_schema(hints[name])) else {"type": "string", "format": "date-time"}
        else:
            properties[name] = payload_schema(hints[name])
    return {"type": "object", "properties": properties, "required": list(codec.PUBLIC_FIELDS)}


def _attempt_error_schema() -> dict[str, Any]:
    schema = payload_schema(ErrorRecord)
    schema["properties"]["at"] = {"type": "string", "format": "date-time"}
    schema["description"] = "One failed attempt: the exception's type and message (never a traceback)."
    return schema


def _schemas(tasks: list[dict[str, Any]]) -> dict[str, Any]:
    limits = _limits()
    names = [t["name"] for t in tasks]
    job = _ref("Job")
    problem = {
        "type": "object",
        "description": "RFC 9457 problem details.",
        "properties": {
            "type": {"type": "string", "format": "uri", "description": "urn:jobsvc:problem:<slug>"},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string"},
            "instance": {"type": "string", "description": "the request path"},
            "errors": {"type": "array", "items": {"type": "string"}, "description": "validation messages, each with a JSON path: `... @ $.payload.to`"},
            "known_tasks": {"type": "array", "items": {"type": "string"}, "description": "unknown-task: the registered tasks"},
        },
        "required": ["type", "title", "status", "detail"],
    }
    seed = _request_schema(codec.SeedRequest, {"id": _request_constraints()["id"]})
    seed["properties"]["task_type"] = {"enum": names}
    return {
        "Problem": problem,
        "Job": _job_schema(),
        "AttemptError": _attempt_error_schema(),
        **_submission_schemas(tasks),
        "Batch": {
            "type": "object",
            "properties": {"jobs": {"type": "array", "minItems": 1, "maxItems": limits["MAX_BATCH"], "items": _ref("Submission")}},
            "required": ["jobs"],
            "additionalProperties": False,
        },
        "BatchResult": {
            "type": "object",
            "properties": {"jobs": {"type": "array", "items": {"allOf": [job], "properties": {"created": {"type": "boolean"}}, "required": ["created"]}}},
            "required": ["jobs"],
        },
        "JobList": {
            "type": "object",
            "properties": {"jobs": {"type": "array", "items": job}, "next": {"anyOf": [{"type": "string"}, {"type": "null"}]}},
            "required": ["jobs", "next"],
        },
        "TaskList": {
            "type": "object",
            "properties": {
                "tasks": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "name": {"type": "string"},
                            "description": {"type": "string"},
                            "payload_schema": {"type": "object", "description": "JSON Schema of the payload ({}: any JSON)"},
                            "max_attempts": {"type": "integer"},
                            "timeout": {"type": "number"},
                            "backoff": {
                                "type": "object",
                                "properties": {"base": {"type": "number"}, "cap": {"type": "number"}, "jitter": {"enum": ["full", "none"]}},
                            },
                        },
                        "required": ["name", "payload_schema", "max_attempts", "timeout", "backoff"],
                    },
                }
            },
            "required": ["tasks"],
        },
        "Health": {"type": "object", "properties": {"status": {"const": "ok"}, "message": {"type": "string"}}, "required": ["status"]},
        "Ready": {
            "type": "object",
            "description": "Readiness, and this instance's workers.",
            "properties": {"status": {"enum": ["ready", "unavailable"]}, "reason": {"type": "string"}, "draining": {"type": "boolean"}},
            "required": ["status", "reason"],
        },
        "Stats": {
            "type": "object",
            "properties": {
                "jobs": {"type": "object", "additionalProperties": {"type": "integer"}, "description": "store-wide counts by state"},
                "tasks": {"type": "object", "additionalProperties": {"type": "object"}, "description": "counts by task and state"},
                "oldest_due_age": {"anyOf": [{"type": "number"}, {"type": "null"}], "description": "seconds the oldest due job has waited"},
                "instance": {"type": "object", "description": "this instance: workers, busy workers, draining, owner, store"},
            },
            "required": ["jobs", "tasks", "oldest_due_age", "instance"],
        },
        "SeedSubmission": seed,
        "SeedAccepted": {
            "allOf": [job],
            "properties": {"message": {"type": "string"}, "status_url": {"type": "string"}},
            "required": ["message", "status_url"],
        },
        "SeedStatus": {"allOf": [job], "properties": {"status": {"enum": [s.value for s in JobState]}}, "required": ["status"]},
    }


# -- operations ------------------------------------------------------------------------------


def _error_responses(operation: Operation, guard: tuple[type[JobsvcError], ...] = ()) -> dict[str, Any]:
    """problem+json responses by status: each lists the problem types it may carry."""
    by_status: dict[int, dict[str, str]] = {}
    for exc in (*operation.raises, *guard):
        by_status.setdefault(exc.http_status, {})[exc.slug] = (exc.__doc__ or "").strip().splitlines()[0]
    for status, (slug, meaning) in operation.http_problems.items():
        by_status.setdefault(status, {})[slug] = meaning
    by_status.setdefault(500, {})["internal-error"] = "a bug: logged, never a traceback in the response"
    responses: dict[str, Any] = {}
    for status, slugs in sorted(by_status.items()):
        schema = {**_ref("Problem"), "properties": {"type": {"enum": [f"urn:jobsvc:problem:{s}" for s in slugs]}, "status": {"const": status}}}
        response: dict[str, Any] = {
            "description": f"{http.HTTPStatus(status).phrase}: " + "; ".join(f"`{s}`: {m}" for s, m in slugs.items()),
            "content": {_PROBLEM: {"schema": schema}},
        }
        if status in (429, 503):
            response["headers"] = {"Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}}
        if status == 401:
            response["headers"] = {"WWW-Authenticate": {"description": 'Bearer realm="jobsvc"', "schema": {"type": "string"}}}
        responses[str(status)] = response
    return responses


def _operation(route: Route, method: str, name: str, operation: Operation, rule: Rule) -> dict[str, Any]:
    parameters: list[dict[str, Any]] = [
        {"name": param, "in": "path", "required": True, "schema": {"type": "integer" if type(conv).__name__ == "IntegerConvertor" else "string"}}
        for param, conv in route.param_convertors.items()
    ]
    parameters += [{"name": p.name, "in": "query", "required": False, "schema": p.schema, "description": p.description} for p in operation.query]
    if operation.idempotency_key:
        parameters.append(
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "schema": {"type": "string", "minLength": 1, "maxLength": 255},
                "description": "a replay with the same key and body returns the first job (200); another body is 409",
            }
        )
    responses: dict[str, Any] = {}
    for status, (description, schema, media_type) in sorted(operation.ok.items()):
        response: dict[str, Any] = {"description": description}
        if method != "head" and schema is not None:
            response["content"] = {media_type: {"schema": schema}}
        if operation.location and 200 <= status < 300:
            response["headers"] = {"Location": {"description": "the job's URL: /jobs/{id}", "schema": {"type": "string"}}}
        responses[str(status)] = response
    for code, problem in _error_responses(operation, _guard_errors(rule, method)).items():
        responses[code] = {k: v for k, v in problem.items() if k != "content"} if method == "head" else problem
    described: dict[str, Any] = {
        "operationId": name if method != "head" else f"{name}_head",
        "summary": operation.summary if method != "head" else f"{operation.summary} (headers only)",
        "tags": [operation.tag],
        "security": [{SECURITY_SCHEME: []}] if rule.scope is not None else [],
        "responses": responses,
    }
    if rule.scope is not None:
        described["description"] = f"Needs an API key with the `{rule.scope}` scope (when keys are configured)."
        described["x-jobsvc-scope"] = rule.scope
    if parameters:
        described["parameters"] = parameters
    if operation.body is not None:
        described["requestBody"] = {"required": True, "content": {_JSON: {"schema": _ref(operation.body)}}}
    return described


def build_document(routes: Iterable[Any], tasks: list[dict[str, Any]]) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``routes`` (an app's routes) serving ``tasks``
    (:meth:`JobService.describe_tasks`). Raises LookupError for a route whose endpoint has
    no entry in :func:`operations`."""
    ops = operations()
    access = _access()
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        if not isinstance(route, Route):  # the dashboard's Mount: HTML pages, not the API
            continue
        name = getattr(route.endpoint, "__name__", repr(route.endpoint))
        if name not in ops:
            raise LookupError(f"the route {route.path} ({name}) is not described in jobsvc.openapi.operations()")
        path = paths.setdefault(re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path_format), {})
        if name not in access:
            raise LookupError(f"the route {route.path} ({name}) has no access rule in jobsvc.app.ACCESS")
        for method in sorted(route.methods or ()):
            path[method.lower()] = _operation(route, method.lower(), name, ops[name], access[name])
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "jobsvc",
            "version": __version__,
            "summary": "A durable HTTP job-processing service.",
            "description": (
                "Submit jobs with POST /jobs; a 2xx means the job is committed. Every error is "
                "`application/problem+json` (RFC 9457); an unknown path is 404 `not-found`, a method "
                "a path does not serve is 405 `method-not-allowed`. With API keys configured, each "
                "operation that names a scope needs `Authorization: Bearer <key>` with that scope "
                "(scopes: submit, read, admin, metrics); a key bound to a tenant sees that tenant's "
                "jobs only (any other job is 404). Request bodies must be JSON "
                "(`Content-Type: application/json`), and requests from pages of other sites are refused."
            ),
            "license": {"name": "MIT", "identifier": "MIT"},
        },
        "tags": [{"name": "jobs"}, {"name": "service"}, {"name": "original service", "description": "the seed service's endpoints"}],
        "paths": paths,
        "components": {
            "schemas": _schemas(tasks),
            "securitySchemes": {
                SECURITY_SCHEME: {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key made by `jobsvc keys create` (jsk_...), as `Authorization: Bearer <key>`.",
                }
            },
        },
    }


# -- endpoints -------------------------------------------------------------------------------


def _document(app: Starlette) -> dict[str, Any]:
    """Built once per app: routes and tasks do not change while it runs."""
    document: dict[str, Any] | None = getattr(app.state, "openapi", None)
    if document is None:
        document = build_document(app.routes, app.state.service.describe_tasks())
        app.state.openapi = document
    return document


async def openapi_json(request: Request) -> Response:
    """The OpenAPI 3.1 description of this service."""
    return JSONResponse(_document(request.app), headers=_NO_STORE)


def _load_page() -> tuple[str, str]:
    page = importlib.resources.files("jobsvc").joinpath("static/docs.html").read_text(encoding="utf-8")

    def hashes(tag: str) -> str:
        found = re.findall(rf"<{tag}>(.*?)</{tag}>", page, flags=re.S)
        return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()}'" for body in found)

    csp = (
        f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; connect-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
    return page, csp


PAGE, CSP = _load_page()


async def docs_page(request: Request) -> Response:
    """A page that lists the operations of ``openapi.json``."""
    headers = {**_NO_STORE, "Content-Security-Policy": CSP, "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY"}
    return HTMLResponse(PAGE, headers=headers)
