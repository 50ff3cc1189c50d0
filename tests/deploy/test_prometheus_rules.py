"""deploy/prometheus: promtool accepts the config and the rules, the rules' unit tests pass
(each alert shown firing and not firing), alerts name only metrics of the spec, and each
alert is explained in docs/operations.md."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from deploy_support import DEPLOY, REPO, run_tool, uses_only_spec_metrics

pytestmark = pytest.mark.deploy

RULES = DEPLOY / "prometheus" / "alerts.yml"
RULES_TEST = DEPLOY / "prometheus" / "alerts_test.yml"


def _alerts() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"] if "alert" in rule]


def test_promtool_checks_the_rules_and_the_config() -> None:
    """`promtool check rules` and `promtool check config` succeed."""
    rules = run_tool("promtool", "check", "rules", str(RULES))
    assert rules.returncode == 0, rules.stdout + rules.stderr
    config = run_tool("promtool", "check", "config", str(DEPLOY / "prometheus" / "prometheus.yml"))
    assert config.returncode == 0, config.stdout + config.stderr


def test_promtool_unit_tests_of_the_alerts_pass() -> None:
    """`promtool test rules alerts_test.yml`: input series and the alerts expected of them."""
    result = run_tool("promtool", "test", "rules", str(RULES_TEST))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    tests = yaml.safe_load(RULES_TEST.read_text())["tests"]
    cases = [case for test in tests for case in test["alert_rule_test"]]
    for alert in _alerts():
        name = alert["alert"]
        assert any(c["alertname"] == name and c["exp_alerts"] for c in cases), f"{name} is never shown firing"
        assert any(c["alertname"] == name and not c["exp_alerts"] for c in cases), f"{name} is never shown not firing"


def test_alerts_name_only_metrics_of_the_spec() -> None:
    """Every metric an alert reads is in deploy/metrics-spec.md (or Prometheus's own `up`)."""
    alerts = _alerts()
    assert {a["alert"] for a in alerts} >= {
        "JobsvcDeadLetterGrowing", "JobsvcOldestDueJobTooOld", "JobsvcNoCompletions", "JobsvcInstanceDown", "JobsvcStoreErrors",
    }  # fmt: skip
    for alert in alerts:
        unknown = uses_only_spec_metrics(alert["expr"], also=frozenset({"up"}))
        assert not unknown, f"{alert['alert']} reads metrics the spec does not define: {unknown}"


def test_every_alert_is_explained_in_the_operations_doc() -> None:
    doc = (REPO / "docs" / "operations.md").read_text()
    for alert in _alerts():
        assert f"`{alert['alert']}`" in doc, f"docs/operations.md does not explain {alert['alert']}"
