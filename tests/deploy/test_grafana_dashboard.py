"""deploy/grafana: every panel expression names only metrics of the spec (and the dashboard
shows every jobsvc_ metric of it); the provisioning finds the dashboard and the datasource."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from deploy_support import DEPLOY, metric_names, spec_metrics, uses_only_spec_metrics

pytestmark = pytest.mark.deploy

DASHBOARD = DEPLOY / "grafana" / "dashboards" / "jobsvc.json"


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def _exprs() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["expr"]) for p in _panels(dashboard["panels"]) for t in p.get("targets", [])]


def test_every_panel_expression_names_only_metrics_of_the_spec() -> None:
    exprs = _exprs()
    assert len(exprs) >= 15
    for title, expr in exprs:
        assert metric_names(expr), f"panel {title!r}: no metric in {expr!r}"
        unknown = uses_only_spec_metrics(expr)
        assert not unknown, f"panel {title!r} reads metrics the spec does not define: {unknown}"


def test_the_dashboard_shows_every_jobsvc_metric_of_the_spec() -> None:
    metrics, _ = spec_metrics()
    used = {name for _, expr in _exprs() for name in metric_names(expr)}
    used |= {name.rsplit("_", 1)[0] for name in used if name.endswith(("_bucket", "_sum", "_count"))}
    assert {m for m in metrics if m.startswith("jobsvc_")} <= used


def test_provisioning_points_at_the_dashboard_and_the_datasource() -> None:
    """The panels' datasource uid is the provisioned one; the dashboard provider reads the
    folder compose mounts the dashboards into; ids and uid are unique."""
    dashboard = json.loads(DASHBOARD.read_text())
    [source] = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())["datasources"]
    assert {p["datasource"]["uid"] for p in _panels(dashboard["panels"]) if "datasource" in p} == {source["uid"]}
    [provider] = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/jobsvc.yml").read_text())["providers"]
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert f"./grafana/dashboards:{provider['options']['path']}:ro" in compose["services"]["grafana"]["volumes"]
    ids = [p["id"] for p in _panels(dashboard["panels"])]
    assert len(ids) == len(set(ids)) and dashboard["uid"] == "jobsvc"
