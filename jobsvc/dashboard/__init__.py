"""The web dashboard, mounted at ``/ui``: server-rendered pages (Jinja2, autoescaped), a
little JavaScript of our own (``static/dashboard.js``: no framework, no CDN, no build step),
live updates over Server-Sent Events.

Layout::

    create_dashboard(app)   the Starlette sub-app; ``app.mount("/ui", ...)`` in jobsvc.app
      guard      every response: CSP (nothing inline), X-Frame-Options, no-store; route labels
      context    Dashboard (shared state), View (one request: principal, scoped facade,
                 CSRF token), form reading, templates and their filters
      session    the signed session cookie (key id, never the key) and CSRF tokens
      scoped     the facade with the principal's tenant bound to every call
      activity   this instance's last hour: per-minute counters fed by the observer hooks
      pages      overview, job lists, dead-letter queue, job page, tasks, login; actions
      events     GET /ui/events: Server-Sent Events (counts, a watched job)
      templates/ static/

The dashboard talks to the service only through the facade (``JobService``), as the API
does. Nothing it shows counts or scans the jobs table: counts are the store's O(1) counts,
lists are keyset pages, a job page reads one job.
"""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..errors import JobsvcError
from .context import Dashboard, LoginRequired
from .events import EventStream
from .guard import Guard
from .pages import Pages, error_page, login_required

__all__ = ["Dashboard", "create_dashboard"]


class _DashboardApp(Starlette):
    def build_middleware_stack(self) -> Any:
        return Guard(super().build_middleware_stack())


def create_dashboard(parent: Starlette) -> Starlette:
    """The dashboard of the service of ``parent`` (the API app: ``parent.state.service``;
    its authenticator, ``parent.state.auth``, is read on every request)."""
    pages = Pages()
    routes = [
        Route("/", pages.overview, methods=["GET"]),
        Route("/jobs", pages.jobs, methods=["GET"]),
        Route("/jobs/bulk", pages.bulk, methods=["POST"]),
        Route("/jobs/{job_id}", pages.job, methods=["GET"]),
        Route("/jobs/{job_id}/retry", pages.retry, methods=["POST"]),
        Route("/jobs/{job_id}/cancel", pages.cancel, methods=["POST"]),
        Route("/dead", pages.dead, methods=["GET"]),
        Route("/tasks", pages.tasks, methods=["GET"]),
        Route("/events", EventStream(), methods=["GET"]),
        Route("/login", pages.login_form, methods=["GET"]),
        Route("/login", pages.login, methods=["POST"]),
        Route("/logout", pages.logout, methods=["POST"]),
        Mount("/static", StaticFiles(packages=[("jobsvc.dashboard", "static")]), name="static"),
    ]
    handlers: dict[Any, Any] = {LoginRequired: login_required, JobsvcError: error_page, HTTPException: error_page}
    app = _DashboardApp(routes=routes, exception_handlers=handlers)
    app.state.dashboard = Dashboard(parent.state.service, auth=lambda: getattr(parent.state, "auth", None))
    return app
