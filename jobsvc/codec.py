"""Serialization, once: JSON bytes -> validated requests, jobs <-> store rows, jobs -> JSON.
Pure: no I/O, no trio.

One cattrs converter (``converter``, built by ``make_converter``), never cattrs' global one.
Primitives are structured strictly: ``"3"`` is not an int, ``true`` is not an int, ``1`` is
not a string. Validation errors become ``"<what> @ $.path"`` messages through
``cattrs.transform_error``.

The :class:`~jobsvc.models.Job` field list is written once, in ``models``: the SQL column
order (:data:`JOB_FIELDS`), the row functions (:func:`job_to_row`, :func:`job_from_row`)
and the public view (:func:`job_to_json`) are all generated from it by the converter.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import cattrs
import cattrs.v
from cattrs.gen import make_dict_unstructure_fn, override
from cattrs.strategies import configure_union_passthrough

from .errors import BadRequest, InvalidJob
from .models import ErrorRecord, Job, JobState

__all__ = [
    "JOB_FIELDS",
    "MAX_JSON_DEPTH",
    "PUBLIC_FIELDS",
    "JobRequest",
    "SeedRequest",
    "check_json_result",
    "converter",
    "dumps",
    "fingerprint",
    "is_job_id",
    "iso",
    "job_from_row",
    "job_to_json",
    "job_to_row",
    "make_converter",
    "parse_json",
    "structure",
    "structure_request",
]

#: Deepest nesting accepted in a request body (CPython's parser itself fails near 1,000).
MAX_JSON_DEPTH = 32
MAX_ID_LENGTH = 128
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@+=-]*")
MAX_DELAY = 366 * 86400.0
MAX_TIMEOUT = 86400.0
MAX_TIMESTAMP = 253402300799.0  # 9999-12-31T23:59:59Z


def _strict_str(value: Any, _t: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _strict_int(value: Any, _t: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {type(value).__name__}")
    return value


def _strict_float(value: Any, _t: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TypeError(f"expected a number, got {type(value).__name__}")
    return float(value)


def _strict_bool(value: Any, _t: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"expected true or false, got {type(value).__name__}")
    return value


def make_converter() -> cattrs.Converter:
    """The converter jobsvc uses at its boundary: extra keys are errors; primitives strict."""
    conv = cattrs.Converter(forbid_extra_keys=True)
    conv.register_structure_hook(str, _strict_str)
    conv.register_structure_hook(int, _strict_int)
    conv.register_structure_hook(float, _strict_float)
    conv.register_structure_hook(bool, _strict_bool)
    configure_union_passthrough(str | int | float | bool | None, conv)
    return conv


converter = make_converter()


def structure(value: Any, type_: Any, *, path: str = "$") -> Any:
    """Structure ``value`` as ``type_``; InvalidJob listing every problem with its path."""
    if attrs.has(type_) and not isinstance(value, dict):
        messages = [f"expected a JSON object, got {_json_type(value)} @ {path}"]
        raise InvalidJob("the submission is invalid: " + "; ".join(messages), errors=messages)
    try:
        return converter.structure(value, type_)
    except (cattrs.BaseValidationError, TypeError, ValueError, AttributeError) as exc:
        if isinstance(exc, cattrs.BaseValidationError):
            messages = [_field_path(m) for m in cattrs.transform_error(exc, path=path, format_exception=_format_exception)]
        else:
            messages = [f"{_format_exception(exc, type_)} @ {path}"]
        raise InvalidJob("the submission is invalid: " + "; ".join(messages), errors=messages) from None


_ATTRS_VALIDATOR = re.compile(r"^'(?P<field>\w+)' (?P<rest>must .*) @ (?P<path>\S+)$", re.DOTALL)


def _field_path(message: str) -> str:
    """attrs validators fail in the class's __init__, so cattrs reports the class's path;
    their messages name the field ("'seconds' must be >= 0: -1"): move it into the path."""
    match = _ATTRS_VALIDATOR.match(message)
    if match is None:
        return message
    return f"{match['field']} {match['rest']} @ {match['path']}.{match['field']}"


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


def _format_exception(exc: BaseException, type_: Any) -> str:
    if isinstance(exc, ValueError) and str(exc):
        return str(exc)  # our validators say what is wrong and name the field
    if isinstance(exc, AttributeError):
        return f"expected a JSON object for {getattr(type_, '__name__', type_)}"
    return cattrs.v.format_exception(exc, type_)


# -- JSON bodies ---------------------------------------------------------------------


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} is out of range")
    return value


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise ValueError(f"duplicate key {key!r}")
        obj[key] = value
    return obj


def _depth(value: Any) -> int:
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return deepest


def parse_json(body: bytes) -> Any:
    """Parse a request body; BadRequest (400) for anything that is not plain, sane JSON:
    invalid UTF-8 or syntax, NaN/Infinity, duplicate keys, nesting deeper than
    MAX_JSON_DEPTH, integers too long to convert."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("the request body is not valid UTF-8") from None
    if not text.strip():
        raise BadRequest("the request body is empty; send a JSON object")
    try:
        value = json.loads(text, parse_constant=_no_constants, parse_float=_finite_float, object_pairs_hook=_no_duplicates)
    except RecursionError:
        raise BadRequest(f"the JSON body is nested too deeply (the limit is {MAX_JSON_DEPTH} levels)") from None
    except json.JSONDecodeError as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except ValueError as exc:
        raise BadRequest(f"the request body is not acceptable JSON: {exc}") from None
    if _depth(value) > MAX_JSON_DEPTH:
        raise BadRequest(f"the JSON body is nested too deeply (the limit is {MAX_JSON_DEPTH} levels)")
    try:  # a lone surrogate escape parses but can never be stored or echoed as UTF-8
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest("the JSON body contains an unpaired surrogate escape (\\ud800 to \\udfff)") from None
    return value


