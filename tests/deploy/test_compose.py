"""deploy/compose.yaml: `docker-compose config` accepts it (and rejects a broken copy, so the
check means something); three jobsvc instances on PostgreSQL behind nginx, scraped by
Prometheus; their command line parses with jobsvc's parser; stop_grace_period covers
the drain."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_support import DEPLOY, run_tool

from jobsvc import cli
from jobsvc.config import Settings

pytestmark = pytest.mark.deploy

COMPOSE = DEPLOY / "compose.yaml"


def _config() -> dict[str, Any]:
    result = run_tool("docker-compose", "-f", str(COMPOSE), "config")
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)  # type: ignore[no-any-return]


def test_docker_compose_config_accepts_the_file() -> None:
    result = run_tool("docker-compose", "-f", str(COMPOSE), "config", "-q")
    assert result.returncode == 0, result.stdout + result.stderr


def test_docker_compose_config_rejects_a_broken_copy(tmp_path: Path) -> None:
    broken = tmp_path / "deploy"
    shutil.copytree(DEPLOY, broken)
    text = (broken / "compose.yaml").read_text()
    (broken / "compose.yaml").write_text(text.replace("  stop_grace_period: 30s", "  stop_grace_period: 30s\n  no_such_option: 1"))
    result = run_tool("docker-compose", "-f", str(broken / "compose.yaml"), "config", "-q")
    assert result.returncode != 0 and "no_such_option" in result.stdout + result.stderr


def _seconds(value: Any) -> float:
    match = re.fullmatch(r"(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?", str(value))
    assert match, value
    return int(match.group(1) or 0) * 60 + float(match.group(2) or 0)


def test_three_instances_on_postgres_behind_nginx_scraped_by_prometheus() -> None:
    config = _config()
    services = config["services"]
    instances = sorted(name for name, s in services.items() if s.get("build", {}).get("dockerfile") == "deploy/Dockerfile")
    assert instances == ["jobsvc1", "jobsvc2", "jobsvc3"]
    nginx = (DEPLOY / "nginx.compose.conf").read_text()
    targets = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())["scrape_configs"][0]["static_configs"][0]["targets"]
    for name in instances:
        service = services[name]
        assert f"server {name}:3000" in nginx
        assert f"{name}:3000" in targets
        assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
        env = {k: str(v) for k, v in service["environment"].items()}
        args = cli._parser().parse_args(service["command"])
        settings = Settings.from_sources({k: v for k, v in vars(args).items() if k != "command"}, env)
        assert settings.database.scheme == "postgresql" and settings.bind == "0.0.0.0:3000"
        settings.check_exposure()  # it starts: without keys only because it says so (a demo)
        assert settings.served_hosts is not None and set(instances) | {"localhost"} <= settings.served_hosts
        assert _seconds(service["stop_grace_period"]) > settings.grace + settings.drain_delay + 2
    for name in ("nginx", "prometheus", "grafana"):
        for port in services[name].get("ports", []):
            assert str(port.get("host_ip", port) if isinstance(port, dict) else port).startswith("127.0.0.1"), (name, port)
    assert {"postgres", "nginx", "prometheus", "grafana"} <= set(services)
