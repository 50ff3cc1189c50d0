"""``jobsvc serve --help``: every setting has a flag, and the epilog lists every JOBSVC_*
variable (generated from Settings, so a new setting shows up by itself)."""

from __future__ import annotations

import argparse
import subprocess
import sys

import attrs
import pytest

from jobsvc import cli
from jobsvc.config import OTHER_ENV, Settings


def _serve_parser() -> argparse.ArgumentParser:
    parser = cli._parser()
    [sub] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return sub.choices["serve"]


def test_every_setting_has_a_flag_and_a_variable_in_the_help(capsys: pytest.CaptureFixture[str]) -> None:
    serve = _serve_parser()
    flags = {option for action in serve._actions for option in action.option_strings}
    with pytest.raises(SystemExit):
        cli.main(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps the lines
    for field in attrs.fields(Settings):
        flag = "--" + field.name.replace("_", "-")
        assert flag in flags, f"setting {field.name} has no flag"
        assert f"JOBSVC_{field.name.upper()}" in text
    for variable in OTHER_ENV:
        assert variable in text
    assert "--drain-delay" in text and "load balancer" in text
    assert "current directory" in text, "the help says where --tasks modules are imported from"


def test_the_service_commands_do_not_import_the_client_commands() -> None:
    """`jobsvc serve` starts without httpx, rich's tables and the client modules (they
    cost a tenth of a second of every start-up); the client commands still parse."""
    code = (
        "import sys\n"
        "from jobsvc import cli\n"
        "args = cli._parser(clients=False).parse_args(['serve', '--workers', '3'])\n"
        "assert args.workers == 3\n"
        "import jobsvc.server\n"
        "for name in ('httpx', 'jobsvc.client', 'jobsvc.clientcli', 'jobsvc.keyscli'):\n"
        "    assert name not in sys.modules, name\n"
        "try:\n"
        "    cli.main(['serve', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "assert 'jobsvc.clientcli' not in sys.modules\n"
        "args = cli._parser().parse_args(['stats', '--json'])\n"
        "assert args.command == 'stats' and args.json\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
