"""What the two SQL stores share: column lists derived from the Job fields, and row values."""

from __future__ import annotations

from typing import Any

from .. import models
from ..codec import JOB_FIELDS, row_encoder

__all__ = [
    "CLAIMABLE_STATES",
    "CLAIM_SET",
    "FINAL_STATES",
    "INSERTED",
    "WRITABLE",
    "in_level_order",
    "insert_values",
    "update_values",
    "writable_values",
]

#: Columns the store fills itself (``seq``) are not inserted.
INSERTED = tuple(c for c in JOB_FIELDS if c != "seq")
#: Columns no transition changes: identity, the submission (and its tenant), and the store's counter.
_FIXED = frozenset(
    {"id", "seq", "task", "payload", "priority", "max_attempts", "timeout", "created_at", "idempotency_key", "tenant", "fingerprint"}
)
#: Columns a fenced update writes.
WRITABLE = tuple(c for c in JOB_FIELDS if c not in _FIXED)
#: The states' names as the SQL stores write them, sorted (the partial indexes name them).
CLAIMABLE_STATES = tuple(sorted(s.value for s in models.CLAIMABLE))
FINAL_STATES = tuple(sorted(s.value for s in models.FINAL_STATES))
assert CLAIMABLE_STATES == ("pending", "retrying"), CLAIMABLE_STATES

#: The changes of :func:`jobsvc.models.claim` that need no parameter, as SQL (the claim's
#: one-statement form in both SQL stores; the store contract suite holds it to models.claim).
#: The stores add ``lease_owner``, ``lease_expires_at`` (now + lease) and ``updated_at``.
CLAIM_SET = "state = 'running', attempts = attempts + 1, lease_token = lease_token + 1"
_CLAIMED = {models.TRANSITIONS[(state, models.Event.CLAIM)].value for state in models.CLAIMABLE}
assert _CLAIMED == {"running"}, _CLAIMED


def in_level_order(job: models.Job) -> tuple[float, int]:
    """Claim order within one priority level (an UPDATE ... RETURNING gives no order)."""
    return job.run_at, job.seq


#: Job -> the values of INSERTED, in order.
insert_values = row_encoder(INSERTED)
#: Job -> the values of WRITABLE, in order.
writable_values = row_encoder(WRITABLE)


def update_values(new: models.Job, expected: models.Job) -> tuple[Any, ...]:
    """The SET values of ``new``, then the fence: ``expected``'s id, state, token, cancel flag."""
    return (*writable_values(new), expected.id, expected.state.value, expected.lease_token, expected.cancel_requested)
