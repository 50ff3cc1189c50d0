"""deploy/Dockerfile: hadolint is clean; the final stage runs jobsvc as PID 1 (exec form)
as a numeric non-root user with the SQLite file on a volume; and its command line and
health check are run for real: the image's ENTRYPOINT + CMD and ENV, parsed by jobsvc's own
CLI parser, start a jobsvc whose health check passes, which drains on SIGTERM and exits 0.

Only two things change from the image's command line: the address (this machine serves
127.0.0.1 only: port 0 instead of 0.0.0.0:3000) and the volume's path (a temporary folder).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from deploy_support import DEPLOY, REPO, Instruction, dockerfile, env_of, run_tool
from jobsvc_processes import Server, clean_env

from jobsvc import cli
from jobsvc.config import Settings

pytestmark = pytest.mark.deploy

DOCKERFILE = DEPLOY / "Dockerfile"
BIN = Path(sys.executable).parent


def _final_stage() -> list[Instruction]:
    return dockerfile(DOCKERFILE)[-1]


def _one(stage: list[Instruction], keyword: str) -> Instruction:
    [found] = [i for i in stage if i.keyword == keyword]
    return found


def _image_command() -> tuple[list[str], dict[str, str]]:
    stage = _final_stage()
    return _one(stage, "ENTRYPOINT").exec_form() + _one(stage, "CMD").exec_form(), env_of(stage)


def test_hadolint_finds_nothing() -> None:
    result = run_tool("hadolint", "--no-color", str(DOCKERFILE))
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_the_image_runs_jobsvc_as_pid_1_as_a_non_root_user() -> None:
    """Multi-stage; exec-form ENTRYPOINT (jobsvc gets the signals itself); numeric non-root
    USER; the SQLite database on the VOLUME; SIGTERM as the stop signal; what COPY takes exists."""
    stages = dockerfile(DOCKERFILE)
    assert len(stages) >= 2, "multi-stage: build, then run"
    stage = stages[-1]
    assert _one(stage, "ENTRYPOINT").rest.startswith("["), "exec form, not shell form"
    assert _one(stage, "CMD").rest.startswith("[")
    user = _one(stage, "USER").rest.split(":")[0]
    assert user.isdigit() and int(user) != 0
    assert _one(stage, "STOPSIGNAL").rest == "SIGTERM"
    [volume] = _one(stage, "VOLUME").exec_form()
    env = env_of(stage)
    assert Settings.from_sources({}, {k: v for k, v in env.items() if k.startswith("JOBSVC_")}).database.path.startswith(volume + "/")
    for ins in stages[0]:
        if ins.keyword == "COPY":
            for source in ins.rest.split()[:-1]:
                assert (REPO / source).exists(), f"COPY {source}: not in the repository"


def test_the_image_command_line_parses_with_jobsvc_own_parser() -> None:
    """ENTRYPOINT + CMD is `jobsvc serve --bind 0.0.0.0:3000`, valid for jobsvc's parser and
    settings (with the image's JOBSVC_* variables); the health check asks /health on that port."""
    argv, env = _image_command()
    assert Path(argv[0]).name == "jobsvc" and argv[1] == "serve"
    args = cli._parser().parse_args(argv[1:])
    flags = {k: v for k, v in vars(args).items() if k != "command"}
    settings = Settings.from_sources(flags, {k: v for k, v in env.items() if k.startswith("JOBSVC_")})
    assert settings.bind == "0.0.0.0:3000"
    assert _one(_final_stage(), "EXPOSE").rest == "3000"
    health = _one(_final_stage(), "HEALTHCHECK")
    check = health.exec_form()
    assert check[0] == str(Path(argv[0]).parent / "python"), "the health check runs the image's own python"
    assert "http://127.0.0.1:3000/health" in check[-1]


def _run_health_check(port: int) -> int:
    check = _one(_final_stage(), "HEALTHCHECK").exec_form()
    argv = [sys.executable, *check[1:-1], check[-1].replace("127.0.0.1:3000", f"127.0.0.1:{port}")]
    return subprocess.run(argv, capture_output=True, timeout=20, check=False).returncode


def test_the_image_command_line_serves_passes_its_health_check_and_drains(tmp_path: Path) -> None:
    """Run ENTRYPOINT + CMD with the image's ENV (bind and volume path swapped, see the module
    docstring): it serves, the HEALTHCHECK command passes, SIGTERM makes it exit 0 within
    JOBSVC_GRACE, and the health check fails once it is gone."""
    argv, image_env = _image_command()
    [volume] = _one(_final_stage(), "VOLUME").exec_form()
    argv = [str(BIN / "jobsvc"), *argv[1:]]
    argv[argv.index("0.0.0.0:3000")] = "127.0.0.1:0"
    env = clean_env(**{k: v.replace(volume, str(tmp_path)) for k, v in image_env.items() if k.startswith(("JOBSVC_", "PYTHON"))})
    workdir = tmp_path / "app"
    workdir.mkdir()
    stderr_path = tmp_path / "stderr"
    with open(stderr_path, "wb") as stderr:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr, env=env, cwd=workdir)
    server = Server(proc, stderr_path, argv)
    try:
        url = server.wait_listening()
        port = int(url.rsplit(":", 1)[1])
        assert _run_health_check(port) == 0, server.log()
        assert (tmp_path / "jobsvc.db").exists(), "the database is on the volume"
        os.kill(proc.pid, signal.SIGTERM)
        assert server.wait_exit(float(image_env["JOBSVC_GRACE"]) + 5) == 0, server.log()
        assert _run_health_check(port) != 0
    finally:
        server.stop()
