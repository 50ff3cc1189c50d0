"""The task registry, the @task decorator and payload schemas."""

from __future__ import annotations

import types
from typing import Any

import attrs
import pytest

from jobsvc.errors import ConfigError
from jobsvc.tasks import JobContext, Registry, TaskSpec, payload_schema, task


async def handler(payload: Any, ctx: JobContext) -> None:
    """First line of the doc."""


def test_task_builds_a_spec_with_the_docstring() -> None:
    """@task records the policy and the first docstring line."""
    spec = task("x", max_attempts=2, timeout=3)(handler)
    assert (spec.name, spec.max_attempts, spec.timeout, spec.description) == ("x", 2, 3, "First line of the doc.")


@pytest.mark.parametrize(("kwargs", "message"), [({"max_attempts": 0}, "max_attempts"), ({"timeout": 0}, "timeout")])
def test_task_rejects_bad_policies(kwargs: dict[str, Any], message: str) -> None:
    """Nonsense policies fail at import time, not at run time."""
    with pytest.raises(ValueError, match=message):
        task("x", **kwargs)


def test_registry_collects_module_tasks_and_builtins() -> None:
    """from_modules registers the built-ins and every @task of the modules."""
    registry = Registry.from_modules(["jobsvc.demo"])
    assert registry.names() == ["echo", "email", "fail", "noop", "report", "sleep"]
    assert "email" in registry and registry.get("nope") is None
    assert [s.name for s in registry] == registry.names()


def test_duplicate_task_names_are_an_error() -> None:
    """Two different handlers may not share a name."""
    registry = Registry([task("x")(handler)])
    with pytest.raises(ConfigError, match="two tasks are named 'x'"):
        registry.add(task("x")(handler))


def test_a_module_without_tasks_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """--tasks naming a module with no @task is almost certainly a mistake."""
    monkeypatch.setitem(__import__("sys").modules, "empty_tasks", types.ModuleType("empty_tasks"))
    with pytest.raises(ConfigError, match="defines no @task handlers"):
        Registry.from_modules(["empty_tasks"])


@attrs.frozen
class Payload:
    name: str
    tags: list[str]
    limits: dict[str, int]
    note: str | None = None
    ratio: float = 1.0


def test_payload_schema() -> None:
    """GET /tasks shows a JSON Schema built from the payload type."""
    assert payload_schema(None) == {}
    assert payload_schema(str) == {"type": "string"}
    assert payload_schema(Payload) == {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "limits": {"type": "object", "additionalProperties": {"type": "integer"}},
            "note": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            "ratio": {"type": "number"},
        },
        "required": ["name", "tags", "limits"],
        "additionalProperties": False,
    }


async def test_a_spec_is_callable() -> None:
    """Calling a TaskSpec runs its handler."""

    async def double(payload: int, ctx: JobContext) -> int:
        return payload * 2

    spec: TaskSpec = task("double", payload=int)(double)
    assert await spec(21, None) == 42  # type: ignore[arg-type]
