"""The PromQL metric-name reader used by the dashboard and alert tests, and the spec table."""

from __future__ import annotations

import pytest
from deploy_support import metric_names, spec_metrics

pytestmark = pytest.mark.deploy


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('sum by (task) (rate(jobsvc_jobs_submitted_total{task="a b"}[$__rate_interval]))', {"jobsvc_jobs_submitted_total"}),
        ("histogram_quantile(0.95, sum by (le, route) (rate(x_bucket[5m])))", {"x_bucket"}),
        ("(sum(increase(a[10m])) or vector(0)) == 0 and on() max(b) > 60", {"a", "b"}),
        ('up{job="jobsvc"} == 0', {"up"}),
        ("sum(a) / ignoring(x) group_left sum(b offset 5m)", {"a", "b"}),
    ],
)
def test_metric_names(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_the_spec_table_is_read() -> None:
    """deploy/metrics-spec.md yields every metric with its type, and the process_/python_ prefixes."""
    metrics, prefixes = spec_metrics()
    assert metrics["jobsvc_job_outcomes_total"] == "counter"
    assert metrics["jobsvc_attempt_duration_seconds"] == "histogram"
    assert metrics["jobsvc_queue_oldest_due_age_seconds"] == "gauge"
    assert len(metrics) == 18 and set(prefixes) == {"process_", "python_"}
