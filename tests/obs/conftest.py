"""Fixtures for the observability tests: log capture into a buffer, restored afterwards."""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Iterator

import pytest
import structlog

from jobsvc.logs import configure_logging
from jobsvc.tasks import Registry


@pytest.fixture
def registry() -> Registry:
    return Registry.from_modules(["testtasks", "jobsvc.demo", "obstasks"])


@pytest.fixture
def capture_logs() -> Iterator[Callable[..., io.StringIO]]:
    """capture_logs(fmt="json", level="info") -> the buffer jobsvc now logs into. The root
    logger and structlog are put back as they were afterwards."""
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    hypercorn_filters = list(logging.getLogger("hypercorn.error").filters)

    def capture(fmt: str = "json", level: str = "info") -> io.StringIO:
        buffer = io.StringIO()
        configure_logging(level, fmt, stream=buffer)
        return buffer

    yield capture
    root.handlers[:] = saved_handlers
    root.setLevel(saved_level)
    logging.getLogger("hypercorn.error").filters[:] = hypercorn_filters
    structlog.reset_defaults()
