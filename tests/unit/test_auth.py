"""jobsvc.auth: keys, their file, authentication, limits and the token bucket (no HTTP)."""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

import pytest

from jobsvc import auth
from jobsvc.auth import OPEN, SCOPES, ApiKey, Authenticator, Limits, Principal, RateLimiter, new_key
from jobsvc.config import Settings
from jobsvc.errors import ConfigError

CREATED = "2026-01-01T00:00:00Z"


def test_a_new_key_is_random_prefixed_and_stored_as_its_hash_only() -> None:
    """jsk_<key id>_<256 random bits>; the ApiKey holds its SHA-256, never the key."""
    token, key = new_key(scopes=["read", "submit"], tenant="acme", name="ci", created=CREATED)
    match = re.fullmatch(r"jsk_(k_[0-9a-f]{16})_([0-9a-f]{64})", token)
    assert match is not None and match[1] == key.id
    assert key.hash == auth.digest(token) and token not in repr(key) and match[2] not in repr(key)
    assert key.scopes == ("submit", "read")  # in SCOPES order
    assert (key.tenant, key.name, key.created) == ("acme", "ci", CREATED)
    other, _ = new_key(scopes=["read"], created=CREATED)
    assert other != token


def test_authenticate_accepts_the_key_and_nothing_else() -> None:
    """The key authenticates as its principal; a changed secret, another key id, a
    malformed key, non-ASCII text and the hash itself do not (and never raise)."""
    token, key = new_key(scopes=["read"], tenant="acme", name="ci", created=CREATED)
    authenticator = Authenticator([key], path="keys.json")
    assert authenticator.authenticate(token) == Principal(key_id=key.id, name="ci", scopes=frozenset({"read"}), tenant="acme")
    flipped = token[:-1] + ("0" if token[-1] != "0" else "1")
    unknown_id = token.replace(key.id, "k_" + "0" * 16)
    for wrong in (flipped, unknown_id, token + "0", token.upper(), "", "jsk_", "Bearer " + token, "jsk_\u00e9\u2603", key.hash, "\x00" * 300):
        assert authenticator.authenticate(wrong) is None, wrong


def test_a_revoked_key_no_longer_authenticates_and_its_id_is_not_found() -> None:
    token, key = new_key(scopes=["read"], created=CREATED)
    authenticator = Authenticator([key], path="keys.json")
    assert authenticator.principal(key.id) is not None
    authenticator._set([])
    assert authenticator.authenticate(token) is None and authenticator.principal(key.id) is None


def test_enabled_follows_the_keys_file_not_the_number_of_keys() -> None:
    """No file: disabled (OPEN). A file with no keys left is still enabled: revoking the last
    key locks everyone out instead of opening the service."""
    assert not Authenticator().enabled
    assert Authenticator([], path="keys.json").enabled
    assert OPEN.scopes == frozenset(SCOPES) and OPEN.tenant is None


def test_limits_fall_back_to_the_defaults_one_by_one() -> None:
    _, plain = new_key(scopes=["read"], created=CREATED)
    _, tuned = new_key(scopes=["read"], created=CREATED, rate=2.5, max_pending=0)
    authenticator = Authenticator([plain, tuned], path="k.json", defaults=Limits(rate=10, burst=20, max_pending=100))
    assert authenticator.limits(plain.principal) == Limits(rate=10, burst=20, max_pending=100)
    assert authenticator.limits(tuned.principal) == Limits(rate=2.5, burst=20, max_pending=0)
    assert authenticator.limits(OPEN) == Limits()


@pytest.mark.parametrize("name", ["keys.json", "keys.toml"])
def test_the_keys_file_round_trips_and_is_private(tmp_path: Path, name: str) -> None:
    """save then load gives the same keys, in JSON or TOML by the extension; the file is
    readable by its owner only and holds no key."""
    path = str(tmp_path / name)
    made = [new_key(scopes=["submit", "read"], tenant="acme", name='quote " and \\ back', created=CREATED, rate=1.5, burst=3, max_pending=7),
            new_key(scopes=["metrics"], created=CREATED)]  # fmt: skip
    auth.save_keys(path, [key for _, key in made])
    assert auth.load_keys(path) == [key for _, key in made]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    text = Path(path).read_text()
    for token, _ in made:
        assert token not in text and token.rsplit("_", 1)[1] not in text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "is not valid JSON"),
        ('{"keys": {}}', "must hold one list, 'keys'"),
        ('{"keys": [], "other": 1}', "must hold one list, 'keys'"),
        ('{"keys": [{"id": "k_0123456789abcdef"}]}', "has an invalid entry"),
        ('{"keys": [{"id": "nope", "hash": "sha256:' + "0" * 64 + '", "scopes": ["read"]}]}', "id is not a key id"),
        ('{"keys": [{"id": "k_0123456789abcdef", "hash": "md5:00", "scopes": ["read"]}]}', "hash is not sha256"),
        ('{"keys": [{"id": "k_0123456789abcdef", "hash": "sha256:' + "0" * 64 + '", "scopes": ["root"]}]}', "scopes are submit, read"),
        ('{"keys": [{"id": "k_0123456789abcdef", "hash": "sha256:' + "0" * 64 + '", "scopes": ["read"], "extra": 1}]}', "extra"),
        ('{"keys": [{"id": "k_0123456789abcdef", "hash": "sha256:' + "0" * 64 + '", "scopes": ["read"], "tenant": "a/b"}]}', "tenant"),
        ('{"keys": [{"id": "k_0123456789abcdef", "hash": "sha256:' + "0" * 64 + '", "scopes": ["read"], "rate": -1}]}', "rate must be"),
    ],
)
def test_a_bad_keys_file_is_one_clear_error(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "keys.json"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(message)):
        auth.load_keys(str(path))


