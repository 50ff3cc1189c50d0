"""deploy/jobsvc.service: SIGTERM to jobsvc itself, a stop timeout above the drain delay
plus the grace period, restarts on failure (not on a configuration error), hardening; and
its ExecStart parses with jobsvc's own CLI parser."""

from __future__ import annotations

import shlex
from collections import defaultdict

import pytest
from deploy_support import DEPLOY

from jobsvc import cli
from jobsvc.config import Settings

pytestmark = pytest.mark.deploy


def _unit() -> dict[str, dict[str, list[str]]]:
    """section -> key -> values (systemd allows a key more than once)."""
    sections: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    section = ""
    for line in (DEPLOY / "jobsvc.service").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        sections[section][key.strip()].append(value.strip())
    return sections


def test_stop_restart_and_hardening() -> None:
    service = _unit()["Service"]
    argv = shlex.split(service["ExecStart"][0])
    assert argv[0].endswith("/jobsvc") and argv[1] == "serve"
    args = cli._parser().parse_args(argv[1:])
    settings = Settings.from_sources({k: v for k, v in vars(args).items() if k != "command"}, {})
    assert service["KillSignal"] == ["SIGTERM"]
    assert float(service["TimeoutStopSec"][0]) > settings.drain_delay + settings.grace + 2
    assert service["Restart"] == ["on-failure"] and service["RestartPreventExitStatus"] == ["2"]
    hardening = {
        "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
        "PrivateDevices": "yes", "DynamicUser": "yes", "CapabilityBoundingSet": "", "RestrictNamespaces": "yes",
    }  # fmt: skip
    for key, value in hardening.items():
        assert service[key] == [value], key
    assert settings.database.path.startswith("/var/lib/" + service["StateDirectory"][0] + "/")
    assert not service["WorkingDirectory"][0].startswith("/var/lib/"), "task modules are imported from it: not writable"
    assert _unit()["Install"]["WantedBy"] == ["multi-user.target"]
