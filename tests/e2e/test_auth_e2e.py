"""Access control on real ``jobsvc`` processes: keys made by ``jobsvc keys``, ``jobsvc serve
--auth-file`` answering curl-style requests and the command-line client, a revocation picked
up on SIGHUP, and a log that never holds a key. Everything binds 127.0.0.1."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.e2e


def jobsvc(*args: str) -> list[str]:
    return [sys.executable, "-m", "jobsvc", *args]


def create_key(servers: Any, keys: Path, *flags: str) -> str:
    result = servers.run(jobsvc("keys", "create", "--auth-file", str(keys), *flags), env=servers.clean_env())
    assert result.returncode == 0, result
    return str(result.stdout.strip())


def test_keys_serve_revoke_and_reload(servers: Any, db_path: Path, tmp_path: Path) -> None:
    keys = tmp_path / "keys.toml"
    submitter = create_key(servers, keys, "--scope", "submit,read", "--tenant", "acme", "--name", "acme-ci")
    server = servers.start(db_path, "--auth-file", str(keys))
    with server.client() as http:
        refused = http.post("/jobs", json={"task": "echo", "payload": {"n": 1}})
        assert (refused.status_code, refused.headers["content-type"]) == (401, "application/problem+json")
        assert refused.headers["www-authenticate"] == 'Bearer realm="jobsvc"'
        assert http.get("/health").status_code == 200  # probes need no key
        assert http.get("/metrics", headers={"Authorization": f"Bearer {submitter}"}).status_code == 403
        accepted = http.post("/jobs", json={"task": "echo", "payload": {"n": 1}}, headers={"Authorization": f"Bearer {submitter}"})
        assert accepted.status_code == 202 and accepted.json()["tenant"] == "acme"

    # the command-line client, with the key from the environment (never a flag)
    env = servers.clean_env(JOBSVC_API_KEY=submitter, JOBSVC_URL=server.url)
    result = servers.run(jobsvc("submit", "echo", "--payload", '{"n": 2}', "--wait", "10", "--json"), env=env)
    assert result.returncode == 0, result
    assert json.loads(result.stdout)["tenant"] == "acme"
    anonymous = servers.run(jobsvc("list", "--url", server.url), env=servers.clean_env())
    assert anonymous.returncode == 7 and "HTTP 401 unauthorized" in anonymous.stderr, anonymous

    # revoke, add another key, SIGHUP: the old key is refused, the new one served
    key_id = submitter.split("_")[1] + "_" + submitter.split("_")[2]
    revoked = servers.run(jobsvc("keys", "revoke", key_id, "--auth-file", str(keys)), env=servers.clean_env())
    assert revoked.returncode == 0, revoked
    reader = create_key(servers, keys, "--scope", "read")
    server.send(signal.SIGHUP)
    with server.client() as http:
        servers.wait_until(
            lambda: http.get("/jobs", headers={"Authorization": f"Bearer {reader}"}).status_code == 200,
            timeout=10,
            what="the new key after SIGHUP",
        )
        assert http.get("/jobs", headers={"Authorization": f"Bearer {submitter}"}).status_code == 401
        listed = http.get("/jobs", headers={"Authorization": f"Bearer {reader}"}).json()["jobs"]
        assert {j["tenant"] for j in listed} == {"acme"} and len(listed) == 2  # no tenant: sees every job
    server.send(signal.SIGTERM)
    assert server.wait_exit(20) == 0
    log = server.log()
    assert "keys file reloaded: 1 keys" in log and key_id in log
    for token in (submitter, reader):
        assert token.rsplit("_", 1)[1] not in log


def test_insecure_no_auth_warns_at_start(servers: Any, db_path: Path) -> None:
    server = servers.start(db_path, "--insecure-no-auth", "--log-format", "json")
    with server.client() as http:
        assert http.post("/jobs", json={"task": "echo", "payload": 1}).status_code == 202
    server.send(signal.SIGTERM)
    assert server.wait_exit(20) == 0
    warnings = [json.loads(line) for line in server.log().splitlines() if '"warning"' in line]
    assert any("--insecure-no-auth: serving 127.0.0.1:0 without API keys" in w["event"] for w in warnings), server.log()


def test_a_non_loopback_bind_without_keys_exits_2_before_opening_anything(servers: Any, db_path: Path) -> None:
    argv = servers.serve_argv(db_path)
    argv[argv.index("127.0.0.1:0")] = "0.0.0.0:0"
    result = servers.run(argv, env=servers.clean_env())
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("jobsvc: error: refusing to serve 0.0.0.0:0 without API keys") and result.stderr.count("\n") == 1
    assert not db_path.exists()