# -- requests ------------------------------------------------------------------------


def _check_id(value: str | int | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "a job id is a string or a non-negative integer, not a boolean"
    if isinstance(value, int):
        if value < 0:
            return "a numeric job id must not be negative"
        return f"a job id has at most {MAX_ID_LENGTH} characters" if len(str(value)) > MAX_ID_LENGTH else None
    if len(value) > MAX_ID_LENGTH or not _ID_RE.fullmatch(value):
        return (
            f"a job id is 1 to {MAX_ID_LENGTH} characters: letters, digits and . _ : @ + = -, "
            "starting with a letter or digit"
        )
    return None


def is_job_id(text: str) -> bool:
    """Could ``text`` be a job id? (A client's id, a numeric id, or a generated UUID.)"""
    return len(text) <= MAX_ID_LENGTH and _ID_RE.fullmatch(text) is not None


def _between(name: str, value: float | None, low: float, high: float) -> str | None:
    if value is not None and not (low <= value <= high):
        return f"{name} must be between {low:g} and {high:g}, not {value!r}"
    return None


def parse_time(text: str) -> float:
    """ISO 8601 with a time zone -> epoch seconds."""
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"run_at must be an ISO 8601 time such as 2026-01-31T12:00:00Z, not {text!r}") from None
    if moment.tzinfo is None:
        raise ValueError("run_at must carry a time zone (for example a trailing Z for UTC)")
    timestamp = moment.timestamp()
    if not 0 <= timestamp <= MAX_TIMESTAMP:
        raise ValueError(f"run_at must be between 1970-01-01 and 9999-12-31 UTC, not {text!r}")
    return timestamp


