"""Start-up with and without API keys, in process, and the ``jobsvc keys`` commands.

No test here binds anything but 127.0.0.1: the non-loopback cases are refused before any
socket is opened, and the --insecure-no-auth start on 0.0.0.0 goes through run_service's
real checks with hypercorn's bind swapped for 127.0.0.1:0.
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from jobsvc import cli, server
from jobsvc.auth import load_keys
from jobsvc.config import Settings
from jobsvc.errors import ConfigError
from jobsvc.server import Running, run_service

TOKEN = re.compile(r"jsk_(k_[0-9a-f]{16})_[0-9a-f]{64}")


@pytest.mark.parametrize("bind", ["0.0.0.0:3000", "[::]:3000", "192.168.1.5:3000", "myhost:3000", "[::ffff:10.0.0.1]:3000"])
def test_a_non_loopback_bind_without_keys_is_refused_with_one_line(bind: str, capsys: pytest.CaptureFixture[str]) -> None:
    """No keys, a non-loopback address: exit 2 and one line saying what to do; nothing opened."""
    assert cli.main(["serve", "--bind", bind, "--db", "memory:"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    [line] = captured.err.splitlines()
    assert line.startswith(f"jobsvc: error: refusing to serve {bind} without API keys")
    assert "--auth-file" in line and "--insecure-no-auth" in line and "127.0.0.1" in line


@pytest.mark.parametrize("bind", ["127.0.0.1:3000", "127.0.0.9:3000", "localhost:3000", "[::1]:3000", "[::ffff:127.0.0.1]:3000"])
def test_loopback_binds_need_no_keys(bind: str) -> None:
    Settings(bind=bind).check_exposure()


def test_keys_or_the_insecure_flag_allow_any_bind(tmp_path: Path) -> None:
    Settings(bind="0.0.0.0:3000", auth_file=str(tmp_path / "keys.toml")).check_exposure()
    Settings(bind="0.0.0.0:3000", insecure_no_auth=True).check_exposure()
    with pytest.raises(ConfigError, match="refusing to serve"):
        Settings.from_sources({"bind": "0.0.0.0:3000"}, {"JOBSVC_INSECURE_NO_AUTH": "0"}).check_exposure()
    Settings.from_sources({"bind": "0.0.0.0:3000"}, {"JOBSVC_INSECURE_NO_AUTH": "1"}).check_exposure()


async def test_insecure_no_auth_starts_on_a_wildcard_bind_and_warns(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, nursery: trio.Nursery
) -> None:
    """--insecure-no-auth with --bind 0.0.0.0: run_service starts (hypercorn's bind is swapped
    for 127.0.0.1:0 here), logs the warning, and serves without a key."""
    settings = Settings(bind="0.0.0.0:0", db="memory:", insecure_no_auth=True, workers=1, grace=0.1)
    real_config = server.hypercorn_config

    def loopback_config(s: Settings) -> Any:
        config = real_config(s)
        config.bind = ["127.0.0.1:0"]
        return config

    monkeypatch.setattr(server, "hypercorn_config", loopback_config)
    caplog.set_level(logging.INFO, logger="jobsvc")
    with trio.fail_after(20):
        running: Running = await nursery.start(partial(run_service, settings))
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert warnings == ["--insecure-no-auth: serving 0.0.0.0:0 without API keys; anyone who can reach it can submit, cancel and read jobs"]
        async with httpx.AsyncClient(base_url=running.url) as client:
            assert (await client.post("/jobs", json={"task": "noop"})).status_code == 202
            assert (await client.get("/jobs", headers={"Host": "evil.example"})).status_code == 421
        running.shutdown()


async def test_a_service_with_keys_refuses_without_one_and_serves_with_one(tmp_path: Path, nursery: trio.Nursery, capsys: pytest.CaptureFixture[str]) -> None:
    """run_service reads --auth-file at start: no key is 401, the key created by
    `jobsvc keys create` is served."""
    path = tmp_path / "keys.toml"
    assert cli.main(["keys", "create", "--scope", "submit,read", "--auth-file", str(path)]) == 0
    token = capsys.readouterr().out.strip()
    settings = Settings(bind="127.0.0.1:0", db="memory:", auth_file=str(path), workers=1, grace=0.1)
    with trio.fail_after(20):
        running: Running = await nursery.start(partial(run_service, settings))
        async with httpx.AsyncClient(base_url=running.url) as client:
            refused = await client.post("/jobs", json={"task": "noop"})
            assert (refused.status_code, refused.headers["www-authenticate"]) == (401, 'Bearer realm="jobsvc"')
            assert (await client.post("/jobs", json={"task": "noop"}, headers={"Authorization": f"Bearer {token}"})).status_code == 202
        running.shutdown()


def test_a_bad_keys_file_stops_the_start_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "keys.json"
    assert cli.main(["serve", "--bind", "127.0.0.1:0", "--db", "memory:", "--auth-file", str(path)]) == 2
    assert capsys.readouterr().err.strip().startswith(f"jobsvc: error: the keys file '{path}' does not exist")
    path.write_text('{"keys": [{"id": "k_0123456789abcdef"}]}')
    assert cli.main(["serve", "--bind", "127.0.0.1:0", "--db", "memory:", "--auth-file", str(path)]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert "has an invalid entry" in line


# -- jobsvc keys ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["keys.toml", "keys.json"])
def test_keys_create_list_revoke(tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str]) -> None:
    """create prints the key once, alone on stdout, and stores its hash in a private file;
    list shows everything but the key and its hash; revoke removes it."""
    path = str(tmp_path / name)
    argv = ["keys", "create", "--scope", "read,submit", "--tenant", "acme", "--name", "ci", "--rate", "5", "--max-pending", "10", "--auth-file", path]
    assert cli.main(argv) == 0
    out, err = capsys.readouterr()
    token = out.strip()
    match = TOKEN.fullmatch(token)
    assert match is not None and out == token + "\n"
    key_id = match[1]
    assert f"created key {key_id} (submit,read, tenant acme)" in err and "only time the key is shown" in err
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    text = Path(path).read_text()
    assert token not in text and token.rsplit("_", 1)[1] not in text
    [key] = load_keys(path)
    assert (key.id, key.scopes, key.tenant, key.name, key.rate, key.burst, key.max_pending) == (key_id, ("submit", "read"), "acme", "ci", 5.0, None, 10)

    assert cli.main(["keys", "create", "--scope", "metrics", "--auth-file", path]) == 0
    second = capsys.readouterr().out.strip()
    assert cli.main(["keys", "list", "--json", "--auth-file", path]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [k["id"] for k in listed] == [key_id, TOKEN.fullmatch(second)[1]]  # type: ignore[index]
    assert all("hash" not in k for k in listed) and listed[0]["scopes"] == ["submit", "read"]
    assert cli.main(["keys", "list", "--auth-file", path]) == 0
    table = capsys.readouterr().out
    assert key_id in table and "acme" in table and "rate=5, max_pending=10" in table and "sha256" not in table

    assert cli.main(["keys", "revoke", key_id, "--auth-file", path]) == 0
    assert f"revoked key {key_id} (ci)" in capsys.readouterr().err
    assert [k.id for k in load_keys(path)] == [TOKEN.fullmatch(second)[1]]  # type: ignore[index]
    assert cli.main(["keys", "revoke", key_id, "--auth-file", path]) == 1
    assert f"no key has the id '{key_id}'" in capsys.readouterr().err


def test_keys_commands_take_the_file_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["keys", "list"]) == 2
    assert "give --auth-file FILE or set JOBSVC_AUTH_FILE" in capsys.readouterr().err
    monkeypatch.setenv("JOBSVC_AUTH_FILE", str(tmp_path / "env.toml"))
    assert cli.main(["keys", "create", "--scope", "read"]) == 0
    assert (tmp_path / "env.toml").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--scope", "root"], "scopes are submit, read, admin, metrics"),
        (["--scope", "read", "--tenant", "a/b"], "a tenant is 1 to 64 letters"),
        (["--scope", "read", "--rate", "-1"], "requests per second"),
        (["--scope", "read", "--burst", "0"], "at least 1"),
        ([], "--scope"),
    ],
)
def test_keys_create_refuses_bad_arguments(tmp_path: Path, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        cli.main(["keys", "create", "--auth-file", str(tmp_path / "k.toml"), *argv])
    assert caught.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "k.toml").exists()
