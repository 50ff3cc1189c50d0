"""Helpers for the observability tests: parse /metrics, capture log lines."""

from __future__ import annotations

import json
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

__all__ = ["Metrics", "json_lines"]


class Metrics:
    """A /metrics text parsed into samples: ``m.value("name", label="v")``."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                self.samples[(sample.name, frozenset(sample.labels.items()))] = sample.value

    def value(self, name: str, **labels: str) -> float | None:
        """The sample with exactly these labels, or None if there is none."""
        return self.samples.get((name, frozenset(labels.items())))

    def series(self, name: str) -> dict[frozenset[tuple[str, str]], float]:
        """Every sample of ``name``, by label set."""
        return {labels: v for (n, labels), v in self.samples.items() if n == name}

    def by(self, name: str, label: str, **fixed: str) -> dict[str, float]:
        """``{label value: sample}`` of the samples of ``name`` that also carry ``fixed``."""
        out = {}
        for labels, value in self.series(name).items():
            d = dict(labels)
            if all(d.get(k) == v for k, v in fixed.items()) and label in d:
                out[d[label]] = value
        return out


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line of ``text`` as a JSON object (fails on a line that is not one)."""
    records = []
    for line in text.splitlines():
        record = json.loads(line)
        assert isinstance(record, dict), line
        records.append(record)
    return records
