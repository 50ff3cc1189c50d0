"""jobsvc.codec: JSON parsing limits, strict structuring with paths, fingerprints, the public view."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jobsvc import codec
from jobsvc.codec import JobRequest, SeedRequest
from jobsvc.errors import BadRequest, InvalidJob
from jobsvc.models import ErrorRecord, Job, JobState


def invalid(value: Any, **kw: Any) -> list[str]:
    with pytest.raises(InvalidJob) as info:
        codec.structure_request(value, **kw)
    return info.value.errors


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


# -- parse_json ----------------------------------------------------------------------


def test_parse_json_accepts_plain_json() -> None:
    """Plain JSON objects, arrays and scalars parse to the obvious Python values."""
    assert codec.parse_json(b' {"a": [1, 2.5, "x", null, true]} ') == {"a": [1, 2.5, "x", None, True]}
    assert codec.parse_json(b"3") == 3
    assert codec.parse_json('"\u00e9"'.encode()) == "\u00e9"


def test_parse_json_depth_limit_is_32() -> None:
    """32 levels of nesting parse; 33 (and 100, 100000) are BadRequest with the limit in the message."""
    assert codec.MAX_JSON_DEPTH == 32
    assert codec.parse_json(nested(32)) is not None
    assert codec.parse_json(b'{"a": ' * 31 + b"{}" + b"}" * 31) is not None
    for depth in (33, 100, 100_000):
        with pytest.raises(BadRequest, match=r"^the JSON body is nested too deeply \(the limit is 32 levels\)$"):
            codec.parse_json(nested(depth))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "the request body is empty; send a JSON object"),
        (b" \r\n", "the request body is empty; send a JSON object"),
        (b"\xff", "the request body is not valid UTF-8"),
        (b'"\xed\xa0\x80"', "the request body is not valid UTF-8"),  # an encoded surrogate
        (b"{", "the request body is not valid JSON: Expecting property name enclosed in double quotes at line 1 column 2"),
        (b'{"a": 1,}', "the request body is not valid JSON: Expecting property name enclosed in double quotes at line 1 column 9"),
        (b"[1] [2]", "the request body is not valid JSON: Extra data at line 1 column 5"),
        (b"NaN", "the request body is not acceptable JSON: NaN is not valid JSON"),
        (b"[Infinity]", "the request body is not acceptable JSON: Infinity is not valid JSON"),
        (b'{"x": -Infinity}', "the request body is not acceptable JSON: -Infinity is not valid JSON"),
        (b'{"a": 1, "a": 1}', "the request body is not acceptable JSON: duplicate key 'a'"),
        (b'[{"b": {"c": 1, "c": 2}}]', "the request body is not acceptable JSON: duplicate key 'c'"),
    ],
)
def test_parse_json_rejects_with_a_clear_message(body: bytes, message: str) -> None:
    """Empty, non-UTF-8, malformed, NaN/Infinity and duplicate-key bodies are BadRequest (400)."""
    with pytest.raises(BadRequest) as info:
        codec.parse_json(body)
    assert str(info.value) == message
    assert info.value.http_status == 400


def test_parse_json_integer_digit_limit() -> None:
    """4300-digit integers parse; 5000 digits are BadRequest, not a ValueError escaping."""
    assert codec.parse_json(b"9" * 4300) == int("9" * 4300)
    with pytest.raises(BadRequest, match="^the request body is not acceptable JSON: Exceeds the limit"):
        codec.parse_json(b"[" + b"9" * 5000 + b"]")


def test_parse_json_rejects_numbers_that_overflow_to_infinity() -> None:
    """1e400 (inf as a float) is refused like Infinity."""
    with pytest.raises(BadRequest, match=r"^the request body is not acceptable JSON: the number -1e400 is out of range$"):
        codec.parse_json(b"[-1e400]")
    assert codec.parse_json(b"[1e308, 5e-324]") == [1e308, 5e-324]


def test_parse_json_rejects_lone_surrogate_escapes() -> None:
    """"\\ud800" (a lone surrogate) is refused: it cannot be stored or rendered as UTF-8."""
    for body in (b'"\\ud800"', b'{"k\\udfff": 1}', b'["a\\ude00b"]'):
        with pytest.raises(BadRequest, match=r"unpaired surrogate"):
            codec.parse_json(body)


def test_parse_json_keeps_valid_surrogate_pairs() -> None:
    """A properly paired surrogate escape is one astral character."""
    assert codec.parse_json(b'"\\ud83d\\ude00"') == "\U0001f600"


# -- strict primitives -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "type_"),
    [("3", int), (True, int), (3.0, int), (1, str), (None, str), ("1.5", float), (True, float), (float("nan"), float),
     (float("inf"), float), (1, bool), ("true", bool)],
)
def test_converter_is_strict(value: Any, type_: type) -> None:
    """"3" is not an int, true is not an int or a float, 1 is not a string or a bool; NaN/inf are not numbers."""
    with pytest.raises(InvalidJob) as info:
        codec.structure(value, type_, path="$.x")
    assert [e.rsplit(" @ ", 1)[1] for e in info.value.errors] == ["$.x"]


@pytest.mark.parametrize(("value", "type_", "expected"), [(3, int, 3), (3, float, 3.0), (2.5, float, 2.5), ("s", str, "s"), (False, bool, False)])
def test_converter_accepts_exact_types(value: Any, type_: type, expected: Any) -> None:
    """Exact JSON types pass; an integer is acceptable as a float."""
    result = codec.structure(value, type_)
    assert result == expected and type(result) is type_


def test_make_converter_is_a_fresh_converter() -> None:
    """make_converter builds a new strict converter (not cattrs' global one)."""
    import cattrs

    conv = codec.make_converter()
    assert conv is not codec.converter and conv is not cattrs.global_converter
    with pytest.raises(Exception):  # noqa: B017 - any cattrs error
        conv.structure("3", int)
    assert cattrs.global_converter.structure("3", int) == 3  # the global one is untouched


# -- structure_request ---------------------------------------------------------------


def test_structure_request_minimal_and_full() -> None:
    """A body structures to a JobRequest with defaults; job_id is the id as a string."""
    assert codec.structure_request({"task": "noop"}) == JobRequest(task="noop")
    req = codec.structure_request(
        {"task": "t", "payload": {"a": 1}, "id": 12, "max_attempts": 3, "run_at": "2030-01-01T00:00:00Z", "priority": -5, "timeout": 2}
    )
    assert req == JobRequest(task="t", payload={"a": 1}, id=12, max_attempts=3, run_at="2030-01-01T00:00:00Z", priority=-5, timeout=2.0)
    assert req.job_id == "12"
    assert JobRequest(task="t").job_id is None


@pytest.mark.parametrize(
    ("value", "errors"),
    [
        ({}, ["required field missing @ $.task"]),
        ({"task": "t", "extra": 1, "more": 2}, ["extra fields found (extra, more) @ $"]),
        ({"task": "t", "max_attempts": "3"}, ["invalid value for type, expected int | None @ $.max_attempts"]),
        ({"task": "t", "priority": True}, ["invalid value for type, expected int @ $.priority"]),
        ({"task": 1, "priority": "x"}, ["invalid value for type, expected str @ $.task", "invalid value for type, expected int @ $.priority"]),
        ({"task": "t", "timeout": 0}, ["timeout must be between 0.001 and 86400, not 0.0 @ $.timeout"]),
        ({"task": "t", "delay": -1}, ["delay must be between 0 and 3.16224e+07, not -1.0 @ $.delay"]),
        ({"task": "t", "priority": 1001}, ["priority must be between -1000 and 1000, not 1001 @ $.priority"]),
        ({"task": "t", "max_attempts": 1001}, ["max_attempts must be between 1 and 1000, not 1001 @ $.max_attempts"]),
        ({"task": "t", "id": "a" * 129}, ["a job id is 1 to 128 characters: letters, digits and . _ : @ + = -, starting with a letter or digit @ $.id"]),
        ({"task": "t", "id": "has space"}, ["a job id is 1 to 128 characters: letters, digits and . _ : @ + = -, starting with a letter or digit @ $.id"]),
        ({"task": "t", "run_at": "tomorrow"}, ["run_at must be an ISO 8601 time such as 2026-01-31T12:00:00Z, not 'tomorrow' @ $.run_at"]),
        ({"task": "", "id": -3}, ["task must not be empty @ $.task", "a numeric job id must not be negative @ $.id"]),
        ({"task": "t", "id": True}, ["a job id is a string or a non-negative integer, not a boolean @ $.id"]),
        ({"task": "t", "id": 10**128}, ["a job id has at most 128 characters @ $.id"]),
        (None, ["expected a JSON object, got null @ $"]),
        ([], ["expected a JSON object, got an array @ $"]),
        (True, ["expected a JSON object, got a boolean @ $"]),
        (1.5, ["expected a JSON object, got a number @ $"]),
    ],
)
def test_structure_request_errors_name_every_problem_with_its_path(value: Any, errors: list[str]) -> None:
    """structure_request raises InvalidJob listing each problem as '<message> @ <path>'."""
    assert invalid(value) == errors


def test_structure_request_prefixes_a_given_path() -> None:
    """With path='$.jobs[3]' every message is under that path (batch items)."""
    assert invalid({"task": "", "x": 1}, path="$.jobs[3]") == ["extra fields found (x) @ $.jobs[3]"]
    assert invalid({"task": "", "delay": -1}, path="$.jobs[3]") == [
        "task must not be empty @ $.jobs[3].task",
        "delay must be between 0 and 3.16224e+07, not -1.0 @ $.jobs[3].delay",
    ]


def test_attrs_validator_errors_are_reported_at_the_field_path() -> None:
    """A payload attrs validator (ge/le) failure is reported at the field's own path."""
    from jobsvc.builtin import SleepPayload

    with pytest.raises(InvalidJob) as info:
        codec.structure({"seconds": -1}, SleepPayload, path="$.jobs[2].payload")
    assert info.value.errors == ["seconds must be >= 0: -1.0 @ $.jobs[2].payload.seconds"]
    assert codec.structure({"seconds": 86400}, SleepPayload) == SleepPayload(seconds=86400.0)


def test_seed_request_maps_task_type_and_reports_it_by_name() -> None:
    """seed=True reads {"id", "task_type", "payload"} and reports problems at $.task_type."""
    req = codec.structure_request({"id": 1, "task_type": "email", "payload": "hi"}, seed=True)
    assert req == JobRequest(task="email", payload="hi", id=1)
    assert SeedRequest(task_type="x").to_request() == JobRequest(task="x")
    assert invalid({"task_type": ""}, seed=True) == ["task must not be empty @ $.task_type"]
    assert invalid({"task": "email"}, seed=True) == ["required field missing @ $.task_type", "extra fields found (task) @ $"]


def test_parse_time() -> None:
    """run_at is ISO 8601 with a zone; Z means UTC; no zone is an error."""
    assert codec.parse_time("1970-01-01T00:00:10Z") == 10.0
    assert codec.parse_time("1970-01-01T01:00:00+01:00") == 0.0
    with pytest.raises(ValueError, match="must carry a time zone"):
        codec.parse_time("1970-01-01T00:00:00")


def test_run_at_outside_the_utc_range_is_a_problem() -> None:
    """A run_at whose UTC time falls outside years 1..9999 is reported at $.run_at."""
    assert invalid({"task": "t", "run_at": "0001-01-01T00:00:00+14:00"}) == [
        "run_at must be between 1970-01-01 and 9999-12-31 UTC, not '0001-01-01T00:00:00+14:00' @ $.run_at"
    ]
    assert codec.parse_time("9999-12-31T23:59:59Z") == codec.MAX_TIMESTAMP


# -- fingerprint ---------------------------------------------------------------------


def test_fingerprint_is_stable_and_ignores_key_order_and_id() -> None:
    """Same request -> same sha256 hex; key order and the job id do not matter; any field change does."""
    a = codec.structure_request(json.loads('{"task": "t", "payload": {"x": 1, "y": [1, 2]}, "priority": 2}'))
    b = codec.structure_request(json.loads('{"priority": 2, "payload": {"y": [1, 2], "x": 1}, "task": "t", "id": "other"}'))
    assert codec.fingerprint(a) == codec.fingerprint(b)
    assert len(codec.fingerprint(a)) == 64 and int(codec.fingerprint(a), 16) >= 0
    assert codec.fingerprint(a) == codec.fingerprint(attrs.evolve(a))
    for change in ({"task": "u"}, {"payload": {"x": 2, "y": [1, 2]}}, {"priority": 3}, {"max_attempts": 2}, {"delay": 1.0}, {"timeout": 1.0}, {"run_at": "2030-01-01T00:00:00Z"}):
        assert codec.fingerprint(attrs.evolve(a, **change)) != codec.fingerprint(a), change


def test_fingerprint_is_a_known_value() -> None:
    """The fingerprint is sha256 of the canonical JSON (sorted keys, compact): pinned so stores stay compatible."""
    import hashlib

    canonical = '{"delay":null,"max_attempts":null,"payload":null,"priority":0,"run_at":null,"task":"noop","timeout":null}'
    assert codec.fingerprint(JobRequest(task="noop")) == hashlib.sha256(canonical.encode()).hexdigest()


@settings(database=None)
@given(payload=st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5), max_size=6), data=st.data())
def test_fingerprint_ignores_key_order_for_any_payload(payload: dict[str, Any], data: st.DataObject) -> None:
    """Shuffling the payload's keys never changes the fingerprint."""
    keys = data.draw(st.permutations(list(payload)))
    shuffled = {k: payload[k] for k in keys}
    assert codec.fingerprint(JobRequest(task="t", payload=payload)) == codec.fingerprint(JobRequest(task="t", payload=shuffled))


