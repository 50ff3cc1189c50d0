"""The public surface: every name in jobsvc.__all__ imports and is what its module defines."""

from __future__ import annotations

import importlib

import jobsvc


def test_every_public_name_imports() -> None:
    """``from jobsvc import X`` works for each X in __all__ (loaded lazily)."""
    for name in jobsvc.__all__:
        if name == "__version__":
            continue
        value = getattr(jobsvc, name)
        assert value is getattr(importlib.import_module(f"jobsvc.{jobsvc._PUBLIC[name]}"), name)


def test_all_lists_exactly_the_public_names() -> None:
    """__all__ and the lazy table name the same things."""
    assert sorted(jobsvc.__all__) == sorted(["__version__", *jobsvc._PUBLIC])
    assert set(dir(jobsvc)) >= set(jobsvc.__all__)