@attrs.frozen(kw_only=True)
class JobRequest:
    """The body of ``POST /jobs`` (and each item of ``POST /jobs/batch``)."""

    task: str
    payload: Any = None
    id: str | int | None = None
    max_attempts: int | None = None
    delay: float | None = None
    run_at: str | None = None
    priority: int = 0
    timeout: float | None = None

    @property
    def job_id(self) -> str | None:
        return None if self.id is None else str(self.id)

    def problems(self, path: str = "$") -> list[str]:
        """What is wrong beyond types, as ``"<message> @ <path>"``."""
        found: list[tuple[str, str | None]] = [
            ("task", "task must not be empty" if not self.task else None),
            ("id", _check_id(self.id)),
            ("max_attempts", _between("max_attempts", self.max_attempts, 1, 1000)),
            ("delay", _between("delay", self.delay, 0, MAX_DELAY)),
            ("priority", _between("priority", self.priority, -1000, 1000)),
            ("timeout", _between("timeout", self.timeout, 0.001, MAX_TIMEOUT)),
        ]
        if self.run_at is not None:
            try:
                parse_time(self.run_at)
            except ValueError as exc:
                found.append(("run_at", str(exc)))
            if self.delay is not None:
                found.append(("run_at", "give either delay or run_at, not both"))
        return [f"{message} @ {path}.{field}" for field, message in found if message]


@attrs.frozen(kw_only=True)
class SeedRequest:
    """The seed service's ``POST /submit`` body: ``{"id": 1, "task_type": "email", "payload": "..."}``."""

    id: str | int | None = None
    task_type: str
    payload: Any = None

    def to_request(self) -> JobRequest:
        return JobRequest(task=self.task_type, payload=self.payload, id=self.id)


def structure_request(value: Any, *, path: str = "$", seed: bool = False) -> JobRequest:
    """A request body -> JobRequest, or InvalidJob naming every problem with its path."""
    request: JobRequest
    if seed:
        request = structure(value, SeedRequest, path=path).to_request()
        problems = [p.replace(f"{path}.task", f"{path}.task_type") for p in request.problems(path)]
    else:
        request = structure(value, JobRequest, path=path)
        problems = request.problems(path)
    if problems:
        raise InvalidJob("the submission is invalid: " + "; ".join(problems), errors=problems)
    return request


def fingerprint(request: JobRequest) -> str:
    """A stable hash of what was asked, to tell a replay (same body) from a conflict."""
    body = {
        "task": request.task,
        "payload": request.payload,
        "max_attempts": request.max_attempts,
        "delay": request.delay,
        "run_at": request.run_at,
        "priority": request.priority,
        "timeout": request.timeout,
    }
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


# -- jobs: store rows and the public view ------------------------------------------


