"""The dashboard's pages and actions. Every read goes through the scoped facade
(``View.jobs``) and is bounded: counts come from the store's O(1) counts, listings are
keyset pages (``after`` = the last job's ``seq``; never OFFSET, never a COUNT), a job page
reads one job.

=====================  ===========================================================
GET  /                 overview: counts by state and task, last hour, oldest due
GET  /jobs             a page of jobs, filtered by state and task
GET  /dead             the dead-letter queue (jobs in state dead)
GET  /jobs/{id}        one job: payload, result, errors, timings
GET  /tasks            the task catalogue, with payload schemas
POST /jobs/{id}/retry  redrive a dead or cancelled job              (admin)
POST /jobs/{id}/cancel cancel a waiting or running job              (admin)
POST /jobs/bulk        retry or cancel the selected ids (at most MAX_BULK)  (admin)
GET  /login            the login form; POST /login logs in with an API key
POST /logout           ends the session
=====================  ===========================================================
"""

from __future__ import annotations

from urllib.parse import urlencode

import trio
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from .. import codec
from ..errors import JobNotFound, JobsvcError
from ..models import Job, JobState
from .context import Dashboard, LoginRequired, base_of, duration, first, iso_time, read_form
from .session import Session

__all__ = ["MAX_BULK", "PAGE_SIZE", "Pages"]

#: Jobs per list page.
PAGE_SIZE = 50
#: Jobs one bulk action may name.
MAX_BULK = 100
#: Store calls a bulk action makes at once (SQLite group-commits them together).
BULK_CONCURRENCY = 16
STATES = [state.value for state in JobState]


def _dashboard(request: Request) -> Dashboard:
    return request.app.state.dashboard  # type: ignore[no-any-return]


async def _signed_in_form(request: Request) -> tuple[Dashboard, dict[str, list[str]], Session]:
    """The dashboard, the posted form and its session, for the login and logout forms:
    403 unless the form carries its session's CSRF token (a post without a session cookie
    has none)."""
    dash = _dashboard(request)
    form = await read_form(request)
    session, set_cookie = dash.session_of(request)
    if set_cookie is not None or not dash.sessions.csrf_ok(session, first(form, "csrf")):
        raise HTTPException(403, "the form's CSRF token is missing or wrong: reload the page and try again")
    return dash, form, session


def _job_id(request: Request) -> str:
    job_id: str = request.path_params["job_id"]
    if not codec.is_job_id(job_id):
        raise JobNotFound(f"no job has the id {job_id[:140]!r}")
    return job_id


def _states(raw: str | None) -> list[JobState]:
    if not raw:
        return []
    try:
        return [JobState(raw)]
    except ValueError:
        raise HTTPException(400, f"unknown state {raw[:40]!r}; states are {', '.join(STATES)}") from None


def _after(raw: str | None) -> int | None:
    if raw is None or raw == "":
        return None
    if not (raw.isascii() and raw.isdigit()) or int(raw) > 2**62:
        raise HTTPException(400, "after must be a job's position (a whole number)")
    return int(raw)


def _task(raw: str | None) -> str | None:
    if not raw:
        return None
    if len(raw) > 200:
        raise HTTPException(400, "the task name is too long")
    return raw


