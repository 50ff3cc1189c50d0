"""Helpers for tests/deploy: the tools, the metrics spec, PromQL metric names, Dockerfiles.

The tools (hadolint from the test extra; promtool and docker-compose from Debian, installed
by ``make tools``) are looked up in the virtualenv's bin, then on PATH. The tests install
nothing: a missing tool fails the test with a message naming ``make tools``.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
SPEC = DEPLOY / "metrics-spec.md"

__all__ = ["DEPLOY", "REPO", "Instruction", "dockerfile", "metric_names", "run_tool", "spec_metrics", "tool", "uses_only_spec_metrics"]


def tool(name: str) -> str:
    """The path of ``name``: the virtualenv's bin first, then PATH; fails if missing."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        pytest.fail(
            f"{name} is missing: run `make tools` (promtool and docker-compose come from Debian's "
            "packages; hadolint from the test extra: `make install`)",
            pytrace=False,
        )
    return found


def run_tool(name: str, *args: str, cwd: Path = REPO, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool(name), *args], capture_output=True, text=True, cwd=cwd, timeout=timeout, check=False, stdin=subprocess.DEVNULL)


# -- the metrics spec -------------------------------------------------------------------------


def spec_metrics() -> tuple[dict[str, str], tuple[str, ...]]:
    """({metric name: type}, name prefixes) from the table of deploy/metrics-spec.md; the
    prefixes come from rows such as ``process_* / python_*``."""
    metrics: dict[str, str] = {}
    prefixes: list[str] = []
    for line in SPEC.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 2 or not line.startswith("|"):
            continue
        names = [n.strip() for n in cells[0].split("/")]
        for name in names:
            if re.fullmatch(r"[a-z_:][a-z0-9_:]*\*", name):
                prefixes.append(name[:-1])
            elif re.fullmatch(r"[a-z_:][a-z0-9_:]*", name) and name != "metric":
                metrics[name] = cells[1].split()[0]
    return metrics, tuple(prefixes)


_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not functions, keywords, labels)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)  # strings
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges, subqueries
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)  # label lists
    names = set()
    for match in re.finditer(r"(?<![\w.$])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(\s*\()?", text):
        name, call = match.group(1), match.group(2)
        if call or name.lower() in _KEYWORDS:
            continue
        names.add(name)
    return names


def uses_only_spec_metrics(expr: str, *, also: frozenset[str] = frozenset()) -> set[str]:
    """The names in ``expr`` that the spec does not define (histograms: with their
    ``_bucket``/``_sum``/``_count`` series; counters may carry ``_total`` in the spec)."""
    metrics, prefixes = spec_metrics()
    allowed = set(metrics) | also
    for name, kind in metrics.items():
        if kind == "histogram":
            allowed |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return {n for n in metric_names(expr) if n not in allowed and not n.startswith(prefixes)}


# -- Dockerfiles ------------------------------------------------------------------------------


class Instruction:
    def __init__(self, keyword: str, rest: str) -> None:
        self.keyword = keyword.upper()
        self.rest = rest

    def exec_form(self) -> list[str]:
        """The JSON array of an exec-form instruction (after any --options)."""
        text = re.sub(r"^(--\S+\s+)*", "", self.rest)
        if self.keyword == "HEALTHCHECK":
            text = text.removeprefix("CMD").strip()
        value = json.loads(text)
        assert isinstance(value, list) and all(isinstance(v, str) for v in value), self.rest
        return value

    def __repr__(self) -> str:
        return f"{self.keyword} {self.rest}"


def dockerfile(path: Path) -> list[list[Instruction]]:
    """The instructions of each stage (continuation lines joined, comments dropped)."""
    stages: list[list[Instruction]] = [[]]
    logical = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not logical and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            logical += line[:-1] + " "
            continue
        logical += line
        keyword, _, rest = logical.partition(" ")
        logical = ""
        if keyword.upper() == "FROM":
            stages.append([])
        stages[-1].append(Instruction(keyword, rest.strip()))
    return [s for s in stages if s]


def env_of(stage: list[Instruction]) -> dict[str, str]:
    """ENV KEY=VALUE ... of a stage (values without $-expansion)."""
    env: dict[str, str] = {}
    for ins in stage:
        if ins.keyword == "ENV":
            for key, value in re.findall(r"(\w+)=(\S+)", ins.rest):
                env[key] = value
    return env
