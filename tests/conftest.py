"""Shared fixtures. Test rules, as in trio-websocket's test module:

- Talk to 127.0.0.1 only; servers bind port 0.
- Anything time-driven (backoff, leases, deadlines, shutdown) runs on ``autojump_clock``
  with the in-memory store and asserts exact virtual times; no real sleeps to wait for
  conditions (poll with a deadline when a real process is involved).
- The store contract suite runs against memory, SQLite and a real PostgreSQL.
"""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import AsyncIterator, Callable, Iterator
from functools import partial
from typing import Any

import attrs
import httpx
import pytest
import trio
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings

# Scrub the environment first: a JOBSVC_* variable of the developer's must not leak in.
for _key in list(os.environ):
    if _key.startswith("JOBSVC_"):
        del os.environ[_key]

from harness import serve_until_shutdown  # noqa: E402
from pg_cluster import pg_cluster  # noqa: E402,F401  (a throwaway PostgreSQL server of the test's own)
from pg_fixtures import pg_empty_url, pg_template, pg_url  # noqa: E402,F401

from jobsvc.app import create_app  # noqa: E402
from jobsvc.clock import TrioClock  # noqa: E402
from jobsvc.config import Settings  # noqa: E402
from jobsvc.metrics import PrometheusObserver  # noqa: E402
from jobsvc.service import JobService  # noqa: E402
from jobsvc.store import MemoryStore, Store, open_store  # noqa: E402
from jobsvc.tasks import Registry  # noqa: E402

hypothesis_settings.register_profile(
    "jobsvc", suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture], deadline=None, max_examples=60
)
hypothesis_settings.register_profile("fast", parent=hypothesis_settings.get_profile("jobsvc"), max_examples=10)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "jobsvc"))


def max_jitter(low: float, high: float) -> float:
    """A deterministic 'random' jitter: always the ceiling, so backoff sums are exact."""
    return high


@pytest.fixture(autouse=True)
def _restore_gc() -> Iterator[None]:
    """A test that runs ``jobsvc serve`` in-process tunes the garbage collector for the whole
    process (``jobsvc.server.tune_gc``, as the CLI does): put it back as it was."""
    threshold = gc.get_threshold()
    yield
    gc.set_threshold(*threshold)
    gc.unfreeze()


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """A test that runs ``jobsvc serve`` in-process configures logging for the whole process
    (as the CLI does): put the root logger back, so the next test starts as a fresh process."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def clock() -> TrioClock:
    return TrioClock()


@pytest.fixture
def registry() -> Registry:
    return Registry.from_modules(["testtasks", "jobsvc.demo"])


@pytest.fixture
def settings() -> Settings:
    return Settings(db="memory:", workers=2, grace=5, backoff_base=1, backoff_cap=60, heartbeat=1, lease=5, poll=1, timeout=30)


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def store(request: pytest.FixtureRequest, tmp_path: Any) -> AsyncIterator[Store]:
    """Every store, opened fresh for the test (PostgreSQL: a database cloned per test)."""
    if request.param == "memory":
        url = "memory:"
    elif request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'jobs.db'}"
    else:
        url = request.getfixturevalue("pg_url")
    async with open_store(url, migrate=True) as opened:
        yield opened


ServiceFactory = Callable[..., Any]


@pytest.fixture
def start_service(nursery: trio.Nursery, registry: Registry, settings: Settings, clock: TrioClock) -> ServiceFactory:
    """start_service(store=None, **setting_overrides) -> a running JobService (memory store,
    virtual-time clock, jitter at its ceiling, owner "test-owner")."""

    async def start(store: Store | None = None, **overrides: Any) -> JobService:
        return await nursery.start(  # type: ignore[no-any-return]
            partial(
                serve_until_shutdown,
                attrs.evolve(settings, **overrides),
                store=store or MemoryStore(),
                registry=registry,
                clock=clock,
                rng=max_jitter,
                owner="test-owner",
                observer=PrometheusObserver(),
            )
        )

    return start


@pytest.fixture
async def service(start_service: ServiceFactory) -> JobService:
    return await start_service()  # type: ignore[no-any-return]


@pytest.fixture
async def client(service: JobService) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(service)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as c:
        yield c
