"""Jobs <-> database rows, shared by the SQL stores. Column order is ``COLUMNS``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from ..models import ErrorRecord, Job, JobState

__all__ = ["COLUMNS", "from_row", "to_row"]

COLUMNS = (
    "id",
    "seq",
    "task",
    "payload",
    "state",
    "priority",
    "attempts",
    "max_attempts",
    "rescues",
    "timeout",
    "run_at",
    "created_at",
    "updated_at",
    "finished_at",
    "result",
    "errors",
    "idempotency_key",
    "fingerprint",
    "lease_owner",
    "lease_token",
    "lease_expires_at",
    "cancel_requested",
)
#: Columns that a state change may write (everything but the identity and the submission).
MUTABLE = tuple(
    c for c in COLUMNS if c not in {"id", "seq", "task", "payload", "created_at", "idempotency_key", "fingerprint", "max_attempts", "priority", "timeout"}
)


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _errors_to_json(errors: Sequence[ErrorRecord]) -> str:
    return dumps([{"attempt": e.attempt, "at": e.at, "type": e.type, "message": e.message} for e in errors])


def to_row(job: Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "seq": job.seq,
        "task": job.task,
        "payload": dumps(job.payload),
        "state": job.state.value,
        "priority": job.priority,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "rescues": job.rescues,
        "timeout": job.timeout,
        "run_at": job.run_at,
        "created_at": job.created_at,
        "updated_at": job.updated_at,
        "finished_at": job.finished_at,
        "result": None if job.result is None else dumps(job.result),
        "errors": _errors_to_json(job.errors),
        "idempotency_key": job.idempotency_key,
        "fingerprint": job.fingerprint,
        "lease_owner": job.lease_owner,
        "lease_token": job.lease_token,
        "lease_expires_at": job.lease_expires_at,
        "cancel_requested": bool(job.cancel_requested),
    }


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str | bytes) else value


def from_row(row: Sequence[Any]) -> Job:
    r = dict(zip(COLUMNS, row, strict=True))
    return Job(
        id=r["id"],
        seq=r["seq"],
        task=r["task"],
        payload=_json(r["payload"]),
        state=JobState(r["state"]),
        priority=r["priority"],
        attempts=r["attempts"],
        max_attempts=r["max_attempts"],
        rescues=r["rescues"],
        timeout=r["timeout"],
        run_at=r["run_at"],
        created_at=r["created_at"],
        updated_at=r["updated_at"],
        finished_at=r["finished_at"],
        result=None if r["result"] is None else _json(r["result"]),
        errors=tuple(ErrorRecord(**e) for e in _json(r["errors"])),
        idempotency_key=r["idempotency_key"],
        fingerprint=r["fingerprint"],
        lease_owner=r["lease_owner"],
        lease_token=r["lease_token"],
        lease_expires_at=r["lease_expires_at"],
        cancel_requested=bool(r["cancel_requested"]),
    )