# -- the public view -----------------------------------------------------------------

PUBLIC_KEYS = {
    "id", "task", "state", "payload", "priority", "attempts", "max_attempts", "rescues", "timeout", "run_at",
    "created_at", "updated_at", "finished_at", "result", "errors", "idempotency_key", "cancel_requested", "tenant",
}


def test_job_to_json_is_an_allow_list() -> None:
    """job_to_json shows exactly the public fields: no lease owner/token/expiry, fingerprint or seq."""
    job = Job(
        id="j1", task="t", payload={"p": 1}, state=JobState.RUNNING, priority=4, attempts=2, max_attempts=5, rescues=1,
        timeout=9.0, run_at=10.0, created_at=0.0, updated_at=11.5, result=None,
        errors=(ErrorRecord(attempt=1, at=5.25, type="Boom", message="bad"),), idempotency_key="k",
        fingerprint="secret-fingerprint", lease_owner="host:123:abc", lease_token=7, lease_expires_at=40.0, seq=99,
    )
    out = codec.job_to_json(job)
    assert set(out) == PUBLIC_KEYS
    assert out == {
        "id": "j1", "task": "t", "state": "running", "payload": {"p": 1}, "priority": 4, "attempts": 2, "max_attempts": 5,
        "rescues": 1, "timeout": 9.0, "run_at": "1970-01-01T00:00:10Z", "created_at": "1970-01-01T00:00:00Z",
        "updated_at": "1970-01-01T00:00:11.500000Z", "finished_at": None, "result": None,
        "errors": [{"attempt": 1, "at": "1970-01-01T00:00:05.250000Z", "type": "Boom", "message": "bad"}],
        "idempotency_key": "k", "cancel_requested": False, "tenant": None,
    }
    text = json.dumps(out)
    for secret in ("secret-fingerprint", "host:123:abc", "lease"):
        assert secret not in text


