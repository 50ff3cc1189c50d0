"""The fault campaign's fixtures and its report (see ``faultkit`` for the machinery).

``FAULTS_SCALE`` picks the size (short by default: what ``make test`` runs); ``FAULTS_REPORT``
names a file to write the markdown report to (``make faults`` sets it to
``tests/faults/REPORT.md``). The report is printed at the end of the session either way: the
summary table always, the whole report when ``FAULTS_REPORT`` is set.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import faultkit
import pytest
from faultkit import RESULTS, Procs, Result

_ENV: list[tuple[str, str]] = []


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    p = Procs(tmp_path)
    try:
        yield p
    finally:
        p.close()


@pytest.fixture
def report(request: pytest.FixtureRequest) -> Callable[[str, str], Result]:
    """``report(key, title)``: this scenario's :class:`faultkit.Result`, registered for the report."""

    def make(key: str, title: str) -> Result:
        if not _ENV:
            _ENV.extend(faultkit.environment())
        result = Result(key=key, title=title, scale=faultkit.scale())
        RESULTS.append(result)
        request.node._fault_result = result  # type: ignore[attr-defined]
        return result

    return make


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    outcome = yield
    rep = outcome.get_result()
    result: Result | None = getattr(item, "_fault_result", None)
    if result is None or rep.when != "call":
        return
    if not result.duration:
        result.duration = faultkit.time.monotonic() - result.started
    if rep.passed:
        result.status = "pass (known limit)" if result.known_limit else "pass"
    elif rep.skipped:
        result.status = "skipped"
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        result.note(f"skipped: {reason}")
    elif result.failed_checks and call.excinfo is not None and _only_failed(call.excinfo.value):
        result.status = "FAIL"
    else:
        result.status = "ERROR"
        result.error = str(rep.longreprtext)[-3000:]


def _only_failed(exc: BaseException) -> bool:
    """pytest.fail (our checks), possibly wrapped in trio's exception groups."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_only_failed(e) for e in exc.exceptions)
    return isinstance(exc, pytest.fail.Exception)


def _table(results: list[Result]) -> list[str]:
    lines = [f"{'#':<3} {'scenario':<52} {'result':<8} {'acked':>6} {'lost':>5} {'dup':>5}  recover"]
    for r in faultkit.in_order(results):
        lines.append(
            f"{r.key:<3} {r.title[:52]:<52} {r.status:<8} {faultkit._cell(r.acked):>6} {faultkit._cell(r.lost):>5} "
            f"{faultkit._cell(r.duplicated):>5}  {faultkit._cell(r.recover)}"
        )
        for c in r.failed_checks:
            lines.append(f"      FAIL {c.name}: {c.detail[:160]}")
    return lines


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    path = os.environ.get("FAULTS_REPORT")
    if RESULTS and path:
        Path(path).write_text(faultkit.render_report(RESULTS, _ENV), encoding="utf-8")


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if not RESULTS:
        return
    terminalreporter.section(f"fault campaign ({faultkit.scale()})")
    if os.environ.get("FAULTS_REPORT"):
        terminalreporter.write(faultkit.render_report(RESULTS, _ENV))
        terminalreporter.write_line(f"(written to {os.environ['FAULTS_REPORT']})")
    else:
        for line in _table(RESULTS):
            terminalreporter.write_line(line)