def dumps(value: Any) -> str:
    """Compact JSON text, as the stores keep payloads, results and error histories."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC).isoformat().replace("+00:00", "Z")


#: Every Job field, in order: the column order of the SQL stores.
JOB_FIELDS: tuple[str, ...] = tuple(f.name for f in attrs.fields(Job))
#: Fields a client never sees: the lease (who runs it, its token and expiry), the
#: submission's fingerprint and the store's insertion counter.
_PRIVATE = ("fingerprint", "lease_owner", "lease_token", "lease_expires_at", "seq")
#: The fields of the public view, in order.
PUBLIC_FIELDS: tuple[str, ...] = tuple(name for name in JOB_FIELDS if name not in _PRIVATE)
_TIMES = ("run_at", "created_at", "updated_at", "finished_at")


_NULL = "null"
_NO_ERRORS = "[]"


def _load(text: Any) -> Any:
    if text == _NULL:
        return None
    return json.loads(text) if isinstance(text, str | bytes) else text


def _load_or_none(text: Any) -> Any:
    return None if text is None else _load(text)


def _dumps_or_none(value: Any) -> str | None:
    return None if value is None else dumps(value)


def _errors_from_text(text: Any) -> tuple[ErrorRecord, ...]:
    if text == _NO_ERRORS:
        return ()
    return tuple(ErrorRecord(**record) for record in _load(text))


def _errors_to_text(errors: tuple[ErrorRecord, ...]) -> str:
    if not errors:
        return _NO_ERRORS
    return dumps([attrs.asdict(record) for record in errors])


def _public_error(record: ErrorRecord) -> dict[str, Any]:
    return {"attempt": record.attempt, "at": iso(record.at), "type": record.type, "message": record.message}


def _state_value(state: JobState) -> str:
    return state.value


def _tenant_from_row(value: Any) -> str | None:
    return value or None


def _tenant_to_row(tenant: str | None) -> str:
    return tenant or ""


# -- store rows --------------------------------------------------------------------------
#
# A row holds the Job's fields in JOB_FIELDS order. Payload, result and error history are
# JSON text, the state its name, the cancel flag an integer on SQLite, no tenant the empty
# string (so that "no tenant" takes part in unique keys and counts as one value; SQL NULLs
# are all distinct); every other field is stored as it is. The row functions are generated from the Job's fields and this table
# (the way attrs and cattrs generate theirs), because they run twice per job on the hot
# path: a generated decoder takes 8 us where cattrs' per-field hooks took 24 us, and an
# encoder of the columns an update writes takes 1 us where cattrs' took 13 us.

#: column -> (from the row, to the row); columns not named are stored as they are.
_COLUMNS: dict[str, tuple[Callable[[Any], Any], Callable[[Any], Any]]] = {
    "state": (JobState, _state_value),
    "payload": (_load, dumps),
    "result": (_load_or_none, _dumps_or_none),
    "errors": (_errors_from_text, _errors_to_text),
    "cancel_requested": (bool, bool),
    "tenant": (_tenant_from_row, _tenant_to_row),
}


def _generate(name: str, source: str, namespace: dict[str, Any]) -> Callable[..., Any]:
    exec(compile(source, f"<jobsvc generated {name}>", "exec"), namespace)  # noqa: S102 - constant source
    function: Callable[..., Any] = namespace[name]
    return function


def _make_decoder() -> Callable[[Sequence[Any]], Job]:
    args = ", ".join(f"{n}=_from_{n}(r[{i}])" if n in _COLUMNS else f"{n}=r[{i}]" for i, n in enumerate(JOB_FIELDS))
    namespace: dict[str, Any] = {"Job": Job, **{f"_from_{n}": pair[0] for n, pair in _COLUMNS.items()}}
    return _generate("job_from_row", f"def job_from_row(r):\n    return Job({args})\n", namespace)


def row_encoder(columns: Sequence[str]) -> Callable[[Job], tuple[Any, ...]]:
    """A function Job -> the values of ``columns`` (JOB_FIELDS names), as a row holds them."""
    unknown = set(columns) - set(JOB_FIELDS)
    if unknown:
        raise ValueError(f"not Job fields: {sorted(unknown)}")
    items = "".join(f"_to_{c}(job.{c}), " if c in _COLUMNS else f"job.{c}, " for c in columns)
    namespace: dict[str, Any] = {f"_to_{n}": pair[1] for n, pair in _COLUMNS.items()}
    return _generate("encode", f"def encode(job):\n    return ({items})\n", namespace)


#: A row (a sequence of values in JOB_FIELDS order) -> Job.
job_from_row: Callable[[Sequence[Any]], Job] = _make_decoder()
_encode_row = row_encoder(JOB_FIELDS)


def job_to_row(job: Job) -> dict[str, Any]:
    """A Job -> ``{column: value}`` as the SQL stores write it (JSON as text)."""
    return dict(zip(JOB_FIELDS, _encode_row(job), strict=True))


# -- the public view ---------------------------------------------------------------------

_TO_JSON: dict[str, Any] = {name: override(omit=True) for name in _PRIVATE}
_TO_JSON.update({name: override(unstruct_hook=iso) for name in _TIMES})
_TO_JSON.update(
    state=override(unstruct_hook=_state_value),
    errors=override(unstruct_hook=lambda errors: [_public_error(e) for e in errors]),
)
job_to_json = make_dict_unstructure_fn(Job, converter, **_TO_JSON)
job_to_json.__doc__ = "The public view of a job: its fields but the private ones, times in ISO 8601."


def check_json_result(value: Any) -> Any:
    """A handler's return value must be JSON that the stores can write: TypeError or
    ValueError (UnicodeEncodeError for lone surrogates, NaN...) otherwise."""
    if value is None or value is True or value is False or type(value) is int:
        return value
    json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8")
    return value