@pytest.mark.parametrize(
    ("ts", "expected"),
    [(None, None), (0.0, "1970-01-01T00:00:00Z"), (1.5, "1970-01-01T00:00:01.500000Z"), (2**30, "2004-01-10T13:37:04Z"),
     (1769860800.0, "2026-01-31T12:00:00Z")],
)
def test_iso_is_utc_with_a_z(ts: float | None, expected: str | None) -> None:
    """iso() renders epoch seconds as ISO 8601 UTC with a trailing Z (None stays None)."""
    assert codec.iso(ts) == expected
    if ts is not None:
        assert codec.parse_time(expected) == ts  # type: ignore[arg-type]


def test_check_json_result() -> None:
    """A handler result must be JSON: NaN and arbitrary objects raise; JSON values pass through."""
    assert codec.check_json_result({"a": [1, None]}) == {"a": [1, None]}
    with pytest.raises(ValueError):
        codec.check_json_result(float("nan"))
    with pytest.raises(TypeError):
        codec.check_json_result(object())


# -- round trip ----------------------------------------------------------------------

json_scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=10)
json_values = st.recursive(json_scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c, max_size=4), max_leaves=15)
ids = st.none() | st.integers(0, 2**63) | st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:@+=-]{0,127}", fullmatch=True)
run_ats = st.datetimes(
    min_value=dt.datetime(1971, 1, 1), max_value=dt.datetime(2200, 1, 1),  # noqa: DTZ001 - hypothesis bounds are naive
    timezones=st.timezones(),
).map(lambda d: d.isoformat())


@st.composite
def job_requests(draw: st.DrawFn) -> JobRequest:
    timing = draw(st.sampled_from(["none", "delay", "run_at"]))
    return JobRequest(
        task=draw(st.text(min_size=1, max_size=20)),
        payload=draw(json_values),
        id=draw(ids),
        max_attempts=draw(st.none() | st.integers(1, 1000)),
        delay=draw(st.floats(0, codec.MAX_DELAY)) if timing == "delay" else None,
        run_at=draw(run_ats) if timing == "run_at" else None,
        priority=draw(st.integers(-1000, 1000)),
        timeout=draw(st.none() | st.floats(0.001, codec.MAX_TIMEOUT)),
    )


@settings(database=None)
@given(request=job_requests())
def test_job_request_round_trips_through_json(request: JobRequest) -> None:
    """JobRequest -> unstructure -> JSON bytes -> parse_json -> structure_request is the same request."""
    body = json.dumps(codec.converter.unstructure(request), allow_nan=False).encode()
    again = codec.structure_request(codec.parse_json(body))
    assert again == request
    assert codec.fingerprint(again) == codec.fingerprint(request)
