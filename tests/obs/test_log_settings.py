"""--log-format / JOBSVC_LOG_FORMAT: parsed, validated, and used by ``jobsvc serve``."""

from __future__ import annotations

import pytest

from jobsvc import cli
from jobsvc.config import Settings
from jobsvc.errors import ConfigError


def test_log_format_from_flag_and_environment() -> None:
    assert Settings().log_format == "auto"
    assert Settings.from_sources({}, {"JOBSVC_LOG_FORMAT": "console"}).log_format == "console"
    assert Settings.from_sources({"log_format": "json"}, {"JOBSVC_LOG_FORMAT": "console"}).log_format == "json"
    with pytest.raises(ConfigError, match="log format must be auto, json or console, not 'xml'"):
        Settings.from_sources({}, {"JOBSVC_LOG_FORMAT": "xml"})


def test_cli_rejects_an_unknown_log_format(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["serve", "--log-format", "xml"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'xml'" in capsys.readouterr().err