def test_a_key_pasted_as_a_hash_is_not_repeated_in_the_error(tmp_path: Path) -> None:
    token, _ = new_key(scopes=["read"], created=CREATED)
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"keys": [{"id": "k_0123456789abcdef", "hash": token, "scopes": ["read"]}]}))
    with pytest.raises(ConfigError, match="hash is not sha256") as caught:
        auth.load_keys(str(path))
    assert token not in str(caught.value) and token[20:] not in str(caught.value)


def test_a_key_id_listed_twice_is_an_error(tmp_path: Path) -> None:
    _, key = new_key(scopes=["read"], created=CREATED)
    path = str(tmp_path / "keys.json")
    auth.save_keys(path, [key, key])
    with pytest.raises(ConfigError, match=f"lists the key id {key.id} twice"):
        auth.load_keys(path)


def test_a_missing_keys_file_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"does not exist; create a key with `jobsvc keys create --auth-file"):
        Authenticator.from_settings(Settings(auth_file=str(tmp_path / "none.toml")))


def test_reload_takes_new_keys_and_keeps_the_old_ones_when_the_file_is_broken(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = str(tmp_path / "keys.toml")
    first, key1 = new_key(scopes=["read"], created=CREATED)
    second, key2 = new_key(scopes=["read"], created=CREATED)
    auth.save_keys(path, [key1])
    authenticator = Authenticator.from_settings(Settings(auth_file=path))
    auth.save_keys(path, [key2])
    assert authenticator.reload()
    assert authenticator.authenticate(first) is None and authenticator.authenticate(second) is not None
    Path(path).write_text("[[keys]]\nid = 'broken")
    assert not authenticator.reload()
    assert authenticator.authenticate(second) is not None
    assert "keys file not reloaded" in caplog.text
    assert second not in caplog.text and key2.hash not in caplog.text


def test_updating_keys_creates_locks_and_saves_only_changes(tmp_path: Path) -> None:
    path = str(tmp_path / "keys.json")
    with pytest.raises(ConfigError, match="does not exist"), auth.updating_keys(path):
        pass
    _, key = new_key(scopes=["read"], created=CREATED)
    with auth.updating_keys(path, create=True) as keys:
        keys.append(key)
    assert json.loads(Path(path).read_text())["keys"][0]["id"] == key.id
    before = os.stat(path).st_mtime_ns, os.stat(path).st_ino
    with auth.updating_keys(path) as keys:
        assert keys == [key]
    assert (os.stat(path).st_mtime_ns, os.stat(path).st_ino) == before  # not rewritten


def test_the_token_bucket_at_exact_times() -> None:
    """rate 2/s, burst 3: three at once, then one every 0.5 s; the wait says exactly when."""
    limiter = RateLimiter()
    limits = Limits(rate=2, burst=3)
    assert [limiter.take("k", limits, now=0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("k", limits, now=0.0) == 0.5
    assert limiter.take("k", limits, now=0.25) == 0.25
    assert limiter.take("k", limits, now=0.5) == 0.0
    assert limiter.take("k", limits, now=0.5) == 0.5
    assert [limiter.take("k", limits, now=100.0) for _ in range(4)] == [0.0, 0.0, 0.0, 0.5]  # refills to the burst only
    assert limiter.take("other", limits, now=100.0) == 0.0  # one bucket per key
    assert limiter.take("k", Limits(rate=0), now=100.0) == 0.0  # rate 0: no limit


def test_parse_scopes() -> None:
    assert auth.parse_scopes("submit, read") == {"submit", "read"}
    for bad in ("", "root", "read,root", " , "):
        with pytest.raises(ValueError, match="scopes are submit, read, admin, metrics"):
            auth.parse_scopes(bad)


def test_api_key_refuses_bad_fields() -> None:
    digest = "sha256:" + "0" * 64
    with pytest.raises(ValueError, match="burst must be at least 1"):
        ApiKey(id="k_0123456789abcdef", hash=digest, scopes=("read",), burst=0)
    assert auth.is_tenant("acme-1.eu_west") and not auth.is_tenant("-acme") and not auth.is_tenant("a" * 65)