class Pages:
    async def overview(self, request: Request) -> Response:
        dash = _dashboard(request)
        view = dash.view(request)
        stats = await view.jobs.stats()
        activity = dash.activity.summary(view.principal.tenant) if dash.activity is not None else None
        peak = max((sum(m.counts[e] for e in ("succeeded", "retrying", "dead")) for m in activity.minutes), default=0) if activity else 0
        return dash.render(
            request, "overview.html",
            {"stats": stats, "states": STATES, "activity": activity, "peak": max(peak, 1), "instance": stats.get("instance", {})},
            view=view,
        )

    async def jobs(self, request: Request) -> Response:
        return await self._listing(request, dead_letter=False)

    async def dead(self, request: Request) -> Response:
        return await self._listing(request, dead_letter=True)

    async def _listing(self, request: Request, *, dead_letter: bool) -> Response:
        dash = _dashboard(request)
        view = dash.view(request)
        params = request.query_params
        states = [JobState.DEAD] if dead_letter else _states(params.get("state"))
        task = _task(params.get("task"))
        after = _after(params.get("after"))
        found = await view.jobs.list_jobs(states=states, task=task, after=after, limit=PAGE_SIZE + 1)
        jobs = found[:PAGE_SIZE]
        query = {k: v for k, v in (("state", "" if dead_letter else (states[0].value if states else "")), ("task", task or "")) if v}
        path = f"{view.base}/dead" if dead_letter else f"{view.base}/jobs"
        next_url = f"{path}?{urlencode({**query, 'after': jobs[-1].seq})}" if len(found) > PAGE_SIZE else None
        first_url = f"{path}?{urlencode(query)}" if query else path
        return dash.render(
            request, "jobs.html",
            {
                "jobs": jobs, "dead_letter": dead_letter, "states": STATES, "state": states[0].value if states and not dead_letter else "",
                "task": task or "", "tasks": dash.service.task_names(), "after": after, "next_url": next_url,
                "first_url": first_url, "here": str(request.url.path) + (f"?{request.url.query}" if request.url.query else ""),
                "page_size": PAGE_SIZE, "max_bulk": MAX_BULK,
            },
            view=view,
        )

    async def job(self, request: Request) -> Response:
        dash = _dashboard(request)
        view = dash.view(request)
        job = await view.jobs.get(_job_id(request))
        return dash.render(request, "job.html", {"job": job, "public": codec.job_to_json(job), "timings": _timings(job)}, view=view)

    async def tasks(self, request: Request) -> Response:
        dash = _dashboard(request)
        view = dash.view(request)
        return dash.render(request, "tasks.html", {"tasks": dash.service.describe_tasks()}, view=view)

    # -- actions ---------------------------------------------------------------------------

    async def retry(self, request: Request) -> Response:
        return await self._act(request, "retry")

    async def cancel(self, request: Request) -> Response:
        return await self._act(request, "cancel")

    async def _act(self, request: Request, action: str) -> Response:
        dash = _dashboard(request)
        form = await read_form(request)
        view = dash.view(request, scope="admin", form=form)
        job_id = _job_id(request)
        await (view.jobs.retry(job_id) if action == "retry" else view.jobs.cancel(job_id))
        return RedirectResponse(f"{view.base}/jobs/{job_id}", status_code=303)

    async def bulk(self, request: Request) -> Response:
        dash = _dashboard(request)
        form = await read_form(request)
        view = dash.view(request, scope="admin", form=form)
        action = first(form, "action")
        if action not in ("retry", "cancel"):
            raise HTTPException(400, "action must be retry or cancel")
        ids = list(dict.fromkeys(form.get("id", [])))
        if not ids:
            raise HTTPException(400, "select at least one job")
        if len(ids) > MAX_BULK:
            raise HTTPException(413, f"a bulk action takes at most {MAX_BULK} jobs, not {len(ids)}")
        results: dict[str, tuple[bool, str]] = {}
        limiter = trio.CapacityLimiter(BULK_CONCURRENCY)
        act = view.jobs.retry if action == "retry" else view.jobs.cancel

        async def one(job_id: str) -> None:
            async with limiter:
                if not codec.is_job_id(job_id):
                    results[job_id] = (False, "not a job id")
                    return
                try:
                    job = await act(job_id)
                except JobsvcError as exc:
                    results[job_id] = (False, exc.detail)
                else:
                    results[job_id] = (True, job.state.value)

        async with trio.open_nursery() as nursery:
            for job_id in ids:
                nursery.start_soon(one, job_id)
        back = first(form, "back") or ""
        if not back.startswith(view.base + "/") or back.startswith("//") or "\\" in back:
            back = f"{view.base}/dead"
        done = [(job_id, *results[job_id]) for job_id in ids]
        return dash.render(
            request, "bulk.html",
            {"action": action, "results": done, "ok": sum(1 for _, ok, _ in done if ok), "back": back},
            view=view,
        )

    # -- sessions --------------------------------------------------------------------------

    async def login_form(self, request: Request) -> Response:
        dash = _dashboard(request)
        session, set_cookie = dash.session_of(request)
        return dash.render(
            request, "login.html", {"csrf": dash.sessions.csrf_token(session), "error": None}, set_cookie=set_cookie
        )

    async def login(self, request: Request) -> Response:
        dash, form, session = await _signed_in_form(request)
        base = base_of(request)
        if not dash.auth.enabled:
            return RedirectResponse(f"{base}/", status_code=303)
        key = (first(form, "key") or "").strip()
        principal = dash.auth.authenticate(key) if 0 < len(key) <= 512 else None
        if principal is None:
            return dash.render(
                request, "login.html", {"csrf": dash.sessions.csrf_token(session), "error": "unknown API key"}, status=401
            )
        dash.sessions.end(session)
        response = RedirectResponse(f"{base}/", status_code=303)
        # a new nonce: the pre-login session (and its CSRF token) ends here
        response.headers.append("set-cookie", dash.cookie_for(request, dash.sessions.new(principal.key_id)))
        return response

    async def logout(self, request: Request) -> Response:
        dash, _, session = await _signed_in_form(request)
        dash.sessions.end(session)
        base = base_of(request)
        response = RedirectResponse(f"{base}/login" if dash.auth.enabled else f"{base}/", status_code=303)
        response.headers.append("set-cookie", dash.cookie_for(request, dash.sessions.new()))
        return response


def _timings(job: Job) -> list[tuple[str, str, str]]:
    """(what, when, how long since the job was created)."""
    rows = [
        ("created", iso_time(job.created_at), ""),
        ("due (run_at)", iso_time(job.run_at), duration(job.run_at - job.created_at)),
        ("last change", iso_time(job.updated_at), duration(job.updated_at - job.created_at)),
    ]
    if job.finished_at is not None:
        rows.append(("finished", iso_time(job.finished_at), duration(job.finished_at - job.created_at)))
    return rows


async def login_required(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, LoginRequired)
    return RedirectResponse(f"{base_of(request)}/login", status_code=303)


async def error_page(request: Request, exc: Exception) -> Response:
    """JobsvcError and HTTPException as an HTML page with their status (escaped message)."""
    if isinstance(exc, JobsvcError):
        status, message = exc.http_status, exc.detail
    else:
        assert isinstance(exc, HTTPException)
        status, message = exc.status_code, str(exc.detail)
    dash = _dashboard(request)
    response = dash.render(request, "error.html", {"status": status, "message": message}, status=status)
    if status == 503:
        response.headers["retry-after"] = "1"
    return response
